"""dp_independent: independent marginals released by the Gaussian mechanism, the floor of every DP generator."""
from __future__ import annotations

import math

import numpy as np

from .base import Synthesizer, register_synthesizer
from .dp import calibrate_noise, epsilon_spent
from .outputs import check_unit_interval


# The DP counterpart of the independent-marginal baseline (Yan et al., Nat. Commun. 2022): the one-way marginals of
# every column, noised once by the Gaussian mechanism and accounted by the same opacus accountant as DP-SGD.
@register_synthesizer("dp_independent")
class DPIndependent(Synthesizer):
    """Noisy one-way marginals, sampled independently per column.

    Each record contributes u_r = [its binary columns (0/1), a one-hot histogram bin (of `bins` equal bins on
    [0, 1]) for each continuous column, 1 (the record count)], so adding or removing one record moves the count
    vector C = sum_r u_r by at most Delta = sqrt(d_binary + d_continuous + 1) in L2. The release is
    C + N(0, (sigma Delta)^2 I) with sigma the noise multiplier for which one full-batch (q = 1) Gaussian step
    spends trainer.dp's (epsilon, delta) under its accountant: the same neighbouring relation (add/remove) and
    accountant as DP-SGD, so epsilons compare. From the noisy release: N' = max(1, count), p_j = clip(c_j / N',
    0, 1) for binary codes, clip(histogram, 0) normalised for continuous columns (uniform within the bin). Bin edges
    are fixed on [0, 1], never read from the data. Without trainer.dp (or epsilon = inf) there is no noise.
    Only the noisy release is kept (n_params = its length).
    """

    reference = True    # the DP floor: shown beside the ranking, like `independent`
    supports_dp = True  # private under trainer.dp without the Trainer's DP-SGD

    def __init__(self, bins: int = 20) -> None:
        self.bins = bins

    def fit(self, data, trainer=None) -> "DPIndependent":
        X = self._prepare_fit(data)
        check_unit_interval(X, self.kinds_, self.columns_, f"{self.name}.fit")
        b = self.binary_mask
        hist = np.minimum((X[:, ~b] * self.bins).astype(np.int64), self.bins - 1)       # bin of each value
        counts = np.concatenate([X[:, b].sum(0, dtype=np.float64),
                                 np.stack([np.bincount(h, minlength=self.bins) for h in hist.T]).ravel()
                                 if hist.size else np.zeros(0), [len(X)]])
        cfg = getattr(trainer, "dp", None)
        self.sigma_ = 0.0
        if cfg is not None:
            delta = math.sqrt(int(b.sum()) + int((~b).sum()) + 1)
            self.sigma_ = calibrate_noise(cfg, [(1.0, 1)], self.name) * delta
            rng = np.random.default_rng(getattr(trainer, "seed", 0))
            counts = counts + rng.normal(0.0, self.sigma_, size=counts.shape)
            spent = epsilon_spent(self.sigma_ / delta, [(1.0, 1)], cfg.delta, cfg.accountant)
            trainer.record_privacy(spent, target_epsilon=cfg.epsilon, delta=cfg.delta, accountant=cfg.accountant,
                                   noise_multiplier=self.sigma_ / delta, sensitivity=delta)
        self.release_ = counts  # the only state kept: the (noisy) counts
        return self

    def _marginals(self) -> tuple[np.ndarray, np.ndarray]:
        b = self.binary_mask
        n = max(1.0, float(self.release_[-1]))
        p = np.clip(self.release_[: int(b.sum())] / n, 0.0, 1.0)
        h = np.clip(self.release_[int(b.sum()):-1].reshape(int((~b).sum()), self.bins), 0.0, None)
        h[h.sum(1) == 0] = 1.0  # all noise: a uniform histogram
        return p, h / h.sum(1, keepdims=True)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        self._check_fitted()
        rng = np.random.default_rng(seed)
        p, hist = self._marginals()
        b = self.binary_mask
        out = np.zeros((n, self.n_features_), dtype=np.float32)
        out[:, b] = rng.random((n, int(b.sum()))) < p
        if hist.size:
            cdf = np.cumsum(hist, axis=1)
            u = rng.random((n, len(hist)))
            idx = np.minimum((u[:, :, None] > cdf[None]).sum(2), self.bins - 1)     # inverse-CDF bin draw
            out[:, ~b] = (idx + rng.random(idx.shape)) / self.bins
        return self._finish(out)

    @property
    def n_params(self) -> int:
        return int(self.release_.size) if hasattr(self, "release_") else 0
