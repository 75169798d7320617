"""check_synthesizer catches each contract breach (adversarial generators) and passes a correct numpy plugin."""
import numpy as np
import pytest

from ehrbench.models import SYNTHESIZERS, ContractError, Synthesizer, check_data, check_synthesizer


class Prevalence(Synthesizer):
    """A correct plain (numpy) generator: independent Bernoulli codes, continuous columns resampled."""

    def __init__(self, smoothing: float = 0.0) -> None:
        self.smoothing = smoothing

    def fit(self, data, trainer=None):
        X = self._prepare_fit(data)
        self.p_ = (X.sum(0) + self.smoothing) / (len(X) + 2 * self.smoothing)
        self.values_ = X[:, ~self.binary_mask].copy()
        return self

    def sample(self, n, seed=0):
        self._check_fitted()
        rng = np.random.default_rng(seed)
        out = (rng.random((n, self.n_features_)) < self.p_).astype(np.float32)
        if len(self.values_.T):
            out[:, ~self.binary_mask] = self.values_[rng.integers(0, len(self.values_), n)]
        return self._finish(out)


class HalfValues(Prevalence):
    def sample(self, n, seed=0):
        return super().sample(n, seed) * 0.5


class SeedBlind(Prevalence):
    def sample(self, n, seed=0):
        return super().sample(n, 0)


class GlobalRandom(Prevalence):
    def sample(self, n, seed=0):
        return super().sample(n, int(np.random.randint(1 << 30)))


class Float64(Prevalence):
    def sample(self, n, seed=0):
        return super().sample(n, seed).astype(np.float64)


class ForgetsState(Prevalence):
    """Keeps its learned state in an attribute that does not end in '_', so save() misses it."""

    def fit(self, data, trainer=None):
        super().fit(data)
        self.table = self.p_
        del self.p_
        return self

    def sample(self, n, seed=0):
        self.p_ = self.table
        return super().sample(n, seed)


class NoValidation(Prevalence):
    def fit(self, data, trainer=None):
        X = np.asarray(data.train if hasattr(data, "train") else data, dtype=np.float32)
        if X.ndim != 2:
            X = X[:, None]
        self.n_features_, self.kinds_ = X.shape[1], getattr(data, "kinds", ("binary",) * X.shape[1])
        self.columns_ = tuple(map(str, range(X.shape[1])))
        self.p_ = np.nan_to_num(X.mean(0))
        self.values_ = X[:, ~self.binary_mask]
        return self


def test_a_correct_numpy_generator_passes_with_the_default_save(tmp_path):
    report = check_synthesizer(Prevalence, {"smoothing": 1.0})
    assert report["fresh_process"] is True and report["name"] == "prevalence"
    d = check_data()
    assert report["n_params"] == d.n_features + 2 * len(d.train)  # p_ per column + the stored continuous values
    assert "prevalence" not in SYNTHESIZERS  # registered for the check only


@pytest.mark.parametrize("cls, check", [
    (HalfValues, "binary columns"), (SeedBlind, "seed sensitivity"), (GlobalRandom, "seed determinism"),
    (Float64, "sample dtype"), (ForgetsState, "save/load"), (NoValidation, "bad input"),
])
def test_each_breach_is_caught(cls, check):
    with pytest.raises(ContractError, match=f"^{check}"):
        check_synthesizer(cls)


def test_default_save_refuses_state_it_cannot_store(tiny_data, tmp_path):
    m = Prevalence().fit(tiny_data)
    m.lookup_ = {"a": 1}
    with pytest.raises(TypeError, match="learned attribute 'lookup_' is a dict; .*override state_tensors"):
        m.save(tmp_path / "s")


def test_default_n_params_counts_the_learned_numbers(tiny_data):
    m = Prevalence().fit(tiny_data)
    assert m.n_params == m.p_.size + m.values_.size == tiny_data.n_features
