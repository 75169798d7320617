"""Every benchmarks/data/*.yaml composes, names a registered loader, and passes only that loader's arguments."""
import inspect
from pathlib import Path

import pytest

from conftest import CONFIG_DIR, compose
from ehrbench.data import DATASETS

NAMES = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))


@pytest.mark.parametrize("name", NAMES)
def test_data_yaml_matches_its_loader(name, monkeypatch):
    monkeypatch.setenv("EHRBENCH_DATA", "/data")
    cfg = compose([f"data={name}"]).data
    assert cfg.name == name and name in DATASETS
    params = inspect.signature(DATASETS[name]).parameters
    kwargs = [k for k in cfg if k not in ("name", "sigma_data")]
    assert set(kwargs) <= set(params), f"{name}.yaml passes unknown loader arguments {set(kwargs) - set(params)}"
    assert list(cfg.split) == [0.8, 0.1, 0.1] and cfg.split_seed == 0
    if "path" in cfg and cfg.path is not None:
        assert cfg.path == f"/data/{name}" or name in ("ehrdiff_npy",)


def test_sigma_data_hints():
    assert compose(["data=physionet2012"]).data.sigma_data == 0.03          # EHRDiff's CinC value
    assert compose(["data=physionet2012"]).model.sigma_data == 0.03
    assert compose(["data=mimic3"]).model.sigma_data == 0.14
