"""mst: MST (McKenna, Miklau & Sheldon 2021), noisy one- and two-way marginals on a private maximum spanning tree,
estimated as a graphical model with mbi (private-pgm). An optional extra: pip install -e ".[dp]"."""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .base import Synthesizer, register_synthesizer
from .dp import check_dp_data
from .mst_select import cooccurrence, offsets, one_way_model, pair_weights, select_tree  # noqa: F401
from .outputs import check_unit_interval
from .zcdp import budget_split, cdp_delta, cdp_eps, cdp_rho, zcdp_spent  # noqa: F401

EXTRA = 'mst needs the optional package mbi (private-pgm, with jax); install it with pip install -e ".[dp]"'
SAMPLING = ("round", "sample")


def load_mbi():
    """Import mbi (the dp extra). JAX is switched to float64 first, as mbi asks for (in float32 its estimation can stall
    on large counts), and its persistent compilation cache off (mbi's advice: many small programs). Both are settings
    of this process's JAX, which nothing else in ehrbench uses."""
    import logging

    import jax

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # not the INFO lines about absent TPU backends
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_enable_compilation_cache", False)
    import mbi

    return mbi


def missing_extra() -> str | None:
    """One sentence naming the install command when mbi cannot be imported; None when it can."""
    try:
        load_mbi()
    except ImportError:
        return EXTRA
    return None


@register_synthesizer("mst")
class MST(Synthesizer):
    """Noisy one-way marginals, a private maximum spanning tree of two-way marginals, a graphical model fitted by mbi.

    Following mechanisms/mst.py: rho = cdp_rho(epsilon, delta) (zCDP), split in thirds (budget_split): (1) every
    column's one-way marginal is measured with Gaussian noise; values whose noisy count is below 3 std are merged into
    one "other" value (compress_domain; for a binary column this changes nothing unless both counts are that small);
    (2) a one-way model is fitted to those measurements and every pair (a, b) scored by the L1 distance between its
    true two-way table and the model's prediction; d - 1 exponential-mechanism rounds pick a spanning tree;
    (3) the tree's two-way marginals are measured with Gaussian noise; mbi's MirrorDescent fits a graphical model to
    all measurements (iters steps, the official 10,000) and records are drawn from it.

    Continuous columns ([0, 1]) become `bins` equal-width bins on [0, 1] (the last bin closed). The edges are fixed,
    never read from the data, so they cost no privacy budget. A sampled bin is mapped back to a value drawn uniformly
    within the bin (as dp_independent does). Binary columns are sampled as 0/1 exactly.

    Deviations from the official code, each for wide data and each giving the same result: the one-way model of the
    selection step is solved in closed form (one_way_model) instead of by mbi (2,500 iterations; one compiled program
    per column); all pair scores come from one matrix product (cooccurrence, pair_weights) instead of a loop over
    pairs; records are drawn from the fitted tree in numpy with a seeded generator (`sampling`: "round" is mbi's
    synthetic_data default, randomised rounding of the counts within each parent value; "sample" draws i.i.d.), so
    that sample(n, seed) depends on the seed only and a saved model samples without mbi installed.

    Privacy: with trainer.dp (epsilon, delta) the run is (epsilon, delta)-DP under add/remove of one record, the
    relation of DP-SGD's accountant, accounted in zCDP as the official code does (trainer.dp.accountant does not apply).
    The spent epsilon (cdp_eps of the rho spent) is recorded through trainer.record_privacy. Without trainer.dp
    (or with epsilon = inf) nothing is noised: the exact marginals, no compression, the maximum spanning tree
    (as dp_independent, which then samples the exact marginals).
    """

    supports_dp = True  # private under trainer.dp without the Trainer's DP-SGD

    def __init__(self, bins: int = 20, iters: int = 10000, sampling: str = "round") -> None:
        self.bins = bins
        self.iters = iters
        self.sampling = sampling

    @classmethod
    def unavailable(cls) -> str | None:
        """One sentence when the optional dependency is missing (run_benchmark's validation and the tests ask)."""
        return missing_extra()

    def _check_params(self) -> None:
        if type(self.bins) is not int or not 2 <= self.bins <= 1000:
            raise ValueError(f"mst: bins must be an integer in [2, 1000], got {self.bins!r}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"mst: unknown sampling {self.sampling!r}; valid choices: {', '.join(SAMPLING)}")

    # ---- fit ------------------------------------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "MST":
        X = self._prepare_fit(data)
        self._check_params()
        check_unit_interval(X, self.kinds_, self.columns_, f"{self.name}.fit")
        try:
            mbi = load_mbi()
        except ImportError:
            raise ImportError(EXTRA) from None
        from mbi import LinearMeasurement, WeightedQuery

        cfg = getattr(trainer, "dp", None)
        rng = np.random.default_rng(getattr(trainer, "seed", 0))
        started = time.perf_counter()
        n, d = X.shape
        b = self.binary_mask
        sizes0 = np.where(b, 2, self.bins).astype(np.int64)
        codes0 = np.where(b, X, np.minimum(X * self.bins, self.bins - 1)).astype(np.int16)   # fixed bins: no budget
        if cfg is not None:
            if not (isinstance(cfg.epsilon, (int, float)) and cfg.epsilon > 0):
                raise ValueError(f"trainer.dp.epsilon must be a number > 0 (inf or trainer.dp=null: not private), "
                                 f"got {cfg.epsilon!r}")
            check_dp_data(cfg, n, n, self.name)
            rho = cdp_rho(cfg.epsilon, cfg.delta)
            std1, em_epsilon, std2 = budget_split(rho, d)
        else:
            rho, std1, em_epsilon, std2 = math.inf, 1.0, None, 1.0   # not private: exact measurements, equal weights

        # (1) one-way marginals, noised, then compressed (values below 3 std merged)
        K0 = int(sizes0.max())
        counts = np.zeros((d, K0))
        counts[b, 0], counts[b, 1] = n - X[:, b].sum(0, dtype=np.float64), X[:, b].sum(0, dtype=np.float64)
        for j in np.flatnonzero(~b):
            counts[j, : self.bins] = np.bincount(codes0[:, j], minlength=self.bins)
        valid0 = np.arange(K0)[None, :] < sizes0[:, None]
        y = counts + (rng.normal(0.0, std1, counts.shape) if cfg is not None else 0.0)
        y = np.where(valid0, y, 0.0)
        support = valid0 & (y >= 3 * std1) if cfg is not None else valid0
        n_sup, other = support.sum(1), (valid0 & ~support).any(1)
        mapping = np.where(support, np.cumsum(support, 1) - 1, n_sup[:, None])
        mapping = np.where(valid0, mapping, -1)
        sizes = (n_sup + other).astype(np.int64)
        K = int(sizes.max())
        merged = np.zeros((d, K))
        y1 = np.zeros((d, K))
        for v in range(K0):   # a loop over values, not columns
            ok = mapping[:, v] >= 0
            np.add.at(merged, (np.flatnonzero(ok), mapping[ok, v]), 1.0)
            np.add.at(y1, (np.flatnonzero(ok), mapping[ok, v]), y[ok, v])
        weight = np.where(merged > 0, 1.0 / np.sqrt(np.maximum(merged, 1.0)), 1.0)
        y1 = y1 * weight                                   # a merged cell: the sum of m noisy cells / sqrt(m), std std1
        names = [f"c{j}" for j in range(d)]
        log1 = []
        for j in range(d):
            k = int(sizes[j])
            if (merged[j, :k] == 1).all():
                log1.append(LinearMeasurement(y1[j, :k], (names[j],), std1))
            else:
                log1.append(LinearMeasurement(y1[j, :k], (names[j],), std1, query=WeightedQuery(weight[j, :k])))
        codes = mapping.astype(np.int32)[np.arange(d)[None, :], codes0]     # the compressed data, N x d
        del codes0

        # (2) selection: one-way model, pair scores (matrix products), a spanning tree (exponential mechanism)
        total = mbi.estimation.minimum_variance_unbiased_total(log1)
        mu = one_way_model(y1, weight, sizes, total)
        C = cooccurrence(codes, sizes)
        del codes
        edges = select_tree(pair_weights(C, sizes, mu, total), em_epsilon, rng) if d > 1 else []

        # (3) the tree's two-way marginals, noised; mbi fits the graphical model to all measurements
        off = offsets(sizes)
        log2 = []
        for a, c in edges:
            x = C[off[a]:off[a + 1], off[c]:off[c + 1]].ravel()
            noisy = x + rng.normal(0.0, std2, x.size) if cfg is not None else x
            log2.append(LinearMeasurement(noisy, (names[a], names[c]), std2))
        del C
        domain = mbi.Domain(names, [int(k) for k in sizes])
        measured = time.perf_counter()
        model = mbi.estimation.MirrorDescent().estimate(domain, log1 + log2, iters=self.iters)
        self._store_tree(model, names, sizes, edges, mapping, sizes0)
        # seconds of the measurement + selection (numpy) and of mbi's estimate (JAX compilation + iterations); not
        # learned state (no trailing underscore), for benchmarks/bench_mst.py
        self._timings = {"measure_select": measured - started, "estimate": time.perf_counter() - measured}

        rounds = len(edges) if cfg is not None else 0
        parts = zcdp_spent(std1, d, em_epsilon or 0.0, rounds, std2, len(edges)) if cfg is not None else []
        self.rho_ = float(rho)
        self.rho_spent_ = np.asarray(parts, dtype=np.float64)
        if cfg is not None:
            spent = cdp_eps(float(sum(parts)), cfg.delta)
            self.epsilon_ = spent
            trainer.record_privacy(spent, target_epsilon=cfg.epsilon, delta=cfg.delta, accountant="zcdp",
                                   rho=float(rho), rho_parts=[float(p) for p in parts], std_one_way=std1,
                                   em_epsilon=em_epsilon, std_two_way=std2, compressed_columns=int((sizes < sizes0).sum()))
        else:
            self.epsilon_ = math.inf
        return self

    def _store_tree(self, model: Any, names: list[str], sizes: np.ndarray, edges: list[tuple[int, int]],
                    mapping: np.ndarray, sizes0: np.ndarray) -> None:
        """Keep the fitted model as a rooted tree: for every column P(column | parent) from mbi's two-way marginals
        (the root: its one-way marginal), the breadth-first order, and how compressed values map back."""
        d, K = len(sizes), int(sizes.max())
        adj: list[list[int]] = [[] for _ in range(d)]
        for a, c in edges:
            adj[a].append(c)
            adj[c].append(a)
        parent = np.full(d, -1, dtype=np.int64)
        order, seen = [], np.zeros(d, dtype=bool)
        for root in range(d):   # one tree when d > 1 (a spanning tree); d = 1: the root alone
            if seen[root]:
                continue
            seen[root] = True
            queue = [root]
            while queue:
                u = queue.pop(0)
                order.append(u)
                for v in adj[u]:
                    if not seen[v]:
                        seen[v], parent[v] = True, u
                        queue.append(v)
        cond = np.zeros((d, K, K))
        for c in range(d):
            p = parent[c]
            if p < 0:
                cond[c, 0, : sizes[c]] = np.asarray(model.project((names[c],)).datavector(flatten=False))
            else:
                cond[c, : sizes[p], : sizes[c]] = np.asarray(model.project((names[p], names[c])).datavector(flatten=False))
        cond = np.maximum(cond, 0.0)
        valid = np.arange(K)[None, None, :] < sizes[:, None, None]
        rows = cond.sum(2, keepdims=True)
        cond = np.where(rows > 0, cond / np.where(rows > 0, rows, 1.0), valid / sizes[:, None, None])  # 0 rows: uniform
        self.sizes_ = sizes
        self.parent_ = parent
        self.order_ = np.asarray(order, dtype=np.int64)
        self.cond_ = cond
        K0 = int(sizes0.max())
        back = np.zeros((d, K, K0))                                    # P(original value | compressed value): uniform
        for v in range(K0):
            ok = mapping[:, v] >= 0
            back[np.flatnonzero(ok), mapping[ok, v], v] = 1.0
        self.back_ = back / np.maximum(back.sum(2, keepdims=True), 1.0)

    @property
    def edges(self) -> list[tuple[int, int]]:
        """The tree's edges (parent, child), in column indices."""
        return [(int(p), int(c)) for c, p in enumerate(self.parent_) if p >= 0]

    # ---- sample ---------------------------------------------------------------------------------------------------
    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        self._check_fitted()
        rng = np.random.default_rng(seed)
        d = self.n_features_
        codes = np.zeros((n, d), dtype=np.int32)
        for c in self.order_:
            p = int(self.parent_[c])
            k = int(self.sizes_[c])
            if p < 0:
                codes[:, c] = self._draw(np.zeros(n, dtype=np.int64), self.cond_[c, :1, :k], rng)
            else:
                codes[:, c] = self._draw(codes[:, p], self.cond_[c, : int(self.sizes_[p]), :k], rng)
        values = self._expand(codes, rng)
        b = self.binary_mask
        out = np.empty((n, d), dtype=np.float32)
        out[:, b] = values[:, b]
        if (~b).any():
            out[:, ~b] = (values[:, ~b] + rng.random((n, int((~b).sum())))) / self.bins   # uniform within the bin
        return self._finish(out)

    def _draw(self, parent_values: np.ndarray, cond: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One column given its parent's values: i.i.d. inverse-CDF draws ("sample"), or mbi's randomised rounding
        ("round"): the records of each parent value, in random order, get the stratified uniforms (rank + U) / count,
        so every parent group reproduces its conditional distribution up to rounding."""
        n = len(parent_values)
        cdf = np.cumsum(cond, axis=1)
        cdf[:, -1] = 1.0
        if self.sampling == "sample":
            u = rng.random(n)
        else:
            order = np.lexsort((rng.random(n), parent_values))
            counts = np.bincount(parent_values, minlength=len(cond))
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n) - starts[parent_values[order]]
            u = (rank + rng.random(n)) / counts[parent_values]
        return np.minimum((u[:, None] >= cdf[parent_values]).sum(1), cond.shape[1] - 1)

    def _expand(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Compressed values back to the original ones: a merged value becomes one of its originals, uniformly."""
        n, d = codes.shape
        first = np.argmax(self.back_, axis=2).astype(np.int32)               # the first original of each value
        out = first[np.arange(d)[None, :], codes]
        for c in np.flatnonzero((self.back_ > 0).sum(2).max(1) > 1):          # columns with a merged value
            for v in np.flatnonzero((self.back_[c] > 0).sum(1) > 1):
                rows = np.flatnonzero(codes[:, c] == v)
                out[rows, c] = rng.choice(np.flatnonzero(self.back_[c, v]), size=len(rows))
        return out

    @property
    def n_params(self) -> int:
        """The cells of the fitted model's marginals: the root's one-way table and each edge's two-way table."""
        if not hasattr(self, "parent_"):
            return 0
        s = self.sizes_
        return int(sum(s[c] * (s[p] if p >= 0 else 1) for c, p in enumerate(self.parent_)))
