"""Registry-driven contract tests: every registered synthesizer fits, samples exact 0/1, is seeded, round-trips."""
import numpy as np
import pytest
import torch

from models import SYNTHESIZERS, Synthesizer, Trainer, build_synthesizer
from tests.conftest import TINY_PARAMS

NAMES = sorted(n for n in SYNTHESIZERS if n != "external")


def fitted(name, data, tmp_path=None):
    trainer = Trainer(device="cpu", max_steps=6, log_every=2, checkpoint_every=3, progress=False, seed=0,
                      workdir=tmp_path)
    return build_synthesizer(name, **TINY_PARAMS.get(name, {})).fit(data, trainer)


@pytest.mark.parametrize("name", NAMES)
def test_fit_sample_exact_binary(name, tiny_data):
    m = fitted(name, tiny_data)
    S = m.sample(123, seed=0)
    assert S.shape == (123, tiny_data.n_features) and S.dtype == np.float32
    assert set(np.unique(S)) <= {0.0, 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_seed_determinism(name, tiny_data):
    a, b = fitted(name, tiny_data), fitted(name, tiny_data)
    for k, v in a.state_tensors().items():
        assert torch.equal(v, b.state_tensors()[k]), k
    assert np.array_equal(a.sample(200, seed=5), b.sample(200, seed=5))
    assert not np.array_equal(a.sample(200, seed=5), a.sample(200, seed=6))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tiny_data, tmp_path):
    m = fitted(name, tiny_data)
    m.save(tmp_path / "s")
    back = Synthesizer.load(tmp_path / "s")
    assert type(back) is type(m) and back.get_params() == m.get_params()
    assert np.array_equal(back.sample(150, seed=2), m.sample(150, seed=2))


@pytest.mark.parametrize("name", NAMES)
def test_fit_rejects_bad_input(name):
    m = build_synthesizer(name, **TINY_PARAMS.get(name, {}))
    X = np.zeros((20, 4), dtype=np.float32)
    X[0, 1] = 0.5
    with pytest.raises(ValueError, match="non-binary value 0.5 in row 0"):
        m.fit(X)
    X[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite value"):
        m.fit(X)
    with pytest.raises(ValueError, match="2-D"):
        m.fit(np.zeros(20, dtype=np.float32))


def test_unknown_names_list_valid_choices():
    with pytest.raises(KeyError, match="unknown model 'nope'; valid choices: .*ehrdiff.*independent"):
        build_synthesizer("nope")
    with pytest.raises(TypeError, match="has no hyperparameter 'widht'; valid choices: sigma_data"):
        build_synthesizer("ehrdiff", widht=3)


def test_load_of_another_model_is_a_clear_error(tiny_data, tmp_path):
    from models.ehrdiff import EHRDiff

    fitted("independent", tiny_data).save(tmp_path / "ind")
    with pytest.raises(TypeError, match="holds a 'independent' synthesizer, not 'ehrdiff'"):
        EHRDiff.load(tmp_path / "ind")
    with pytest.raises(FileNotFoundError, match="not a saved synthesizer"):
        Synthesizer.load(tmp_path / "missing")


def test_independent_matches_training_prevalence(tiny_data):
    m = build_synthesizer("independent").fit(tiny_data)
    S = m.sample(20000, seed=0)
    assert np.abs(S.mean(0) - tiny_data.train.mean(0)).max() < 0.02


def test_independent_continuous_columns_use_empirical_marginal():
    rng = np.random.default_rng(0)
    X = np.c_[rng.random((500, 1)) < 0.3, rng.gamma(2.0, size=(500, 1))].astype(np.float32)
    from data import EHRData

    m = build_synthesizer("independent")
    d = EHRData(X, X[:10], X[:10], ("c", "v"), ("binary", "continuous"), name="t")
    S = m.fit(d).sample(4000, seed=1)
    assert set(np.unique(S[:, 1])) <= set(np.unique(X[:, 1]))   # values come from the training marginal
    assert abs(np.median(S[:, 1]) - np.median(X[:, 1])) < 0.15


def test_real_resamples_training_records(tiny_data):
    S = build_synthesizer("real").fit(tiny_data).sample(300, seed=0)
    train = {r.tobytes() for r in tiny_data.train}
    assert all(r.tobytes() in train for r in S)
