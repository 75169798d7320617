"""Registry-driven contract tests: every registered synthesizer fits, samples exact 0/1, is seeded, round-trips."""
import numpy as np
import pytest
import torch

from ehrbench.models import SYNTHESIZERS, Synthesizer, Trainer, build_synthesizer, check_synthesizer, load_entry_points
from tests.conftest import TINY_PARAMS, skip_unavailable

load_entry_points()  # generators installed in the environment (ehrbench.synthesizers entry points) are tested too
NAMES = sorted(n for n in SYNTHESIZERS if n != "external")


def fitted(name, data, tmp_path=None):
    trainer = Trainer(device="cpu", max_steps=6, log_every=2, checkpoint_every=3, progress=False, seed=0,
                      workdir=tmp_path)
    return build_synthesizer(name, **TINY_PARAMS.get(name, {})).fit(data, trainer)


@pytest.mark.parametrize("name", NAMES)
def test_check_synthesizer(name):
    """The public contract check (shape, dtype, exact 0/1, continuous range, seeds, save/load in a fresh process,
    bad input, n_params) for every registered generator, installed plugins included (one whose optional extra is
    missing is skipped with the sentence naming its install command)."""
    skip_unavailable(name)
    report = check_synthesizer(name, TINY_PARAMS.get(name))
    assert report["fresh_process"] and len(report["checks"]) >= 10


@pytest.mark.parametrize("name", NAMES)
def test_seed_determinism_of_the_weights(name, tiny_data):
    skip_unavailable(name)
    a, b = fitted(name, tiny_data), fitted(name, tiny_data)
    for k, v in a.state_tensors().items():
        assert torch.equal(v, b.state_tensors()[k]), k


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
    from ehrbench.models.ehrdiff import EHRDiff

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
    from ehrbench.data import EHRData

    m = build_synthesizer("independent")
    d = EHRData(X, X[:10], X[:10], ("c", "v"), ("binary", "continuous"), name="t")
    S = m.fit(d).sample(4000, seed=1)
    assert set(np.unique(S[:, 1])) <= set(np.unique(X[:, 1]))   # values come from the training marginal
    assert abs(np.median(S[:, 1]) - np.median(X[:, 1])) < 0.15


def test_real_resamples_training_records(tiny_data):
    S = build_synthesizer("real").fit(tiny_data).sample(300, seed=0)
    train = {r.tobytes() for r in tiny_data.train}
    assert all(r.tobytes() in train for r in S)
