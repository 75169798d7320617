"""mst_select: the vectorised measurement and selection parts of MST (all two-way tables, pair scores, the tree)."""
from __future__ import annotations

import numpy as np


def offsets(sizes: np.ndarray) -> np.ndarray:
    """Start of each column's block in the concatenated one-hot coding (length d + 1)."""
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def cooccurrence(codes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """All two-way contingency tables at once: C = Z^T Z for the one-hot coding Z (N x K, K = sum of the sizes), so the
    block (a, b) of C is the table of columns a and b and its diagonal blocks hold the one-way counts.

    Z is never built: every column's indicator of value 0 is 1 minus its other indicators, Z = 1 e0^T + Z1 M with Z1 the
    indicators of the values >= 1 (for a binary column: the column itself) and M a sparse +1/-1 map. Hence
    C = M^T (Z1^T Z1) M + s e0^T + e0 s^T + N e0 e0^T with s = M^T Z1^T 1: one float32 product Z1^T Z1 (X^T X for
    binary data; counts are exact up to 2^24 records) and sparse products."""
    from scipy import sparse

    n, d = codes.shape
    sizes = np.asarray(sizes, dtype=np.int64)
    off, off1 = offsets(sizes), offsets(sizes - 1)
    Z1 = np.zeros((n, int(off1[-1])), dtype=np.float32)
    for v in range(1, int(sizes.max())):   # a loop over values (at most `bins`), never over columns or pairs
        cols = np.flatnonzero(sizes > v)
        Z1[:, off1[cols] + v - 1] = codes[:, cols] == v
    G = (Z1.T @ Z1).astype(np.float64)
    n1 = Z1.sum(0, dtype=np.float64)
    del Z1
    col = np.repeat(np.arange(d), sizes - 1)                     # the column of each indicator in Z1
    val = np.arange(int(off1[-1])) - off1[col] + 1                # its value (>= 1)
    rows = np.arange(int(off1[-1]))
    M = sparse.csr_matrix((np.r_[np.ones(len(rows)), -np.ones(len(rows))], (np.r_[rows, rows], np.r_[off[col] + val,
                                                                                                      off[col]])),
                          shape=(len(rows), int(off[-1])))
    GM = np.asarray((M.T @ G.T).T) if len(rows) else np.zeros((0, int(off[-1])))   # G M (K1 x K)
    C = np.asarray(M.T @ GM) if len(rows) else np.zeros((int(off[-1]),) * 2)       # M^T G M (K x K)
    e0 = np.zeros(int(off[-1]))
    e0[off[:-1]] = 1.0
    s = M.T @ n1 if len(rows) else np.zeros(int(off[-1]))
    C += np.outer(s, e0) + np.outer(e0, s) + n * np.outer(e0, e0)
    return C


def pair_weights(C: np.ndarray, sizes: np.ndarray, mu: np.ndarray, total: float) -> np.ndarray:
    """MST's selection score of every pair: W[a, b] = || x_ab - xhat_ab ||_1, where x_ab is the two-way table (block
    (a, b) of `cooccurrence`) and xhat_ab = mu_a mu_b^T / total the table the one-way model predicts (mu: (d, K) model
    counts, each row summing to total, padded with zeros). Vectorised: one K x K matrix and block sums."""
    sizes = np.asarray(sizes, dtype=np.int64)
    p = mu[np.arange(mu.shape[1])[None, :] < sizes[:, None]] / total     # row-major: the columns' blocks in order
    E = np.abs(C - total * np.outer(p, p))
    starts = offsets(sizes)[:-1]
    return np.add.reduceat(np.add.reduceat(E, starts, axis=0), starts, axis=1)


def one_way_model(y: np.ndarray, w: np.ndarray, sizes: np.ndarray, total: float) -> np.ndarray:
    """The estimate mbi's MirrorDescent converges to from one-way measurements alone: per column, the marginal mu >= 0
    with sum(mu) = total closest to the measurement in the measurement's own metric, argmin sum_j (w_j mu_j - y_j)^2
    (w: 1 for an ordinary cell, 1/sqrt(m) for a cell that merges m rare values). KKT: mu_j = max(0, y_j / w_j +
    lambda / w_j^2), lambda by bisection, all columns at once. mbi needs one compiled program per column for this
    (minutes on wide data); the optimum is the same (tested against mbi)."""
    d, K = y.shape
    valid = np.arange(K)[None, :] < np.asarray(sizes)[:, None]
    w = np.where(valid, w, 1.0)
    a, b = np.where(valid, y / w, 0.0), np.where(valid, 1.0 / w ** 2, 0.0)
    ratio = np.where(valid, -a / np.where(valid, b, 1.0), 0.0)
    lo = np.where(valid, ratio, np.inf).min(1) - 1.0                                   # every cell at 0
    hi = np.maximum(np.where(valid, ratio, -np.inf).max(1), (total - a.sum(1)) / b.sum(1)) + 1.0  # every cell > 0
    for _ in range(200):
        mid = (lo + hi) / 2
        over = np.maximum(0.0, a + mid[:, None] * b).sum(1) > total
        hi, lo = np.where(over, mid, hi), np.where(over, lo, mid)
    mu = np.maximum(0.0, a + ((lo + hi) / 2)[:, None] * b)
    return np.where(valid, mu, 0.0)


def select_tree(W: np.ndarray, em_epsilon: float | None, rng: np.random.Generator) -> list[tuple[int, int]]:
    """MST's select(): d - 1 rounds, each choosing one pair that joins two components, so the result is a spanning
    tree. Private (em_epsilon > 0): the exponential mechanism with score W (sensitivity 1, private-pgm's non-monotonic
    0.5 eps / sensitivity scaling); None: the pair of largest weight (Kruskal: the maximum spanning tree).

    Each round draws from the pairs still joining two components. The probabilities are kept for all pairs and a draw
    that lands on a pair already inside one component is redrawn: that is exactly a draw restricted to the others.
    After 32 redraws the live pairs are compacted (O(live pairs)), so no round pays the full cost of filtering."""
    d = len(W)
    if d < 2:
        return []
    iu, ju = np.triu_indices(d, 1)
    iu, ju = iu.astype(np.int32), ju.astype(np.int32)
    w = W[iu, ju]
    comp = np.arange(d)
    edges: list[tuple[int, int]] = []

    def join(a: int, b: int) -> None:
        edges.append((int(a), int(b)))
        comp[comp == comp[b]] = comp[a]

    if em_epsilon is None:
        for k in np.argsort(-w, kind="stable"):
            a, b = iu[k], ju[k]
            if comp[a] != comp[b]:
                join(a, b)
                if len(edges) == d - 1:
                    break
        return edges
    cdf = None
    while len(edges) < d - 1:
        if cdf is None:
            live = comp[iu] != comp[ju]
            iu, ju, w = iu[live], ju[live], w[live]
            score = 0.5 * em_epsilon * w
            cdf = np.cumsum(np.exp(score - score.max()))
        for _ in range(32):
            k = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)
            if comp[iu[k]] != comp[ju[k]]:
                join(iu[k], ju[k])
                break
        else:
            cdf = None
    return edges


# MST (McKenna, Miklau & Sheldon, "Winning the NIST Contest: A scalable and general approach to differentially private
# synthetic data", Journal of Privacy and Confidentiality 2021), the generalisation of the winning mechanism of the 2018
# NIST DP synthetic-data challenge; official code: private-pgm's mechanisms/mst.py on mbi (github.com/ryan112358).
