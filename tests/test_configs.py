"""Every config in benchmarks/ composes and names a registered object."""

import pytest

from ehrbench.data import DATASETS
from ehrbench.metrics import METRICS
from ehrbench.models import SYNTHESIZERS, Trainer, build_synthesizer
from tests.conftest import REPO, compose

GROUPS = {g: sorted(p.stem for p in (REPO / "benchmarks" / g).glob("*.yaml")) for g in ("data", "model", "trainer",
                                                                                          "metrics")}


def test_default_config():
    cfg = compose()
    assert (cfg.data.name, cfg.model.name) == ("synthetic", "ehrdiff")
    assert cfg.model.sigma_data == 0.14 and list(cfg.model.unit_dims) == [1024, 384, 384, 384, 1024]


@pytest.mark.parametrize("name", GROUPS["data"])
def test_data_configs(name):
    cfg = compose([f"data={name}"])
    assert cfg.data.name == name and name in DATASETS


@pytest.mark.parametrize("name", GROUPS["model"])
def test_model_configs(name):
    cfg = compose([f"model={name}"])
    # a YAML is named after its generator, or is a variant "<generator>_<setting>" (ehrdiff_cinc)
    assert cfg.model.name in SYNTHESIZERS and (name == cfg.model.name or name.startswith(cfg.model.name + "_"))
    params = {k: v for k, v in cfg.model.items() if k != "name" and (k != "label" or name == "external")}  # label: display
    assert build_synthesizer(cfg.model.name, **params).get_params().keys() >= params.keys()


@pytest.mark.parametrize("name", GROUPS["trainer"])
def test_trainer_configs(name):
    cfg = compose([f"trainer={name}"])
    if cfg.trainer.device == "cuda":
        pytest.importorskip("torch").cuda.is_available() or pytest.skip("needs CUDA")
    Trainer(**cfg.trainer)


@pytest.mark.parametrize("name", GROUPS["metrics"])
def test_metric_configs(name):
    cfg = compose([f"metrics={name}"])
    assert cfg.metrics and set(cfg.metrics) <= set(METRICS)


def test_data_sigma_hint_reaches_ehrdiff():
    cfg = compose(["+data.sigma_data=0.03"])
    assert cfg.model.sigma_data == 0.03
