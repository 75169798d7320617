"""The classifiers the metrics train (LightGBM, multi-target logistic regression) and a vectorised AUROC."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy import stats

SPARSE_DENSITY = 0.10


def model_input(X: np.ndarray) -> np.ndarray | sp.csr_matrix:
    """CSR for sparse code matrices (LightGBM and scipy products are ~10x faster on them), dense otherwise."""
    X = np.asarray(X, dtype=np.float32)
    return sp.csr_matrix(X) if np.count_nonzero(X) < SPARSE_DENSITY * X.size else X


def lgbm(seed: int, n_estimators: int = 100, learning_rate: float = 0.1, num_leaves: int = 31,
         n_jobs: int | None = 1):
    """A seeded, deterministic LightGBM classifier (Ke et al. 2017); n_jobs None = all cores.

    The metrics default to one thread: results do not depend on it (deterministic=True), and on a shared
    2-core machine OpenMP threads slowed a 3-fold detection fit 8x (0.18 s -> 1.5 s, measured).
    """
    import lightgbm

    return lightgbm.LGBMClassifier(n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves,
                                   random_state=seed, deterministic=True, force_row_wise=True, verbose=-1,
                                   n_jobs=-1 if n_jobs is None else n_jobs)


def auroc_columns(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """AUROC of scores P[:, k] for 0/1 targets Y[:, k], all columns at once (Mann-Whitney U with mid-ranks).

    AUC_k = (sum of the positives' ranks - n1 (n1 + 1) / 2) / (n1 n0); ties count one half, as in
    sklearn.metrics.roc_auc_score. NaN where a column has only one class.
    """
    Y = np.asarray(Y, dtype=bool).reshape(len(Y), -1)
    P = np.asarray(P, dtype=np.float64).reshape(len(P), -1)
    ranks = stats.rankdata(P, axis=0)
    n1 = Y.sum(0).astype(np.float64)
    n0 = len(Y) - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * Y).sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC of one score vector (see auroc_columns)."""
    return float(auroc_columns(np.asarray(y)[:, None], np.asarray(p)[:, None])[0])


def fit_logistic_multi(X: np.ndarray | sp.csr_matrix, Y: np.ndarray, exclude: np.ndarray | None = None,
                       C: float = 1.0, max_iter: int = 100, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """K independent L2-regularised logistic regressions fitted jointly (one L-BFGS run, float64).

    Per target k the objective is sklearn's LogisticRegression(C) objective divided by n,
        (1/n) sum_i logloss(y_ik, x_i . w_k + b_k) + ||w_k||^2 / (2 C n)       (bias not penalised),
    so the K problems sum to one separable function with unchanged optima. Stopping rule as sklearn's lbfgs
    solver: max |gradient| < tol or max_iter iterations. exclude[k] is a feature index whose weight
    for target k is held at 0 (dimension-wise prediction predicts a code from all the *other* codes).
    Products are scipy sparse for sparse X (measured faster than torch CSR on CPU). Returns W (d, K), b (K,).
    """
    n, d = X.shape
    Y = np.asarray(Y, dtype=np.float64)
    K = Y.shape[1]
    mask = np.ones((d, K))
    if exclude is not None:
        mask[np.asarray(exclude), np.arange(K)] = 0.0
    if sp.issparse(X):
        Xd = sp.csr_matrix(X, dtype=np.float64)
        XT = sp.csr_matrix(Xd.T)
    else:
        Xd = np.asarray(X, dtype=np.float64)
        XT = Xd.T
    lam = 1.0 / (C * n)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[: d * K].reshape(d, K) * mask
        Z = np.asarray(Xd @ W)
        Z += theta[d * K:]
        E = np.exp(-np.abs(Z))  # stable softplus(z) = max(z, 0) + log1p(exp(-|z|)) and sigmoid from one exp
        loss = (np.maximum(Z, 0).sum() + np.log1p(E).sum() - (Y * Z).sum()) / n + 0.5 * lam * (W * W).sum()
        P = np.where(Z >= 0, 1.0, E) / (1.0 + E)
        P -= Y
        P /= n
        gW = np.asarray(XT @ P)
        gW += lam * W
        gW *= mask
        return float(loss), np.concatenate([gW.ravel(), P.sum(0)])

    # torch's L-BFGS (strong-Wolfe line search) on a float64 CPU vector: scipy's L-BFGS-B is slow in its
    # bound-handling code for the d*K weights of wide data.
    theta = torch.zeros(d * K + K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        loss, grad = f(theta.detach().numpy())
        theta.grad = torch.from_numpy(grad)
        return torch.tensor(loss, dtype=torch.float64)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the optimizer's vector ops are tiny: more threads only add synchronisation
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    x = theta.detach().numpy()
    return x[: d * K].reshape(d, K) * mask, x[d * K:].copy()
