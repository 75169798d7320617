"""Privacy metrics against naive computations (scipy cdist, per-record loops, Python sets) on small cases."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score

from data import from_matrix, load_dataset
from metrics import METRICS


@pytest.fixture(scope="module")
def data():
    """|train| == |holdout| so the members/non-members sets are the whole splits (no subsampling)."""
    return load_dataset("synthetic", n_patients=500, n_codes=24, seed=4, split=(0.4, 0.4, 0.2))


@pytest.fixture(scope="module")
def synth(data):
    """Half copies of training records, half fresh holdout-like records (from the test split), perturbed a bit."""
    rng = np.random.default_rng(0)
    S = np.r_[data.train[:100], data.test[:100]].copy()
    flip = rng.random(S.shape) < 0.02
    S[flip] = 1 - S[flip]
    return S


def ham(A, B):
    return cdist(A, B, metric="cityblock")  # = Hamming distance on 0/1 rows


def test_mia_auc_naive(data, synth):
    d = ham(np.r_[data.train, data.holdout], synth).min(1)
    y = np.r_[np.ones(len(data.train)), np.zeros(len(data.holdout))]
    auc = roc_auc_score(y, -d)
    out = METRICS["mia_auc"].fn(data, synth, seed=0, n=None)
    assert out["auc"] == pytest.approx(auc) and out["value"] == pytest.approx(2 * abs(auc - 0.5))


def test_mia_auc_l2_on_zscored_continuous_columns():
    rng = np.random.default_rng(1)
    X = np.c_[(rng.random((300, 5)) < 0.3), rng.normal(50, 10, (300, 2))].astype(np.float32)
    mixed = from_matrix(X, [f"c{j}" for j in range(7)], ["binary"] * 5 + ["continuous"] * 2, name="mixed",
                        split=(0.4, 0.4, 0.2))
    S = mixed.train[:60] + np.r_[np.zeros(5), rng.normal(0, 1, 2)].astype(np.float32)
    mu, sd = mixed.train[:, 5:].mean(0), mixed.train[:, 5:].std(0)
    z = lambda A: np.c_[A[:, :5], (A[:, 5:] - mu) / sd]  # noqa: E731
    d = cdist(z(np.r_[mixed.train, mixed.holdout]), z(S)).min(1)
    auc = roc_auc_score(np.r_[np.ones(len(mixed.train)), np.zeros(len(mixed.holdout))], -d)
    assert METRICS["mia_auc"].fn(mixed, S, seed=0, n=None)["auc"] == pytest.approx(auc, abs=1e-6)


def test_dcr_naive(data, synth):
    dtr, dho = ham(synth, data.train).min(1), ham(synth, data.holdout).min(1)
    out = METRICS["dcr"].fn(data, synth, seed=0, n=None)
    assert out["value"] == pytest.approx(np.mean((dtr < dho) + 0.5 * (dtr == dho)))
    assert (out["median_train"], out["median_holdout"]) == (np.median(dtr), np.median(dho))


def test_nnaa_naive(data):
    S = np.r_[data.train[:100], data.test[:100]]  # |S| == |train| == |holdout| == 200: no subsampling

    def aa(T):
        dts, dst = ham(T, S).min(1), ham(S, T).min(1)
        tt, ss = ham(T, T), ham(S, S)
        np.fill_diagonal(tt, np.inf)
        np.fill_diagonal(ss, np.inf)
        return 0.5 * (np.mean(dts > tt.min(1)) + np.mean(dst > ss.min(1)))

    out = METRICS["nnaa"].fn(data, S, seed=0, n=None)
    assert out["aa_train"] == pytest.approx(aa(data.train)) and out["aa_test"] == pytest.approx(aa(data.holdout))
    assert out["value"] == pytest.approx(aa(data.holdout) - aa(data.train))


@pytest.mark.parametrize("k", [1, 3])
def test_attribute_inference_naive_loop(data, synth, k):
    known = 6
    codes = [j for j, c in enumerate(data.columns) if c not in data.label_columns]
    order = np.argsort(-data.train[:, codes].mean(0), kind="stable")
    kn, unk = [codes[i] for i in order[:known]], [codes[i] for i in order[known:]]
    Sp = synth[np.random.default_rng(0).permutation(len(synth))]  # the metric's seeded tie-breaking order

    def f1(R):
        tp = fp = fn = 0
        for r in R:  # one record at a time
            d = np.abs(Sp[:, kn] - r[kn]).sum(1)
            nn = np.argsort(d, kind="stable")[:k]
            pred = Sp[nn][:, unk].sum(0) > k / 2
            true = r[unk] > 0.5
            tp += np.sum(pred & true)
            fp += np.sum(pred & ~true)
            fn += np.sum(~pred & true)
        return 2 * tp / (2 * tp + fp + fn)

    out = METRICS["attribute_inference_f1"].fn(data, synth, seed=0, known=known, k=k, n=None)
    assert out["f1_members"] == pytest.approx(f1(data.train)) and out["f1_nonmembers"] == pytest.approx(f1(data.holdout))
    assert out["value"] == pytest.approx(out["f1_members"] - out["f1_nonmembers"])


def test_exact_copy_rate_python_sets(data, synth):
    train = {tuple(r) for r in data.train}
    out = METRICS["exact_copy_rate"].fn(data, synth, seed=0)
    assert out["value"] == pytest.approx(np.mean([tuple(r) in train for r in synth]))
    assert out["holdout"] == pytest.approx(np.mean([tuple(r) in train for r in data.holdout]))


def test_exact_copy_rate_continuous_and_negative_zero():
    rng = np.random.default_rng(2)
    X = np.c_[(rng.random((100, 3)) < 0.5), rng.normal(size=(100, 2))].astype(np.float32)
    X[:10, 3] = 0.0
    mixed = from_matrix(X, list("abcde"), ["binary"] * 3 + ["continuous"] * 2, name="m", split=(0.5, 0.3, 0.2))
    S = mixed.train[:20].copy()
    S[:5, 3] = np.where(S[:5, 3] == 0, -0.0, S[:5, 3])  # -0.0 equals 0.0
    S[10:, 4] += 1e-3  # no longer copies
    assert METRICS["exact_copy_rate"].fn(mixed, S, seed=0)["value"] == pytest.approx(0.5)
