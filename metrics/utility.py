"""Downstream utility: train on synthetic, test on real (TSTR) vs real-trained (TRTR), and medGAN's dimension-wise prediction."""
from __future__ import annotations

import numpy as np
from scipy import stats

from ehrbench.data import EHRData

from .checks import checked_synth, code_mask, label_index, real_cached, subsample
from .learners import auroc, auroc_columns, fit_logistic_multi, lgbm, model_input
from .neighbors import encode
from .registry import register_metric


def _features(data: EHRData, target: int | None = None) -> np.ndarray:
    """Boolean mask of the feature columns: every column that is neither a label column nor the target column.

    The target must be dropped explicitly: `label=` may name an ordinary column, which version 1 kept among the
    features (a target leak: AUROC 1.000 instead of 0.739 for D_05 on the simulator).
    """
    labels = set(data.label_columns)
    f = np.array([c not in labels for c in data.columns], dtype=bool)
    if target is not None:
        f[target] = False
    return f


def _binary_label(data: EHRData, label: str | None, what: str) -> int:
    j = label_index(data, label, what)
    if data.kinds[j] != "binary":
        raise ValueError(f"label column {data.columns[j]} is continuous, {what} needs a binary label")
    if np.unique(data.test[:, j]).size < 2:
        raise ValueError(f"the real test split's label column {data.columns[j]} has one class, so AUROC is undefined")
    return j


def _fit_score(train: np.ndarray, j: int, data: EHRData, seed: int, n_estimators: int, n_jobs: int | None) -> float:
    f = _features(data, j)
    clf = lgbm(seed, n_estimators=n_estimators, n_jobs=n_jobs).fit(model_input(train[:, f]), train[:, j])
    return auroc(data.test[:, j], clf.predict_proba(model_input(data.test[:, f]))[:, 1])


def _trtr(data: EHRData, j: int, seed: int, n_estimators: int, n_jobs: int | None) -> float:
    """TRTR does not depend on the synthetic data: computed once per dataset object and settings, then reused."""
    return real_cached(data, ("trtr", j, seed, n_estimators),
                       lambda: _fit_score(data.train, j, data, seed, n_estimators, n_jobs))


# TSTR/TRTR: Esteban et al. 2017 ("Real-valued (medical) time series generation with recurrent conditional
# GANs") introduced train-on-synthetic-test-on-real; the label is a matrix column the generator produced.
# The label column is never a feature (CHANGELOG.md: metric versions).
@register_metric("tstr_auroc", goal="max", family="utility", version=2)
def tstr_auroc(data: EHRData, synth: np.ndarray, *, seed: int = 0, label: str | None = None,
               n_estimators: int = 100, n_jobs: int | None = 1) -> dict:
    """TSTR AUROC: LightGBM trained on synthetic records to predict the label, tested on the real test split.

    label = data.label_columns[0] unless given, read back from the synthetic matrix; features = every
    non-label column other than the label itself. Range [0, 1], higher is better (0.5 = no signal). Info: trtr
    (the same model trained on real train) and gap = trtr - tstr (0 is ideal). A constant synthetic label column is an error.
    Source: TSTR of Esteban et al. 2017; LightGBM (Ke et al. 2017) as the downstream model.
    """
    S = checked_synth(data, synth, min_rows=2)
    j = _binary_label(data, label, "tstr_auroc")
    ys = S[:, j]
    if ys.min() == ys.max():
        raise ValueError(f"the synthetic label column {data.columns[j]} is constant ({ys[0]:g} in every record), "
                         "so no classifier can be trained on it")
    value = _fit_score(S, j, data, seed, n_estimators, n_jobs)
    trtr = _trtr(data, j, seed, n_estimators, n_jobs)
    return {"value": value, "trtr": trtr, "gap": trtr - value}


# Goal "info": a reference that every generator shares; the label column is never a feature.
@register_metric("trtr_auroc", goal="info", family="utility", version=3)
def trtr_auroc(data: EHRData, synth: np.ndarray, *, seed: int = 0, label: str | None = None,
               n_estimators: int = 100, n_jobs: int | None = 1) -> float:
    """TRTR AUROC: the tstr_auroc model trained on the real train split (the reference TSTR should reach).

    Range [0, 1]; it does not depend on the synthetic data (same value for every generator), so its goal is
    "info": reports show it next to tstr_auroc and never rank it.
    Source: the TRTR reference of Esteban et al. 2017.
    """
    return _trtr(data, _binary_label(data, label, "trtr_auroc"), seed, n_estimators, n_jobs)


# Choi et al. 2017, "Generating multi-label discrete patient records using GANs" (medGAN), dimension-wise
# prediction: predict each code from all the others, trained on synthetic vs real, evaluated on real test data.
# Deviation: the K most prevalent codes instead of all codes, and AUROC instead of F1 (threshold-free, defined
# for rare codes); the classifier is logistic regression (C=1, as medGAN) fitted for all K codes in one L-BFGS.
@register_metric("dimwise_prediction", goal="max", family="utility")
def dimwise_prediction(data: EHRData, synth: np.ndarray, *, seed: int = 0, top_k: int = 50,
                       n_train: int | None = 20000, C: float = 1.0, max_iter: int = 100) -> dict:
    """Mean AUROC over the top_k most prevalent codes of logistic regressions trained on synthetic data.

    For each code c among the top_k most prevalent binary non-label columns (with both classes in real train
    and test): fit LR(x_c | all other non-label columns) on synthetic (and on real train) rows, score AUROC on the
    real test split. value = mean_c AUROC_syn(c); range [0, 1], higher is better. Info: real = mean_c
    AUROC_real(c); pearson = r(AUROC_syn, AUROC_real) over codes (0 when either vector is constant); n_codes.
    Rule: a code that is constant in the synthetic training rows gets AUROC 0.5 (nothing can be learned).
    Seeded subsamples of at most n_train rows per side. Source: medGAN (Choi et al. 2017).
    """
    S = checked_synth(data, synth, min_rows=2)
    codes = np.flatnonzero(code_mask(data, "dimension-wise prediction"))
    rng = np.random.default_rng(seed)
    real, syn = subsample(rng, data.train, n_train), subsample(rng, S, n_train)
    valid = (data.train[:, codes].min(0) < data.train[:, codes].max(0)) & (data.test[:, codes].min(0) < data.test[:, codes].max(0))
    codes = codes[valid]
    if len(codes) == 0:
        raise ValueError(f"no code of {data.name} has both classes in real train and test, so dimension-wise prediction is undefined")
    prev = data.train[:, codes].mean(0)
    targets = codes[np.argsort(-prev, kind="stable")[:top_k]]
    feat = np.flatnonzero(_features(data))
    pos = np.searchsorted(feat, targets)  # position of each target among the feature columns
    real, syn, test = (m[:, feat] for m in encode(data, real, syn, data.test))
    Yt = test[:, pos]
    scores = {}
    for side, X in (("real", real), ("syn", syn)):
        W, b = fit_logistic_multi(model_input(X), X[:, pos], exclude=pos, C=C, max_iter=max_iter)
        auc = auroc_columns(Yt, np.asarray(model_input(test) @ W) + b)
        const = X[:, pos].min(0) == X[:, pos].max(0)
        scores[side] = np.where(const, 0.5, auc)
    a, r = scores["syn"], scores["real"]
    pearson = float(stats.pearsonr(a, r)[0]) if len(a) > 1 and a.std() > 0 and r.std() > 0 else 0.0
    return {"value": float(a.mean()), "real": float(r.mean()), "pearson": pearson, "n_codes": float(len(targets))}
