"""The classifiers the metrics train (LightGBM, multi-target logistic regression) and a vectorised AUROC."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import optimize, stats

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
                       C: float = 1.0, max_iter: int = 100, tol: float = 1e-4, device: str = "cpu"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """K independent L2-regularised logistic regressions fitted jointly (one L-BFGS run, float64).

    Per target k the objective is sklearn's LogisticRegression(C) objective divided by n,
        (1/n) sum_i logloss(y_ik, x_i . w_k + b_k) + ||w_k||^2 / (2 C n)       (bias not penalised),
    so the K problems sum to one separable function with unchanged optima. Stopping rule as sklearn's lbfgs
    solver: max |projected gradient| < tol or max_iter iterations. exclude[k] is a feature index whose weight
    for target k is held at 0 (dimension-wise prediction predicts a code from all the *other* codes).
    Function and gradient are torch float64 (sparse CSR products for sparse X). Returns W (d, K) and b (K,).
    """
    import torch

    dev = torch.device(device)
    n, d = X.shape
    K = Y.shape[1]
    Yt = torch.as_tensor(np.asarray(Y, dtype=np.float64), device=dev)
    mask = torch.ones((d, K), dtype=torch.float64, device=dev)
    if exclude is not None:
        mask[torch.as_tensor(np.asarray(exclude)), torch.arange(K)] = 0.0
    if sp.issparse(X):
        Xt, XTt = (_csr64(M, dev) for M in (sp.csr_matrix(X), sp.csr_matrix(X.T)))
    else:
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float64), device=dev)
        XTt = Xt.T
    lam = 1.0 / (C * n)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        th = torch.from_numpy(theta).to(dev)
        W = th[: d * K].view(d, K) * mask
        b = th[d * K:]
        Z = Xt @ W + b
        loss = (torch.nn.functional.softplus(Z) - Yt * Z).sum() / n + 0.5 * lam * (W * W).sum()
        R = (torch.sigmoid(Z) - Yt) / n
        gW = (XTt @ R + lam * W) * mask
        return float(loss), torch.cat([gW.ravel(), R.sum(0)]).cpu().numpy()

    res = optimize.minimize(f, np.zeros(d * K + K), jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    return res.x[: d * K].reshape(d, K) * mask.cpu().numpy(), res.x[d * K:]


def _csr64(S: sp.csr_matrix, dev):
    import torch

    return torch.sparse_csr_tensor(torch.from_numpy(S.indptr.astype(np.int64)), torch.from_numpy(S.indices.astype(np.int64)),
                                   torch.from_numpy(S.data.astype(np.float64)), size=S.shape, device=dev)
