"""Fidelity metrics on column statistics: prevalence, co-occurrence, correlation, codes per record, continuous columns."""
from __future__ import annotations

import numpy as np
from scipy import stats

from ehrbench.data import EHRData

from .checks import checked_synth, code_mask, continuous_mask, real_cached
from .neighbors import encode, gram
from .registry import NotApplicable, register_metric


def _prevalences(data: EHRData, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column means of real train and synthetic data over the binary columns."""
    S = checked_synth(data, synth)
    m = data.binary_mask
    if not m.any():
        raise NotApplicable("the dataset has no binary columns, so prevalence is undefined")
    p = real_cached(data, "mean", lambda: data.train.mean(0, dtype=np.float64))
    return p[m], S.mean(0, dtype=np.float64)[m]  # means of all columns, then select: no column copy of the matrix


def _pearson(a: np.ndarray, b: np.ndarray, what: str) -> float:
    if a.std() == 0 or b.std() == 0:
        side = "real" if a.std() == 0 else "synthetic"
        raise ValueError(f"{what} is undefined because the {side} vector is constant")
    return float(stats.pearsonr(a, b)[0])


# ---- first order: prevalence (medGAN's dimension-wise probability; EHRDiff Figure 1) ------------------------
@register_metric("prevalence_pearson", goal="max", family="fidelity", marginal=True, reads="binary", concept="code prevalence")
def prevalence_pearson(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Pearson r between per-code prevalence in real train and synthetic data (dimension-wise probability).

    r = cov(p_real, p_syn) / (std(p_real) std(p_syn)) over binary columns; range [-1, 1], higher is better.
    Against the *training* data, as in the EHRDiff code (utils/util.py::plot_dim_dist) and medGAN's DWP.
    """
    p, q = _prevalences(data, synth)
    return _pearson(p, q, "prevalence Pearson r")


@register_metric("prevalence_spearman", goal="max", family="fidelity", marginal=True, reads="binary", concept="code prevalence")
def prevalence_spearman(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Spearman rank correlation of per-code prevalences (real train vs synthetic); range [-1, 1], higher is better.

    Reported next to Pearson because the EHRDiff issue #5 discussion shows the two disagree on rare codes.
    """
    p, q = _prevalences(data, synth)
    if p.std() == 0 or q.std() == 0:
        raise ValueError("prevalence Spearman r is undefined because one prevalence vector is constant")
    return float(stats.spearmanr(p, q)[0])


@register_metric("prevalence_mae", goal="min", family="fidelity", marginal=True, reads="binary", concept="code prevalence")
def prevalence_mae(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Mean absolute prevalence error: mean_j |p_real_j - p_syn_j| over binary columns; range [0, 1], lower is better.

    The absolute form of medGAN's dimension-wise probability comparison (Choi et al. 2017), as reported by
    Yan et al. 2022 (prevalence error).
    """
    p, q = _prevalences(data, synth)
    return float(np.abs(p - q).mean())


# Goal "target": the ideal is the count of distinct codes expected of as many real records as the synthetic
# sample holds, so inventing codes that never occur in the real data does not win.
@register_metric("nzc", goal="target", ideal="real", family="fidelity", version=3, marginal=True, reads="binary")
def nzc(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> dict:
    """NZC: number of binary columns with non-zero synthetic prevalence (EHRDiff's mode-collapse indicator).

    Range [0, n_binary]; the ideal `nzc.real` is the count expected of n records (n = the synthetic sample's size)
    drawn from the real train prevalences p_j: sum_j 1 - (1 - p_j)^n (a code train never has counts as invented,
    though new patients show a few); reports rank by |value - real|: too few is mode collapse, too many is codes
    real data of that size does not have. Because a generator can lose k
    real codes and invent k others at a perfect count, more info values tell the parts apart: `nzc.real_all`
    = the count over all of train, `nzc.coverage` = share of those codes the synthetic data emits (1 ideal) and
    `nzc.invented` = number of columns emitted although absent from real train (0 ideal).
    """
    p, q = _prevalences(data, synth)
    real, syn = p > 0, q > 0
    expected = float((1.0 - np.power(1.0 - p, len(synth))).sum())  # (1 - p)^n without underflow trouble: p in [0, 1]
    return {"value": float(syn.sum()), "real": expected, "real_all": float(real.sum()),
            "coverage": float((syn & real).sum() / max(1, real.sum())), "invented": float((syn & ~real).sum())}


# ---- second order: co-occurrence and correlation ----------------------------------------------------------
@register_metric("cooccurrence_pearson", goal="max", family="fidelity", reads="binary", concept="dependence")
def cooccurrence_pearson(data: EHRData, synth: np.ndarray, *, seed: int = 0, device: str = "auto") -> float:
    """Pearson r between real-train and synthetic pairwise co-occurrence probabilities over binary column pairs.

    P_ab = (1/n) sum_i x_ia x_ib for a < b (one Gram matrix X^T X per side); r = pearson(P_real, P_syn) over
    the d(d-1)/2 pairs. Range [-1, 1], higher is better. Co-occurrence (bigram) fidelity as in Yan et al. 2022
    (synthetic EHR benchmarking) and HALO (Theodorou et al. 2023).
    """
    S = checked_synth(data, synth, min_rows=1)
    m = data.binary_mask
    if m.sum() < 2:
        raise ValueError(f"the dataset {data.name} has fewer than two binary columns, so co-occurrence is undefined")
    iu = np.triu_indices(int(m.sum()), k=1)
    p = real_cached(data, "gram", lambda: gram(data.train, device))[np.ix_(m, m)][iu] / len(data.train)
    q = gram(S, device)[np.ix_(m, m)][iu] / len(S)
    return _pearson(p, q, "co-occurrence Pearson r")


def correlation_matrix(X: np.ndarray, device: str = "auto", binary: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation matrix of the columns of X (float64) with the constant-column rule.

    Rule: a column with zero variance (e.g. a code the generator never emits: mode collapse) has correlation 0
    with every other column and 1 with itself. This keeps R a valid (PSD, unit-diagonal) correlation matrix and
    scores a collapsed column as having lost all its associations, instead of crashing or adding noise
    (synthEHRella adds 1e-6 noise instead).
    Numerics: 0/1 columns (`binary`, default: all) use the fast Gram matrix X^T X, exact in float32 (integer
    counts below 2^24). Every product that involves another column is computed on mean-centred float64 values
    in row chunks, so a constant continuous column has variance exactly 0 and small variances do not cancel
    (version 1 gave a constant HR column a float32 variance of 5.5e-9 and correlations of ~0.009).
    """
    n, d = X.shape
    b = np.ones(d, bool) if binary is None else np.asarray(binary, bool)
    mu = X.mean(0, dtype=np.float64)
    cov = gram(X, device) / n - np.outer(mu, mu)
    cont = np.flatnonzero(~b)
    if len(cont):
        block = np.zeros((d, len(cont)))
        for r0 in range(0, n, 8192):
            Xc = X[r0:r0 + 8192].astype(np.float64) - mu
            block += Xc.T @ Xc[:, cont]
        cov[:, cont] = block / n
        cov[cont, :] = block.T / n
    var = np.clip(np.diag(cov), 0.0, None)
    const = var <= 1e-12 * np.maximum(1.0, np.abs(mu) ** 2)
    sd = np.where(const, 1.0, np.sqrt(var))
    R = cov / np.outer(sd, sd)
    R[const, :] = 0.0
    R[:, const] = 0.0
    np.fill_diagonal(R, 1.0)
    return np.clip(R, -1.0, 1.0)


def _correlations(data: EHRData, synth: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray]:
    S = checked_synth(data, synth, min_rows=2)
    # z-scored continuous columns (same R, centred float64 products); binary columns unchanged
    b = data.binary_mask
    Rr = real_cached(data, "corr", lambda: correlation_matrix(encode(data, data.train)[0], device, b))
    return Rr, correlation_matrix(encode(data, S)[0], device, b)


# Version 2 (with correlation_mae): continuous columns in centred float64 (see correlation_matrix).
@register_metric("cmd", goal="min", family="fidelity", version=2, concept="dependence")
def cmd(data: EHRData, synth: np.ndarray, *, seed: int = 0, device: str = "auto") -> float:
    """Correlation matrix distance (Herdin et al. 2005): 1 - tr(R_r R_s) / (||R_r||_F ||R_s||_F).

    R = Pearson correlation matrix over all columns (constant-column rule in `correlation_matrix`); real =
    train split. Range [0, 1] (tr(AB) >= 0 for PSD matrices), lower is better; 0 when R_s is a multiple of R_r.
    """
    Rr, Rs = _correlations(data, synth, device)
    return float(1.0 - (Rr * Rs).sum() / (np.linalg.norm(Rr) * np.linalg.norm(Rs)))


@register_metric("correlation_mae", goal="min", family="fidelity", version=2, concept="dependence")
def correlation_mae(data: EHRData, synth: np.ndarray, *, seed: int = 0, device: str = "auto") -> float:
    """Mean absolute correlation error: mean_{a<b} |R_r[a,b] - R_s[a,b]| over all column pairs.

    Same R as `cmd` (constant-column rule in `correlation_matrix`). Range [0, 2], lower is better. The
    pairwise-correlation difference of Yan et al. 2022 and synthEHRella, as a mean instead of a Frobenius norm.
    """
    Rr, Rs = _correlations(data, synth, device)
    if len(Rr) < 2:
        raise ValueError(f"the dataset {data.name} has one column, so there are no correlation pairs")
    iu = np.triu_indices(len(Rr), k=1)
    return float(np.abs(Rr[iu] - Rs[iu]).mean())


# ---- distributions of one number per record or per column -------------------------------------------------
def wasserstein_columns(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """1-Wasserstein distance between the empirical distributions of A[:, j] and B[:, j], all columns at once.

    W1 = int_0^1 |F_A^-1(u) - F_B^-1(u)| du, evaluated exactly on the merged quantile breakpoints {i/n} U {j/m}
    (equals scipy.stats.wasserstein_distance per column).
    """
    A = np.sort(np.asarray(A, np.float64).reshape(len(A), -1), axis=0)
    B = np.sort(np.asarray(B, np.float64).reshape(len(B), -1), axis=0)
    n, m = len(A), len(B)
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    du = np.diff(u, prepend=0.0)
    mid = u - du / 2
    ia = np.minimum(np.ceil(mid * n).astype(np.int64) - 1, n - 1)
    ib = np.minimum(np.ceil(mid * m).astype(np.int64) - 1, m - 1)
    return (du[:, None] * np.abs(A[ia] - B[ib])).sum(0)


@register_metric("codes_per_record_wd", goal="min", family="fidelity", reads="binary")
def codes_per_record_wd(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> dict:
    """Wasserstein-1 distance between the real-train and synthetic distributions of codes per record.

    c_i = number of 1s among the binary non-label columns of record i; W1(c_real, c_syn) in codes. Range
    [0, n_codes], lower is better. The "concept abundance" check of Yan et al. 2022 (synthetic EHR benchmarking).
    Info: the mean number of codes per record on each side.
    """
    S = checked_synth(data, synth)
    w = code_mask(data, "codes per record").astype(np.float32)
    cr, cs = real_cached(data, "codes_per_record", lambda: data.train @ w), S @ w  # exact integer counts
    return {"value": float(wasserstein_columns(cr, cs)[0]), "mean_real": float(cr.mean()), "mean_synth": float(cs.mean())}


def _continuous(data: EHRData, synth: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    S = checked_synth(data, synth, min_rows=2)
    m = continuous_mask(data, what)
    real = data.train[:, m].astype(np.float64)
    sd = real.std(0)
    return real, S[:, m].astype(np.float64), np.where(sd > 0, sd, 1.0)


@register_metric("continuous_mean_error", goal="min", family="fidelity", marginal=True, reads="continuous", concept="continuous marginals")
def continuous_mean_error(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Mean standardised mean error over continuous columns: mean_j |mean_s_j - mean_r_j| / std_r_j.

    std_r = real-train std (1 where it is 0). Range [0, inf), lower is better. Per-column moment check as in
    SDMetrics/synthcity statistical fidelity reports, scaled so columns in different units are comparable.
    """
    real, syn, sd = _continuous(data, synth, "continuous_mean_error")
    return float((np.abs(syn.mean(0) - real.mean(0)) / sd).mean())


@register_metric("continuous_std_error", goal="min", family="fidelity", marginal=True, reads="continuous", concept="continuous marginals")
def continuous_std_error(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Mean relative std error over continuous columns: mean_j |std_s_j - std_r_j| / std_r_j (std_r 1 where 0).

    Range [0, inf), lower is better; 1 means the synthetic column is constant (mode collapse). Per-column
    moment check as in SDMetrics/synthcity statistical fidelity reports (like continuous_mean_error).
    """
    real, syn, sd = _continuous(data, synth, "continuous_std_error")
    return float((np.abs(syn.std(0) - real.std(0)) / sd).mean())


@register_metric("continuous_wd", goal="min", family="fidelity", marginal=True, reads="continuous", concept="continuous marginals")
def continuous_wd(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Mean standardised Wasserstein-1 distance over continuous columns: mean_j W1(real_j, syn_j) / std_r_j.

    Range [0, inf), lower is better. The per-column Wasserstein distance of synthcity's statistical-fidelity
    checks (Qian et al. 2023), divided by the real std (1 where it is 0) so columns in different units compare.
    """
    real, syn, sd = _continuous(data, synth, "continuous_wd")
    return float((wasserstein_columns(real, syn) / sd).mean())
