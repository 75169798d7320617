"""Fidelity metrics: how closely the synthetic matrix reproduces the real training data's statistics."""
from __future__ import annotations

import numpy as np
from scipy import stats

from data import EHRData

from .checks import checked_synth
from .registry import register_metric


def _prevalences(data: EHRData, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column means of real train and synthetic data over the binary columns."""
    S = checked_synth(data, synth)
    m = data.binary_mask
    if not m.any():
        raise ValueError("the dataset has no binary columns, so prevalence is undefined")
    return data.train[:, m].mean(0, dtype=np.float64), S[:, m].mean(0, dtype=np.float64)


@register_metric("prevalence_pearson", goal="max", family="fidelity")
def prevalence_pearson(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Pearson r between per-code prevalence in real train and synthetic data (dimension-wise probability).

    r = cov(p_real, p_syn) / (std(p_real) std(p_syn)) over binary columns; range [-1, 1], higher is better.
    Against the *training* data, as in the EHRDiff code (utils/util.py::plot_dim_dist) and medGAN's DWP.
    """
    p, q = _prevalences(data, synth)
    if p.std() == 0 or q.std() == 0:
        raise ValueError("prevalence Pearson r is undefined because one prevalence vector is constant")
    return float(stats.pearsonr(p, q)[0])


@register_metric("prevalence_spearman", goal="max", family="fidelity")
def prevalence_spearman(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Spearman rank correlation of per-code prevalences (real train vs synthetic); range [-1, 1], higher is better.

    Reported next to Pearson because the EHRDiff issue #5 discussion shows the two disagree on rare codes.
    """
    p, q = _prevalences(data, synth)
    if p.std() == 0 or q.std() == 0:
        raise ValueError("prevalence Spearman r is undefined because one prevalence vector is constant")
    return float(stats.spearmanr(p, q)[0])


@register_metric("prevalence_mae", goal="min", family="fidelity")
def prevalence_mae(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> float:
    """Mean absolute prevalence error: mean_j |p_real_j - p_syn_j| over binary columns; range [0, 1], lower is better."""
    p, q = _prevalences(data, synth)
    return float(np.abs(p - q).mean())


@register_metric("nzc", goal="max", family="fidelity")
def nzc(data: EHRData, synth: np.ndarray, *, seed: int = 0) -> dict:
    """NZC: number of binary columns with non-zero synthetic prevalence (EHRDiff's mode-collapse indicator).

    Range [0, n_binary]; higher is better up to the real count, which is reported as `nzc.real`.
    """
    p, q = _prevalences(data, synth)
    return {"value": float((q > 0).sum()), "real": float((p > 0).sum())}
