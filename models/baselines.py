"""Reference baselines: independent per-column marginals (the floor) and resampled real records (the ceiling)."""
from __future__ import annotations

import numpy as np
import torch

from .base import Synthesizer, register_synthesizer
from .dp import refuse_private


# The "independent-marginal prevalence sampler" of Yan et al., Nat. Commun. 2022 (their strong baseline).
@register_synthesizer("independent")
class Independent(Synthesizer):
    """Samples every column independently: binary codes ~ Bernoulli(training prevalence); continuous columns
    from their empirical marginal (a training value drawn uniformly). Carries no signal between columns, so it
    is the floor every generator must beat on correlation-aware metrics."""

    reference = True  # a reference point, not a competitor: leaderboards show it beside the ranking, unranked
    n_params = 0      # references hold data summaries, not trained parameters

    def __init__(self) -> None:
        pass

    def fit(self, data, trainer=None) -> "Independent":
        refuse_private(self.name, trainer)
        X = self._prepare_fit(data)
        self.prevalence_ = X.mean(0, dtype=np.float64)
        self.values_ = np.sort(X[:, ~self.binary_mask], axis=0)  # per-column empirical marginals
        return self

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        self._check_fitted()
        rng = np.random.default_rng(seed)
        out = (rng.random((n, self.n_features_)) < self.prevalence_).astype(np.float32)
        c = ~self.binary_mask
        if c.any():
            idx = rng.integers(0, len(self.values_), size=(n, int(c.sum())))
            out[:, c] = np.take_along_axis(self.values_, idx, axis=0)
        return self._finish(out)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"prevalence": torch.from_numpy(self.prevalence_), "values": torch.from_numpy(self.values_)}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.prevalence_ = state["prevalence"].numpy()
        self.values_ = state["values"].numpy()


# Reference row (not a generator): best attainable fidelity, worst privacy.
@register_synthesizer("real")
class Real(Synthesizer):
    """"Samples" by drawing training records with replacement (seeded). Every leaderboard reads against it:
    its fidelity is the ceiling, its membership-inference risk the worst case."""

    reference = True  # shown beside the ranking, never ranked (see Independent)
    n_params = 0      # holds the training records, not trained parameters

    def __init__(self) -> None:
        pass

    def fit(self, data, trainer=None) -> "Real":
        refuse_private(self.name, trainer)
        self.records_ = self._prepare_fit(data).copy()
        return self

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        self._check_fitted()
        idx = np.random.default_rng(seed).integers(0, len(self.records_), size=n)
        return self._finish(self.records_[idx])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"records": torch.from_numpy(self.records_)}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.records_ = state["records"].numpy()
