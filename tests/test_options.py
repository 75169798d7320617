"""Typed configs: options checked by OmegaConf against schemas built from signatures, the RunConfig schema, every shipped config."""
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest

from ehrbench.models import Trainer, build_synthesizer
from ehrbench.models.config import validate
from ehrbench.models.options import check_options, config_type
from tests.conftest import REPO, compose


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


# The whole configuration is validated before any work: types, names and ranges.
TINY_CFG = ["trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=20"]


@pytest.mark.parametrize("override, expected", [
    ("seed=1.7", "seed must be an integer, got 1.7"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("n_samples=-5", "n_samples must be a positive integer or null, got -5"),
    ("n_samples=abc", "n_samples must be a positive integer or null, got 'abc'"),
    ("trainer.max_steps=abc", "trainer.max_steps must be int | None, got 'abc'"),
    ("trainer.log_every=0", "trainer.log_every must be >= 1, got 0"),
    ("trainer.grad_clip=-1", "trainer.grad_clip must be > 0, got -1"),
    ("+metrics.nope={}", "unknown metric 'nope'; valid choices: attribute_inference_f1, cmd"),
    ("+metrics.mia_auc.bogus=3", "metric 'mia_auc' has no option 'bogus'; valid choices: n, device"),
    ("metrics.mia_auc.n=abc", "metrics.mia_auc.n must be int | None, got 'abc'"),
    ("metrics.mia_auc.n=-1", "metrics.mia_auc.n must be >= 2, got -1"),
    ("metrics.tstr_auroc.n_estimators=0", "metrics.tstr_auroc.n_estimators must be >= 1, got 0"),
    ("model.lr=abc", "model.lr must be float, got 'abc'"),
    ("model.lr=-1", "model.lr must be > 0, got -1"),
    ("model.batch_size=0", "model.batch_size must be >= 1, got 0"),
    ("+model.nope=1", "model 'vae' has no option 'nope'; valid choices: hidden_dim"),
    ("data.n_patients=abc", "data.n_patients must be int, got 'abc'"),
    ("data.n_patients=2", "data.n_patients must be >= 3, got 2"),
    ("trainer.budget=weekly", "unknown trainer.budget 'weekly'; valid choices: paper, fraction, compute, steps"),
    ("trainer.budget=fraction", "trainer.budget=fraction needs trainer.fraction > 0"),
    ("curve.eval_at=[0,0.5]", "curve.eval_at must be null or a list of training-budget shares in (0, 1]"),
    ("curve.eval_at=[0.5,1.5]", "curve.eval_at must be null or a list of training-budget shares in (0, 1]"),
    ("+curve.metrics.nope={}", "unknown metric 'nope'; valid choices"),
])
def test_validation_before_any_work(override, expected):
    with pytest.raises(ValueError) as e:
        validate(compose(["model=vae", *TINY_CFG, override]))
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("model, override, expected", [
    ("ehrdiff", "model.ema_decay=1.5", "model.ema_decay must be in [0, 1), got 1.5"),
    ("medgan", "model.generator_dims=[16,0]", "model.generator_dims must be each entry >= 1, got [16, 0]"),
    ("corgan", "model.warmup_steps=-1", "model.warmup_steps must be >= 0, got -1"),
    ("emrwgan", "model.d_updates=0", "model.d_updates must be >= 1, got 0"),
    ("tabddpm", "model.dropout=1", "model.dropout must be in [0, 1), got 1"),
])
def test_model_ranges_before_any_work(model, override, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        validate(compose([f"model={model}", override]))
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.to_container(compose([f"model={model}", override]), resolve=True)["model"]
    params = {k: v for k, v in model_cfg.items() if k != "name"}
    with pytest.raises(ValueError, match=re.escape(expected.replace("model.", f"{model}.", 1))):
        build_synthesizer(model, **params).fit(np.eye(4, dtype=np.float32))  # the Python API checks in fit too


def test_every_numeric_option_has_a_range():
    """Every int or float option of every built-in generator, the trainer, the metrics and the loaders is in RANGES
    (a new option without a range fails here), apart from those that take any value."""
    import inspect

    from ehrbench.data import DATASETS
    from ehrbench.metrics.registry import METRICS
    from ehrbench.models import SYNTHESIZERS
    from ehrbench.models.options import RANGES

    free = {"seed", "split_seed", "p_mean", "n_jobs", "reference_steps"}
    fns = [c.__init__ for c in SYNTHESIZERS.values()] + [Trainer.__init__] + [m.fn for m in METRICS.values()]
    fns += list(DATASETS.values())
    unranged = {k for fn in fns for k, p in inspect.signature(fn).parameters.items()
                if re.search(r"\b(int|float)\b", str(p.annotation)) and k not in RANGES and k not in free}
    assert not unranged, sorted(unranged)


def test_every_shipped_configuration_validates():
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "benchmarks"), version_base="1.3"):
        for group in ("data", "model", "trainer", "metrics", "experiment"):
            for f in sorted((REPO / "benchmarks" / group).glob("*.yaml")):
                override = f"+experiment={f.stem}" if group == "experiment" else f"{group}={f.stem}"
                cfg = hydra_compose(config_name="config", overrides=[override, "trainer.device=cpu"])
                if cfg.data.name == "matrix":
                    cfg.data.path = "x.csv"
                validate(cfg)
