"""Typed configs: options checked by OmegaConf against schemas built from signatures, the run's RunConfig schema."""
from typing import Any, Dict, List, Optional, Sequence

import pytest

from ehrbench.models import Trainer
from ehrbench.models.config import validate
from ehrbench.models.options import check_options, config_type
from tests.conftest import compose


@pytest.mark.parametrize("annotation, expected", [
    (int, int), (int | None, Optional[int]), (float | int, float), (Sequence[str], List[str]),
    (tuple[int, ...], List[int]), (list[float] | None, Optional[List[float]]), (dict, Dict[str, Any]),
    (bool | str, Any), (str | None, Optional[str]), (object, Any),
])
def test_annotations_become_omegaconf_types(annotation, expected):
    assert config_type(annotation) == expected


def f(n: int = 2, lr: float = 0.1, generator_dims: Sequence[int] = (4,), name: str | None = None, how: bool | str = "auto"):
    pass


@pytest.mark.parametrize("options, expected", [
    ({"n": "x"}, "f.n must be int, got 'x'"),
    ({"n": 1.5}, "f.n must be int, got 1.5"),
    ({"n": True}, "f.n must be int, got True"),
    ({"lr": "fast"}, "f.lr must be float, got 'fast'"),
    ({"generator_dims": [4, "a"]}, "f.generator_dims must be Sequence[int], got [4, 'a']"),
    ({"generator_dims": "4"}, "f.generator_dims must be Sequence[int], got '4'"),
    ({"generator_dims": [4, 0]}, "f.generator_dims must be each entry >= 1, got [4, 0]"),
    ({"n": 1}, "f.n must be >= 2, got 1"),
    ({"nope": 1}, "function f has no option 'nope'; valid choices: n, lr, generator_dims, name, how"),
])
def test_bad_options_are_one_sentence(options, expected):
    with pytest.raises(ValueError) as e:
        check_options("function f", "f", f, options)
    assert str(e.value) == expected


def test_good_options_pass_unchanged():
    opts = {"n": 3, "lr": 1, "generator_dims": (8, 8), "name": None, "how": True}
    check_options("function f", "f", f, opts)  # an int for a float, a tuple for a sequence, Any for a union
    assert opts == {"n": 3, "lr": 1, "generator_dims": (8, 8), "name": None, "how": True}


@pytest.mark.parametrize("override, expected", [
    ("+nope=1", "the configuration has no key 'nope'; valid choices: data, model, trainer, metrics, seed"),
    ("+curve.bogus=1", "the configuration has no key 'curve.bogus'; valid choices: eval_at, n_samples, metrics"),
    ("rerun=maybe", "rerun must be true or false, got 'maybe'"),
    ("canaries=1", "canaries must be 0 (no audit) or an integer of at least 2, got 1"),
    ("curve.n_samples=x", "curve.n_samples must be a positive integer, got 'x'"),
    ("export.format=7", None),  # a number is a string to the schema; the format is checked only with export.dir
    ("paths.runs=[1]", "paths.runs must be a folder, got [1]"),
])
def test_run_config_schema(override, expected):
    cfg = compose(["model=vae", override])
    if expected is None:
        validate(cfg)
        return
    with pytest.raises(ValueError) as e:
        validate(cfg)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_the_trainer_and_a_configuration_give_the_same_sentence():
    """One check (models/trainer.py:check_trainer) serves Trainer() and validate()."""
    with pytest.raises(ValueError) as direct:
        Trainer(device="cpu", log_every=0)
    with pytest.raises(ValueError) as configured:
        validate(compose(["trainer.log_every=0"]))
    assert str(direct.value) == str(configured.value) == "trainer.log_every must be >= 1, got 0"
