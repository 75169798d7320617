"""Each fidelity metric against an independent computation (scipy/sklearn or a naive loop) on a small case."""
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from ehrbench.data import from_matrix, load_dataset
from ehrbench.metrics import METRICS
from ehrbench.metrics.fidelity import wasserstein_columns


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_patients=500, n_codes=20, seed=1, split=(0.6, 0.2, 0.2))


@pytest.fixture(scope="module")
def synth(data):
    rng = np.random.default_rng(0)
    S = data.train[rng.integers(0, len(data.train), 250)].copy()
    flip = rng.random(S.shape) < 0.05
    S[flip] = 1 - S[flip]
    return S


@pytest.fixture(scope="module")
def mixed():
    """Binary codes, a binary label and two continuous columns in different units."""
    rng = np.random.default_rng(7)
    codes = (rng.random((400, 6)) < 0.3).astype(np.float32)
    lab = np.c_[rng.normal(100, 15, 400), rng.lognormal(1, 0.5, 400)].astype(np.float32)
    y = (codes[:, 0] + (lab[:, 0] > 110) + rng.random(400) > 1.2).astype(np.float32)
    cols = [f"D_{j}" for j in range(6)] + ["HR", "LACTATE", "DIED"]
    return from_matrix(np.c_[codes, lab, y], cols, ["binary"] * 6 + ["continuous"] * 2 + ["binary"], name="mixed",
                       label_columns=["DIED"], split=(0.6, 0.2, 0.2))


def m(name, data, S, **kw):
    out = METRICS[name].fn(data, S, seed=0, **kw)
    return out if isinstance(out, dict) else {"value": out}


def _corr_rule(X):
    """np.corrcoef with the documented rule: constant columns correlate 0 with others and 1 with themselves."""
    X = X.astype(np.float64)
    const = X.std(0) == 0
    R = np.zeros((X.shape[1],) * 2)
    live = np.flatnonzero(~const)
    R[np.ix_(live, live)] = np.corrcoef(X[:, live], rowvar=False)
    np.fill_diagonal(R, 1.0)
    return R


def test_prevalence_metrics(data, synth):
    p, q = data.train.mean(0), synth.mean(0)
    assert m("prevalence_pearson", data, synth)["value"] == pytest.approx(stats.pearsonr(p, q)[0])
    assert m("prevalence_spearman", data, synth)["value"] == pytest.approx(stats.spearmanr(p, q)[0])
    assert m("prevalence_mae", data, synth)["value"] == pytest.approx(np.abs(p - q).mean(), abs=1e-7)
    real, syn = p > 0, q > 0
    expected = sum(1 - (1 - pj) ** len(synth) for pj in p[data.binary_mask])  # E[codes seen in n records]
    assert m("nzc", data, synth) == {"value": float(syn.sum()), "real": pytest.approx(expected),
                                     "real_all": float(real.sum()), "coverage": float((syn & real).sum() / real.sum()),
                                     "invented": float((syn & ~real).sum())}


def test_nzc_ideal_is_the_count_expected_at_the_same_size():
    """Version 2 took the whole train split as the ideal: a real sample smaller than train emits fewer codes, so
    a generator inventing codes came nearer the ideal than real data; a resample of train as large as train
    misses the codes seen once (37 % of them) and fell short too. Version 3 expects sum_j 1 - (1 - p_j)^n."""
    d = load_dataset("synthetic", n_patients=20000, n_codes=1000, seed=0)
    rng = np.random.default_rng(0)
    noise = (rng.random(d.test.shape) < 0.5).astype(np.float32)
    for S in (d.test, d.train[rng.integers(0, len(d.train), len(d.train))]):  # new patients; a resample of train
        real = m("nzc", d, S)
        # within 6 %: new patients also show codes train never had (counted against a generator as invented)
        assert real["real"] < real["real_all"] and abs(real["value"] - real["real"]) < 0.06 * real["real"], real
        assert abs(real["value"] - real["real"]) < abs(m("nzc", d, noise)["value"] - m("nzc", d, noise)["real"])


def test_nzc_counts_invented_and_lost_codes_by_hand():
    """Real train emits codes a, b, c (d never); the synthetic data drops c and invents d: count 3 = real 3,
    but coverage 2/3 and one invented code; the registered ideal is the real count (goal target)."""
    X = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]] * 5, np.float32)
    d = from_matrix(X, list("abcd"), ["binary"] * 4, name="t", split=(1.0, 0.0, 0.0))
    S = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32)
    assert m("nzc", d, S)["value"] == 3.0 and m("nzc", d, S)["real_all"] == 3.0
    assert (m("nzc", d, S)["coverage"], m("nzc", d, S)["invented"]) == (2 / 3, 1.0)
    assert (METRICS["nzc"].goal, METRICS["nzc"].ideal) == ("target", "real")


def test_cooccurrence_pearson_double_loop(data, synth):
    d = data.n_features
    pairs = [(a, b) for a in range(d) for b in range(a + 1, d)]
    X, S = data.train.astype(np.float64), synth.astype(np.float64)
    p = [np.mean(X[:, a] * X[:, b]) for a, b in pairs]
    q = [np.mean(S[:, a] * S[:, b]) for a, b in pairs]
    assert m("cooccurrence_pearson", data, synth)["value"] == pytest.approx(stats.pearsonr(p, q)[0], abs=1e-9)


def test_cmd_and_correlation_mae_with_a_constant_column(data, synth):
    S = synth.copy()
    S[:, 3] = 0  # mode collapse: a code never generated
    Rr, Rs = _corr_rule(data.train), _corr_rule(S)
    cmd = 1 - np.trace(Rr @ Rs) / (np.linalg.norm(Rr, "fro") * np.linalg.norm(Rs, "fro"))
    assert m("cmd", data, S)["value"] == pytest.approx(cmd, abs=1e-9)
    iu = np.triu_indices(data.n_features, 1)
    assert m("correlation_mae", data, S)["value"] == pytest.approx(np.abs(Rr - Rs)[iu].mean(), abs=1e-9)
    assert m("cmd", data, data.train)["value"] == pytest.approx(0, abs=1e-12)


def test_wasserstein_columns_matches_scipy():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(37, 4)), rng.exponential(size=(23, 4))
    B[:5] = A[:5]  # shared values
    expect = [stats.wasserstein_distance(A[:, j], B[:, j]) for j in range(4)]
    assert np.allclose(wasserstein_columns(A, B), expect)


def test_codes_per_record_wd(data, synth):
    codes = [j for j, c in enumerate(data.columns) if c not in data.label_columns]
    expect = stats.wasserstein_distance(data.train[:, codes].sum(1), synth[:, codes].sum(1))
    assert m("codes_per_record_wd", data, synth)["value"] == pytest.approx(expect)


def test_continuous_metrics_per_column_scipy(mixed):
    rng = np.random.default_rng(1)
    S = mixed.train[rng.integers(0, len(mixed.train), 200)].copy()
    S[:, 6] = S[:, 6] * 1.3 + 4
    R, Sc, sd = mixed.train[:, 6:8].astype(np.float64), S[:, 6:8].astype(np.float64), mixed.train[:, 6:8].std(0)
    assert m("continuous_mean_error", mixed, S)["value"] == pytest.approx(np.mean(np.abs(Sc.mean(0) - R.mean(0)) / sd), rel=1e-5)
    assert m("continuous_std_error", mixed, S)["value"] == pytest.approx(np.mean(np.abs(Sc.std(0) - R.std(0)) / sd), rel=1e-5)
    wd = [stats.wasserstein_distance(R[:, j], Sc[:, j]) / sd[j] for j in range(2)]
    assert m("continuous_wd", mixed, S)["value"] == pytest.approx(np.mean(wd), rel=1e-5)


def test_continuous_metrics_error_without_continuous_columns(data, synth):
    for name in ("continuous_mean_error", "continuous_std_error", "continuous_wd"):
        with pytest.raises(ValueError, match="no continuous columns"):
            METRICS[name].fn(data, synth, seed=0)


def test_mmd_naive(data, synth):
    out = m("mmd", data, synth, n=10_000)  # no subsampling: all rows on both sides
    X, Y, g = data.train.astype(np.float64), synth.astype(np.float64), out["bandwidth"]
    P = X[:1000]
    dp = ((P[:, None] - P[None]) ** 2).sum(-1)[np.triu_indices(len(P), 1)]
    assert g == pytest.approx(np.median(dp))
    k = lambda A, B: np.exp(-((A[:, None] - B[None]) ** 2).sum(-1) / g)  # noqa: E731
    kxx, kyy = k(X, X), k(Y, Y)
    mx, my = len(X), len(Y)
    expect = ((kxx.sum() - mx) / (mx * (mx - 1)) + (kyy.sum() - my) / (my * (my - 1)) - 2 * k(X, Y).mean())
    assert out["value"] == pytest.approx(expect, rel=1e-4, abs=1e-7)


def test_detection_auc_matches_sklearn_folds(data, synth):
    import lightgbm

    out = m("detection_auc", data, synth, n=10_000, folds=3, n_estimators=20)
    n = len(synth)
    rng = np.random.default_rng(0)
    real = data.train[np.sort(rng.choice(len(data.train), n, replace=False))]
    X, y = np.r_[real, synth], np.r_[np.zeros(n), np.ones(n)]
    aucs = []
    for tr, te in StratifiedKFold(3, shuffle=True, random_state=0).split(X, y):
        clf = lightgbm.LGBMClassifier(n_estimators=20, random_state=0, deterministic=True, force_row_wise=True,
                                      verbose=-1, n_jobs=1).fit(X[tr], y[tr])
        aucs.append(roc_auc_score(y[te], clf.predict_proba(X[te])[:, 1]))
    assert out["auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert out["value"] == pytest.approx(2 * abs(np.mean(aucs) - 0.5), abs=1e-9)
    ones = np.ones_like(synth)  # trivially separable
    assert m("detection_auc", data, ones, n_estimators=20)["value"] > 0.9
    # detection: 1 - (sklearn's out-of-fold log-loss) / ln 2 on the same folds
    P = np.zeros(len(y))
    for tr, te in StratifiedKFold(3, shuffle=True, random_state=0).split(X, y):
        P[te] = lightgbm.LGBMClassifier(n_estimators=20, random_state=0, deterministic=True, force_row_wise=True,
                                        verbose=-1, n_jobs=1).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
    det = m("detection", data, synth, n=10_000, folds=3, n_estimators=20)
    assert det["value"] == pytest.approx(1 - log_loss(y, np.clip(P, 1e-6, 1 - 1e-6)) / np.log(2), abs=1e-9)
    assert det["auc"] == pytest.approx(np.mean(aucs), abs=1e-9) and 0 < det["se"] < 0.05


def test_detection_keeps_separating_where_the_auc_saturates():
    """Two outputs every classifier detects (AUC 1): one record repeated and independent marginals with every
    code doubled in prevalence. detection_auc ties them at 1; detection ranks the repeated record as worse."""
    data = load_dataset("synthetic", n_patients=1500, n_codes=20, seed=1)
    rng = np.random.default_rng(0)
    T = data.train
    one = np.tile(T[T.sum(1).argmax()], (len(T), 1))  # a record no other patient has
    far = (rng.random(T.shape) < np.clip(2 * T.mean(0) + 0.2, 0, 1)).astype(np.float32)
    auc = [m("detection_auc", data, S, n_estimators=50)["value"] for S in (one, far)]
    det = [m("detection", data, S, n_estimators=50) for S in (one, far)]
    assert min(auc) > 0.99 and abs(auc[0] - auc[1]) < 0.01
    assert det[0]["value"] - det[1]["value"] > 2 * np.hypot(det[0]["se"], det[1]["se"])


def _naive_prdc(X, Y, k):
    """Kynkaanniemi et al. 2019 precision/recall and Naeem et al. 2020 density/coverage by full distance matrices.

    Boundary rules of the reference implementations: kynkaat/improved-precision-and-recall-metric counts a point
    at exactly the k-NN radius as inside (`<=`); clovaai/generative-evaluation-prdc (density, coverage) uses a
    strict `<`. With Hamming distances ties are common, so the two rules give different numbers here."""
    d = lambda A, B: ((A[:, None].astype(np.float64) - B[None]) ** 2).sum(-1)  # noqa: E731
    dxx, dyy, dyx = d(X, X), d(Y, Y), d(Y, X)
    np.fill_diagonal(dxx, np.inf)
    np.fill_diagonal(dyy, np.inf)
    rx, ry = np.sort(dxx, 1)[:, k - 1], np.sort(dyy, 1)[:, k - 1]
    inside = dyx <= rx[None, :]  # synthetic j inside real ball i
    precision = inside.any(1).mean()
    recall = (dyx.T <= ry[None, :]).any(1).mean()
    density = (dyx < rx[None, :]).sum() / (k * len(Y))
    coverage = (dyx.min(0) < rx).mean()
    return precision, recall, density, coverage


def test_precision_recall_density_coverage_naive(data, synth):
    p, r, dens, cov = _naive_prdc(data.train, synth, 3)
    out = m("precision", data, synth, n=10_000, k=3)
    assert (out["value"], out["density"], out["coverage"]) == pytest.approx((p, dens, cov))
    d = lambda A, B: ((A[:, None].astype(np.float64) - B[None]) ** 2).sum(-1)  # noqa: E731
    dxx = d(data.train, data.train)
    np.fill_diagonal(dxx, np.inf)
    rx = np.sort(dxx, 1)[:, 2]
    assert (d(synth, data.train) == rx[None, :]).any(), "the case must contain points exactly at a radius"
    assert m("recall", data, synth, n=10_000, k=3)["value"] == pytest.approx(r)
    assert m("coverage", data, synth, n=10_000, k=5)["value"] == pytest.approx(_naive_prdc(data.train, synth, 5)[3])


def test_coverage_is_not_won_by_empty_or_repeated_output(data):
    """precision scores records piled onto dense real records as inside the real manifold; coverage does not."""
    rep = np.repeat(data.train[:1], len(data.test), 0)
    for S in (np.zeros_like(data.test), rep):
        assert m("coverage", data, S)["value"] < 0.5 * m("coverage", data, data.test)["value"]
    collapsed = np.repeat(data.train[:1], 200, axis=0)  # mode collapse: one record repeated
    assert m("recall", data, collapsed, k=3)["value"] < 0.2


def test_constant_continuous_column_has_zero_correlations(mixed):
    """A constant continuous column (HR fixed at 80, away from the real mean) correlates 0 with every other
    column, as documented; version 1's float32 Gram gave it a variance of 5.5e-9 and correlations of ~0.009."""
    from ehrbench.metrics.fidelity import correlation_matrix
    from ehrbench.metrics.neighbors import encode

    rng = np.random.default_rng(3)
    S = mixed.train[rng.integers(0, len(mixed.train), 5000)].copy()
    S[:, mixed.index("HR")] = 80.0
    R = correlation_matrix(encode(mixed, S)[0], binary=mixed.binary_mask)
    h = mixed.index("HR")
    assert np.all(R[h, np.arange(len(R)) != h] == 0.0) and R[h, h] == 1.0
    Rr, Rs = _corr_rule(mixed.train), _corr_rule(S)
    cmd = 1 - (Rr * Rs).sum() / (np.linalg.norm(Rr) * np.linalg.norm(Rs))
    assert m("cmd", mixed, S)["value"] == pytest.approx(cmd, abs=1e-12)
    iu = np.triu_indices(len(Rr), 1)
    assert m("correlation_mae", mixed, S)["value"] == pytest.approx(np.abs(Rr[iu] - Rs[iu]).mean(), abs=1e-12)


def test_near_copies_of_continuous_records_keep_their_distance():
    """True squared distance 1e-4 between z-scaled continuous records must not round to 0 (it did in 53 % of
    cases with float32 |a|^2 - 2ab + |b|^2); the distance engine computes such data in float64."""
    from ehrbench.metrics.neighbors import encode, knn

    rng = np.random.default_rng(0)
    X = rng.normal(120, 30, (400, 3))
    data = from_matrix(X.astype(np.float32), ["a", "b", "c"], ["continuous"] * 3, name="c", split=(0.5, 0.25, 0.25))
    T = encode(data, data.train)[0]
    Q = T + 1e-2 / np.sqrt(3)  # each query at squared distance exactly 1e-4 from its source row (in z units)
    d = knn(Q, T, 1)[0][:, 0]
    assert np.allclose(d, 1e-4, rtol=1e-6), (d.min(), d.max())
