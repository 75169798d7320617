"""The declared suites (benchmarks/experiment) and launchers (benchmarks/hydra/launcher) compose and name real objects."""
import warnings

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from ehrbench.data import DATASETS
from ehrbench.models import SYNTHESIZERS
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


DP_SUITES = ("dp_audit_synthetic", "dp_tradeoff_diabetes130", "dp_tradeoff_synthetic", "paper_cinc2012_dp",
             "paper_mimic3_dp")
EPSILON_SWEEPS = ("dp_tradeoff", "dp_audit")  # suites that sweep trainer.dp.epsilon
DP_ONLY = {"dp_independent", "mst"}  # the DP floor and MST: in the DP suites, not in the non-private leaderboards


def sweep(cfg):
    p = cfg.hydra.sweeper.params
    allowed = ({"model", "seed"} | ({"trainer.dp.epsilon"} if cfg.tag.startswith(EPSILON_SWEEPS) else set())
               | ({"trainer.reference_steps"} if cfg.tag.startswith("compute_") else set()))
    assert set(p) == allowed, f"unexpected sweep keys {set(p)}"
    return str(p.model).split(","), [int(s) for s in str(p.seed).split(",")]


# guidance study -> (the leaderboard whose ehrdiff_cond cells it resamples, the model YAML of those cells)
GUIDANCE = {"guidance_diabetes130": ("leaderboard_diabetes130", "ehrdiff_cond"),
            "guidance_physionet2012": ("leaderboard_physionet2012", "ehrdiff_cinc_cond")}


def test_the_four_suites_exist():
    assert EXPERIMENTS == sorted(["compute_diabetes130", "compute_physionet2012", "leaderboard_diabetes130", "leaderboard_physionet2012",
                                  "leaderboard_synthetic",
                                  "paper_cinc2012", "paper_mimic3", *DP_SUITES, *GUIDANCE])


@pytest.mark.parametrize("name", sorted(GUIDANCE))
def test_guidance_studies_resample_their_leaderboards_cells_at_its_settings(name):
    """Each cell resamples the leaderboard's ehrdiff_cond run of the same seed, on the same data, with the same
    metrics and number of samples, so that w = 0 reproduces the leaderboard and only w differs."""
    board, model = GUIDANCE[name]
    cfg = hydra_compose([f"+experiment={name}", "seed=1", "model.guidance_scale=2"])
    ref = hydra_compose([f"+experiment={board}", f"model={model}", "seed=1"])
    assert cfg.tag == name and cfg.model.label == "ehrdiff_cond_w2" and cfg.model.cond_label is True
    assert cfg.resample_from == f"runs/{board}/{cfg.data.name}/{ref.model.label}/seed_1"
    assert cfg.data == ref.data and cfg.metrics == ref.metrics and cfg.n_samples == ref.n_samples
    assert {k: v for k, v in cfg.model.items() if k not in ("label", "guidance_scale")} == {
        k: v for k, v in ref.model.items() if k not in ("label", "guidance_scale")}
    params = cfg.hydra.sweeper.params
    assert set(params) == {"model.guidance_scale", "seed"} and str(params.seed) == "0,1,2"
    assert str(params["model.guidance_scale"]) == "0,1,2"


SEEDS = {"paper_mimic3": [2023, 2024, 2025], "paper_cinc2012": [2027, 2028, 2029],  # the paper's seed first
         "paper_mimic3_dp": [2024, 2025, 2026], "paper_cinc2012_dp": [2023, 2024, 2025], "dp_audit_synthetic": [0, 1]}


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e not in GUIDANCE])
def test_experiment_composes_and_names_registered_objects(name):
    cfg = hydra_compose([f"+experiment={name}"])
    models, seeds = sweep(cfg)
    assert cfg.tag == name and seeds == SEEDS.get(name, [0, 1, 2])
    assert cfg.data.name in DATASETS, f"{name}: dataset {cfg.data.name!r} is not registered"
    unknown = [m for m in models if m not in MODEL_YAMLS]
    assert not unknown, f"{name}: the sweep names generators without a model YAML: {unknown}"
    names, dirs = {}, {}
    for m in models:
        eps = ["trainer.dp.epsilon=3"] if name.startswith(EPSILON_SWEEPS) else []
        budget = ["trainer.reference_steps=52"] if name.startswith("compute_") else []
        one = hydra_compose([f"+experiment={name}", f"model={m}", "seed=2", *eps, *budget])
        assert one.model.name in SYNTHESIZERS, f"{name}: model {m!r} is not registered"
        names[m] = one.model.name
        # the cell lands in runs/<tag>/<data>/<model label or name>/seed_<n>, the layout the reports and the resume
        # skip read (an epsilon sweep: <model name>_eps<epsilon>, so that each epsilon has its own run directory)
        row = one.model.get("label") or one.model.name
        model_dir = f"{one.model.name}_eps3" if eps else f"{row}_r52" if budget else row  # a compute sweep: per budget
        dirs[m] = model_dir
        assert one.hydra.sweep.dir == f"runs/{name}" and one.hydra.sweep.subdir == f"{one.data.name}/{model_dir}/seed_2"
    if name in DP_SUITES:
        assert "dp_independent" in names and "medgan" not in names and one.trainer.dp.epsilon > 0
        return
    everyone = {hydra_compose([f"model={m}"]).model.name for m in MODEL_YAMLS} - DP_ONLY
    assert everyone <= set(names.values()), f"{name}: the sweep misses {sorted(everyone - set(names.values()))}"
    assert len(set(dirs.values())) == len(dirs), f"{name}: two YAMLs would share run dirs (give one a model.label)"


def test_leaderboards_use_equal_compute_and_draw_curves():
    for name, data in (("leaderboard_synthetic", "synthetic"), ("leaderboard_diabetes130", "diabetes130"),
                       ("leaderboard_physionet2012", "physionet2012")):
        cfg = hydra_compose([f"+experiment={name}"])
        default = hydra_compose(["trainer=default"])
        budget = {**default.trainer, "reference_steps": 500}     # one budget for the three: 500 EHRDiff steps' FLOPs
        assert cfg.data.name == data and dict(cfg.trainer) == budget
        assert cfg.n_samples == (None if data == "physionet2012" else 10000)  # a stated subset on the big data
        assert cfg.trainer.budget == "compute" and list(cfg.curve.eval_at) == [0.1, 0.25, 0.5, 1.0]


# The official values (EHRDiff's configs/mimic/train_edm.yaml and configs/cinc/train_edm.yaml).
OFFICIAL = {
    "paper_mimic3": dict(model="ehrdiff", data="mimic3", n_samples=41000, sigma_data=0.14, batch_size=1024,
                         time_dim=384, unit_dims=[1024, 384, 384, 384, 1024], random_fourier_features=False,
                         width=1782, params=7_486_444),
    "paper_cinc2012": dict(model="ehrdiff_cinc", data="physionet2012", n_samples=4000, sigma_data=0.03,
                           batch_size=256, time_dim=128, unit_dims=[512, 768, 1024, 768, 512],
                           random_fourier_features=True, learned_sinusoidal_dim=32, width=115, params=2_978_790),
}
SHARED = dict(lr=3e-4, weight_decay=0.0, epochs=5000, ema_decay=0.999, p_mean=-1.2, p_std=1.2, num_steps=32,
              sigma_min=0.02, sigma_max=80.0, rho=7.0)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_paper_suites_match_the_official_configs(name):
    from ehrbench.models import build_synthesizer

    o = OFFICIAL[name]
    cfg = hydra_compose([f"+experiment={name}", f"model={o['model']}"])
    models, seeds = sweep(cfg)
    assert o["model"] in models and cfg.model.name == "ehrdiff" and cfg.data.name == o["data"]
    assert cfg.n_samples == o["n_samples"] and seeds[0] == SEEDS[name][0]
    assert cfg.trainer == hydra_compose(["trainer=paper"]).trainer and cfg.trainer.max_steps is None
    m = cfg.model
    for k in ("sigma_data", "batch_size", "time_dim", "random_fourier_features"):
        assert m[k] == o[k], (k, m[k], o[k])
    assert list(m.unit_dims) == o["unit_dims"]
    for k, v in SHARED.items():
        assert m[k] == v, (k, m[k], v)
    if o["random_fourier_features"]:
        assert m.learned_sinusoidal_dim == o["learned_sinusoidal_dim"] and m.warmup_fraction == 0.25
    else:
        assert m.warmup_steps == 20000 and m.warmup_fraction is None
    synth = build_synthesizer("ehrdiff", **{k: v for k, v in m.items() if k != "name"})
    synth.init_modules(o["width"])
    assert synth.n_params == o["params"]  # the official network's trainable parameter count
    if name == "paper_mimic3":
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


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.startswith("compute_")])
def test_compute_sweeps_list_increasing_budgets_up_to_the_paper_schedule(name):
    from ehrbench.models.plugins import check_increasing

    cfg = hydra_compose([f"+experiment={name}"])
    budgets = str(cfg.hydra.sweeper.params["trainer.reference_steps"])
    check_increasing("trainer.reference_steps", budgets)
    steps = [int(v) for v in budgets.split(",")]
    assert len(steps) == 6 and cfg.split_from_seed is True
    # 0.3, 1, 3, 10, 30 and 100 % of EHRDiff's schedule: the last budget is the paper schedule in EHRDiff steps
    assert [round(100 * s / steps[-1], 1) for s in steps] == [0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
