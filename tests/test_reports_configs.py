"""The declared suites (benchmarks/experiment) and launchers (benchmarks/hydra/launcher) compose and name real objects."""
import warnings

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from data import DATASETS
from models import SYNTHESIZERS
from tests.conftest import CONFIG_DIR, REPO

EXPERIMENTS = sorted(p.stem for p in (REPO / "benchmarks" / "experiment").glob("*.yaml"))
# `external` scores samples made by another tool (model.path=<file>): not a generator a suite can sweep.
MODEL_YAMLS = sorted(p.stem for p in (REPO / "benchmarks" / "model").glob("*.yaml") if p.stem != "external")
# Our launcher files share their names with the plugins' schemas, which Hydra 1.3 validates them against (a warning).
SCHEMA_WARNING = "(?s).*is validated against ConfigStore schema with the same name.*"


def hydra_compose(overrides):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SCHEMA_WARNING)
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def sweep(cfg):
    p = cfg.hydra.sweeper.params
    assert set(p) == {"model", "seed"}, f"unexpected sweep keys {set(p)}"
    return str(p.model).split(","), [int(s) for s in str(p.seed).split(",")]


def test_the_four_suites_exist():
    assert EXPERIMENTS == ["leaderboard_diabetes130", "leaderboard_synthetic", "paper_cinc2012", "paper_mimic3"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_names_registered_objects(name):
    cfg = hydra_compose([f"+experiment={name}"])
    models, seeds = sweep(cfg)
    assert cfg.tag == name and seeds == [0, 1, 2]
    assert cfg.data.name in DATASETS, f"{name}: dataset {cfg.data.name!r} is not registered"
    unknown = [m for m in models if m not in MODEL_YAMLS or m not in SYNTHESIZERS]
    assert not unknown, f"{name}: the sweep names generators without a model YAML or registration: {unknown}"
    assert set(MODEL_YAMLS) <= set(models), f"{name}: the sweep misses {sorted(set(MODEL_YAMLS) - set(models))}"
    for m in models:
        one = hydra_compose([f"+experiment={name}", f"model={m}", "seed=2"])
        assert one.model.name == m and m in SYNTHESIZERS, f"{name}: model {m!r} is not registered"
        # the cell lands in runs/<tag>/<data>/<model>/seed_<n>, the layout the reports and the resume skip read
        assert one.hydra.sweep.dir == f"runs/{name}" and one.hydra.sweep.subdir == f"{one.data.name}/{m}/seed_2"


def test_leaderboards_use_the_short_cpu_schedule():
    for name, data in (("leaderboard_synthetic", "synthetic"), ("leaderboard_diabetes130", "diabetes130")):
        cfg = hydra_compose([f"+experiment={name}"])
        default = hydra_compose(["trainer=default"])
        assert cfg.data.name == data and cfg.trainer == default.trainer and cfg.n_samples is None


@pytest.mark.parametrize("name,data,sigma,n", [("paper_mimic3", "mimic3", 0.14, 41000),
                                               ("paper_cinc2012", "physionet2012", 0.03, 4000)])
def test_paper_suites_use_ehrdiff_settings(name, data, sigma, n):
    cfg = hydra_compose([f"+experiment={name}", "model=ehrdiff"])
    assert cfg.data.name == data and cfg.model.sigma_data == sigma and cfg.n_samples == n
    assert cfg.trainer == hydra_compose(["trainer=paper"]).trainer and cfg.trainer.max_steps is None
    assert cfg.model.batch_size == 1024 and cfg.model.epochs == 5000 and cfg.model.lr == 3e-4
    if data == "mimic3":
        assert cfg.data.procedures is True and list(cfg.data.split) == [0.9, 0.05, 0.05]
        npy = hydra_compose([f"+experiment={name}", "data=ehrdiff_npy"])  # the authors' matrices instead
        assert npy.data.name == "ehrdiff_npy" and npy.model.sigma_data == 0.14 and npy.n_samples == 41000
    else:
        assert list(cfg.data.sets) == ["a"]


def test_launchers():
    joblib = hydra_compose(["+experiment=leaderboard_synthetic", "hydra/launcher=joblib"]).hydra.launcher
    assert get_class(joblib._target_).__name__ == "JoblibLauncher" and joblib.n_jobs == 2
    slurm = hydra_compose(["+experiment=paper_mimic3", "hydra/launcher=submitit_slurm",
                           "hydra.launcher.partition=gpu"]).hydra.launcher
    assert get_class(slurm._target_).__name__ == "SlurmLauncher"
    assert (slurm.partition, slurm.gpus_per_node, slurm.timeout_min) == ("gpu", 1, 1440)
    assert slurm.submitit_folder.startswith("runs/paper_mimic3/.submitit")
