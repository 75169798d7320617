"""MST (models/mst.py): zCDP accounting, the budget split, the vectorised pair scores, the tree selection, fidelity
against epsilon, bad input. Skipped as a whole when the optional dp extra (mbi) is missing."""
import itertools
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from ehrbench.data import EHRData
from ehrbench.models import Trainer, build_synthesizer, check_synthesizer
from ehrbench.models import mst as M
from ehrbench.models.dp import DPConfig
from tests.conftest import TINY_PARAMS

M.missing_extra()  # configures JAX (float64) before mbi's first import, so the import below is quiet
mbi = pytest.importorskip("mbi", reason=M.EXTRA)

PARAMS = TINY_PARAMS["mst"]


def test_contract_with_iid_sampling():
    """check_synthesizer (the registry test runs the default "round" sampling; this one the "sample" path)."""
    report = check_synthesizer("mst", {**PARAMS, "sampling": "sample"})
    assert report["fresh_process"] and report["n_params"] > 0


# ---- zCDP accounting --------------------------------------------------------------------------------------------
# cdp_rho(eps, delta) of private-pgm's mechanisms/cdp2adp.py (run once on its own code, commit 4d2b3c5)
PRIVATE_PGM_RHO = {(0.1, 1e-5): 0.00043299372940180947, (1.0, 1e-5): 0.03055659519763956,
                   (1.0, 1e-9): 0.014973057673588523, (3.0, 1e-5): 0.2242491682463453,
                   (10.0, 1e-5): 1.7826956163289516, (10.0, 1e-6): 1.5392787638667285}


@pytest.mark.parametrize("eps, delta", sorted(PRIVATE_PGM_RHO))
def test_cdp_rho_matches_private_pgm_and_is_a_valid_conversion(eps, delta):
    from scipy.stats import norm

    rho = M.cdp_rho(eps, delta)
    assert rho == pytest.approx(PRIVATE_PGM_RHO[eps, delta], rel=1e-9)
    # the textbook conversion (Bun & Steinke 2016: eps = rho + 2 sqrt(rho log(1/delta))) allows less rho
    log_inv = math.log(1 / delta)
    assert (math.sqrt(log_inv + eps) - math.sqrt(log_inv)) ** 2 <= rho
    # the exact privacy profile of the Gaussian mechanism with that rho (sensitivity 1, sigma^2 = 1 / (2 rho);
    # Balle & Wang 2018, Theorem 8) stays below delta, and not far below (the bound is tight to a few x)
    s = math.sqrt(1 / (2 * rho))
    exact = norm.cdf(1 / (2 * s) - eps * s) - math.exp(eps) * norm.cdf(-1 / (2 * s) - eps * s)
    assert delta / 10 <= exact <= delta
    # the same bound, minimised over a plain grid of alpha instead of Brent's method
    alpha = np.linspace(1.01, (eps + 1) / (2 * rho) + 2, 400_001)
    grid = np.exp((alpha - 1) * (alpha * rho - eps) + (alpha - 1) * np.log1p(-1 / alpha) - np.log(alpha)).min()
    assert grid == pytest.approx(delta, rel=1e-3)
    assert M.cdp_eps(rho, delta) == pytest.approx(eps, rel=1e-9) and M.cdp_eps(rho, delta) <= eps


@pytest.mark.parametrize("d", [1, 2, 17, 1000])
@pytest.mark.parametrize("rho", [1e-3, 0.2, 5.0])
def test_the_budget_split_sums_to_rho(rho, d):
    std1, em, std2 = M.budget_split(rho, d)
    parts = M.zcdp_spent(std1, d, em, d - 1, std2, d - 1)
    if d == 1:  # no pair to select or measure: only the one-way third is spent
        assert parts == pytest.approx([rho / 3, 0, 0])
    else:
        assert parts == pytest.approx([rho / 3] * 3, rel=1e-12) and sum(parts) == pytest.approx(rho, rel=1e-12)


# ---- the vectorised parts --------------------------------------------------------------------------------------------
def test_pair_weights_equal_a_slow_per_pair_computation():
    rng = np.random.default_rng(0)
    sizes = np.array([2, 3, 2, 5, 1, 2])
    codes = np.stack([rng.integers(0, k, 300) for k in sizes], 1)
    codes[:, 2] = np.where(rng.random(300) < 0.1, 1 - (codes[:, 0] > 0), codes[:, 0] > 0)   # a correlated pair
    total = 310.0
    mu = np.zeros((len(sizes), sizes.max()))
    for j, k in enumerate(sizes):
        mu[j, :k] = rng.dirichlet(np.ones(k)) * total
    C = M.cooccurrence(codes, sizes)
    W = M.pair_weights(C, sizes, mu, total)
    off = M.offsets(sizes)
    for a, b in itertools.product(range(len(sizes)), repeat=2):
        table = np.zeros((sizes[a], sizes[b]))
        np.add.at(table, (codes[:, a], codes[:, b]), 1)
        assert np.array_equal(C[off[a]:off[a + 1], off[b]:off[b + 1]], table), (a, b)
        if a != b:
            slow = np.abs(table - np.outer(mu[a, :sizes[a]], mu[b, :sizes[b]]) / total).sum()
            assert W[a, b] == pytest.approx(slow, rel=1e-12), (a, b)


def test_binary_co_counts_are_x_transpose_x():
    rng = np.random.default_rng(1)
    X = (rng.random((500, 40)) < 0.2).astype(np.int32)
    C = M.cooccurrence(X, np.full(40, 2))
    assert np.array_equal(C[1::2, 1::2], X.T @ X) and np.array_equal(C[0::2, 0::2], (1 - X).T @ (1 - X))


def test_one_way_model_is_the_optimum_mbi_converges_to():
    """Columns: binary; four values with a negative noisy count; five values compressed to three (the last merges
    three rare values, measured as their sum / sqrt(3)): the closed form equals mbi's MirrorDescent on the same
    measurements."""
    w = np.ones((3, 4))
    w[2, 2] = 1 / math.sqrt(3)
    y = np.array([[702.3, 301.1, 0, 0], [498.0, 303.0, 212.5, -20.0], [400.0, 350.0, 250.0 / math.sqrt(3), 0]])
    sizes = np.array([2, 4, 3])
    names = ["a", "b", "c"]
    log = [mbi.LinearMeasurement(y[0, :2], ("a",), 5.0), mbi.LinearMeasurement(y[1], ("b",), 5.0),
           mbi.LinearMeasurement(y[2, :3], ("c",), 5.0, query=mbi.WeightedQuery(w[2, :3]))]
    total = mbi.estimation.minimum_variance_unbiased_total(log)
    ours = M.one_way_model(y, w, sizes, total)
    est = mbi.estimation.MirrorDescent().estimate(mbi.Domain(names, [2, 4, 3]), log, iters=5000)
    for j, name in enumerate(names):
        theirs = np.asarray(est.project((name,)).datavector())
        assert ours[j, :sizes[j]].sum() == pytest.approx(total)
        assert np.allclose(ours[j, :sizes[j]], theirs, atol=0.05 + 1e-4 * total), (name, ours[j], theirs)
    assert ours[1, 3] == 0.0  # the negative count is clipped at the boundary


def test_without_noise_the_tree_is_the_maximum_spanning_tree():
    from scipy.sparse.csgraph import minimum_spanning_tree

    rng = np.random.default_rng(2)
    W = rng.random((30, 30)) + 0.01
    W = W + W.T
    edges = M.select_tree(W, None, rng)
    assert len(edges) == 29 and len({frozenset(e) for e in edges}) == 29
    assert sum(W[a, b] for a, b in edges) == pytest.approx(-minimum_spanning_tree(-np.triu(W, 1)).sum())


def _tree_probabilities(W, eps):
    """Exact distribution of the selected tree: each round, exp(eps / 2 * W) over the pairs joining two components."""
    d = len(W)
    out = {}

    def walk(comp, chosen, p):
        if len(chosen) == d - 1:
            key = frozenset(chosen)
            out[key] = out.get(key, 0.0) + p
            return
        live = [(a, b) for a, b in itertools.combinations(range(d), 2) if comp[a] != comp[b]]
        z = sum(math.exp(eps / 2 * W[a, b]) for a, b in live)
        for a, b in live:
            new = [comp[a] if c == comp[b] else c for c in comp]
            walk(new, chosen + [(a, b)], p * math.exp(eps / 2 * W[a, b]) / z)

    walk(list(range(d)), [], 1.0)
    return out


def test_the_exponential_mechanism_draws_trees_with_the_right_probabilities():
    """d = 4 with one heavy pair inside each possible component, so that redraws of dead pairs happen: the empirical
    frequency of every spanning tree matches the exact sequential exponential mechanism."""
    W = np.array([[0, 9, 8, 1], [9, 0, 7, 2], [8, 7, 0, 3], [1, 2, 3, 0]], dtype=float)
    exact = _tree_probabilities(W, 0.8)
    rng = np.random.default_rng(3)
    n = 6000
    counts: dict = {}
    for _ in range(n):
        key = frozenset(M.select_tree(W, 0.8, rng))
        counts[key] = counts.get(key, 0) + 1
    for key, p in exact.items():
        assert abs(counts.get(key, 0) / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (sorted(key), p)


# ---- fitting: one strongly correlated pair -----------------------------------------------------------------------
def correlated_data(n=3000, d=10, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.random((n, d)) < rng.uniform(0.15, 0.4, d)).astype(np.float32)
    X[:, 7] = np.where(rng.random(n) < 0.03, 1 - X[:, 2], X[:, 2])       # columns 2 and 7: correlation ~0.93
    lab = np.clip(0.25 + 0.5 * X[:, 4] + 0.1 * rng.standard_normal(n), 0, 1).astype(np.float32)
    X = np.c_[X, lab]
    cols = tuple(f"x{j}" for j in range(d)) + ("lab",)
    return EHRData(X, X[:10], X[:10], cols, ("binary",) * d + ("continuous",), name="corr")


@pytest.fixture(scope="module")
def corr_fits():
    data = correlated_data()
    fits = {}
    for eps in (None, 0.05, 50.0):
        t = Trainer(device="cpu", seed=0, dp=None if eps is None else {"epsilon": eps, "delta": 1e-6})
        fits[eps] = (build_synthesizer("mst", **PARAMS).fit(data, t), t)
    return data, fits


@pytest.mark.parametrize("eps", [None, 50.0])
def test_the_tree_holds_the_correlated_pair_and_samples_reproduce_it(corr_fits, eps):
    data, fits = corr_fits
    m, _ = fits[eps]
    assert {2, 7} in [set(e) for e in m.edges]
    S = m.sample(20000, seed=0)
    X = data.train
    assert np.corrcoef(S[:, 2], S[:, 7])[0, 1] == pytest.approx(np.corrcoef(X[:, 2], X[:, 7])[0, 1], abs=0.03)
    assert np.abs(S[:, :10].mean(0) - X[:, :10].mean(0)).max() < 0.02
    assert S[:, 10].min() >= 0 and S[:, 10].max() <= 1 and abs(S[:, 10].mean() - X[:, 10].mean()) < 0.02


def test_fidelity_gets_worse_as_epsilon_shrinks_and_epsilon_is_recorded(corr_fits):
    data, fits = corr_fits
    X = data.train[:, :10]
    err = {}
    for eps, (m, t) in fits.items():
        S = m.sample(len(X), seed=0)[:, :10]
        err[eps] = (np.abs(S.mean(0) - X.mean(0)).mean(), np.abs(S.T @ S - X.T @ X).mean() / len(X))
        report = t.dp_report()
        if eps is None:
            assert report["epsilon"] is None and m.epsilon_ == math.inf and m.rho_spent_.size == 0
        else:
            assert 0.999 * eps <= report["epsilon"] <= eps and report["dp"]["accountant"] == "zcdp"
            assert m.rho_ == pytest.approx(M.cdp_rho(eps, 1e-6)) and report["dp"]["rho"] == m.rho_
            assert m.rho_spent_.sum() == pytest.approx(m.rho_, rel=1e-12)   # the three parts spend exactly rho
            assert report["dp"]["rho_parts"] == pytest.approx([m.rho_ / 3] * 3, rel=1e-12)
    assert err[0.05][0] > 3 * err[50.0][0] and err[0.05][1] > 3 * err[50.0][1], err   # one-way and co-occurrence
    assert err[50.0][0] < 0.01 and err[None][0] < 0.01


def test_private_fits_are_seeded_and_noise_depends_on_the_seed():
    data = correlated_data(n=800, d=8, seed=1)

    def fit(seed):
        t = Trainer(device="cpu", seed=seed, dp={"epsilon": 1.0, "delta": 1e-5})
        return build_synthesizer("mst", **PARAMS).fit(data, t)

    a, b, c = fit(0), fit(0), fit(1)
    assert np.array_equal(a.cond_, b.cond_) and np.array_equal(a.sample(50, 3), b.sample(50, 3))
    assert not np.array_equal(a.cond_, c.cond_)


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_a_missing_extra_is_one_sentence_naming_the_install_command(monkeypatch, tiny_data):
    from ehrbench.models import pipeline
    from tests.conftest import compose

    monkeypatch.setitem(sys.modules, "mbi", None)  # `import mbi` now fails as if it were not installed
    assert M.MST.unavailable() == M.EXTRA and 'pip install -e ".[dp]"' in M.EXTRA
    with pytest.raises(ImportError, match=r'^mst needs the optional package mbi .*pip install -e "\.\[dp\]"$'):
        build_synthesizer("mst").fit(tiny_data)
    with pytest.raises(ValueError, match=r'pip install -e "\.\[dp\]"'):
        pipeline.validate(compose(["model=mst", "trainer=dp"]))


def test_epsilon_must_be_positive_and_delta_below_one_over_n(tiny_data):
    with pytest.raises(ValueError, match="trainer.dp.epsilon must be a number > 0"):
        Trainer(device="cpu", dp={"epsilon": 0, "delta": 1e-5})
    for eps in (0.0, -1.0):  # a trainer-like object that skipped dp_config's check
        fake = SimpleNamespace(dp=DPConfig(epsilon=eps, delta=1e-5), seed=0, record_privacy=None)
        with pytest.raises(ValueError, match="trainer.dp.epsilon must be a number > 0"):
            build_synthesizer("mst").fit(tiny_data, fake)
    with pytest.raises(ValueError, match=r"mst: trainer.dp.delta 0.01 is not below 1/N"):
        build_synthesizer("mst").fit(tiny_data, Trainer(device="cpu", dp={"epsilon": 1, "delta": 0.01}))


@pytest.mark.parametrize("params, match", [({"bins": 1}, "bins must be an integer in"),
                                           ({"iters": 0}, "mst.iters must be >= 1, got 0"),
                                           ({"sampling": "mode"}, "unknown sampling 'mode'; valid choices: round")])
def test_bad_hyperparameters_are_one_sentence(params, match, tiny_data):
    with pytest.raises(ValueError, match=match):
        build_synthesizer("mst", **params).fit(tiny_data)


def test_continuous_columns_outside_the_unit_interval_are_refused():
    X = np.c_[np.zeros((20, 1)), np.linspace(0, 2, 20)].astype(np.float32)
    data = EHRData(X, X, X, ("a", "v"), ("binary", "continuous"), name="t")
    with pytest.raises(ValueError, match="is outside \\[0, 1\\]"):
        build_synthesizer("mst").fit(data)
