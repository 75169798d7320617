"""Hydra entry point: one run = (data, model, seed) -> fit -> sample -> evaluate -> the run directory.

Before anything in the run directory changes, the whole configuration is checked (validate) and the directory's
record is read: a complete run with the same settings is skipped while its outputs are as recorded, one with other
settings refused (rerun=true replaces it). Then run.lock is taken, `.hydra/` written and the run executed; every
output is written under a temporary name and renamed. A user error is one sentence on stderr and exit code 1
(HYDRA_FULL_ERROR=1 shows the traceback; in a sweep each failing cell prints its sentence and Hydra reports the
first at the end); Ctrl-C or SIGTERM prints one line and leaves status "interrupted".
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


def _bind_ehrbench(root: Path) -> None:
    """Import `ehrbench.data`, `ehrbench.models`, ... from the folders next to this file (an installed copy
    or an uninstalled clone alike), and run without the repository root on sys.path, so that a plugin or
    project with its own top-level `models` or `data` package is not shadowed by ours (docs/plugins.md)."""
    if "ehrbench" not in sys.modules and (root / "models" / "__init__.py").exists():  # in a clone, not a wheel
        import importlib.machinery
        import importlib.util

        spec = importlib.machinery.ModuleSpec("ehrbench", None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        sys.modules["ehrbench"] = importlib.util.module_from_spec(spec)
    if __name__ == "__main__" and sys.path and Path(sys.path[0] or ".").resolve() == root:
        sys.path.pop(0)


_bind_ehrbench(Path(__file__).resolve().parent)

import hydra  # noqa: E402
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import ehrbench.data as data_pkg
import ehrbench.metrics as metrics_pkg
import ehrbench.models as models_pkg
from ehrbench.metrics import canary
from ehrbench.models import distributed
from ehrbench.data.cache import atomic_path
from ehrbench.metrics.registry import get_metric
from ehrbench.models.plugins import prepare_argv  # noqa: F401 (the command line, before Hydra)
from ehrbench.models.check import check_options
from ehrbench.models.resample import FIT_KEYS, load_trained
from ehrbench.models.budget import check_budget
from ehrbench.models.base import one_sentence
from ehrbench.models.rundir import (RESERVED_DATA_KEYS, RunDirError, RunLock, clear_outputs, decide, describe_changes,
                                    missing_outputs, output_hashes, previous_run, remove_empty, settings, settings_diff,
                                    settings_hash)

REPO = Path(__file__).resolve().parent
# ${ehrbench_repo:} in configs: this checkout's root (the Ray launcher puts it on its workers' PYTHONPATH)
OmegaConf.register_new_resolver("ehrbench_repo", lambda: str(REPO), replace=True)


def bind_worker() -> None:
    """Ray's worker_process_setup_hook (benchmarks/hydra/launcher/ray.yaml): importing this module has bound
    `ehrbench` to this checkout before the worker unpickles a sweep cell."""


# benchmarks/hydra/launcher/{joblib,submitit_slurm}.yaml share the plugins' names on purpose (so that
# `hydra/launcher=joblib` picks ours); Hydra 1.3 warns about that harmless overlay.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema")
# relative file paths in these keys are taken from the repository root (README "Datasets"), not the current folder
PATH_KEYS = {"data": ("path", "columns_file"), "model": ("path",)}
# errors caused by the input (configuration, files, data, divergence): one sentence, no traceback
USER_ERRORS = (ValueError, KeyError, OSError, RunDirError, models_pkg.TrainingDiverged)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, `timeout`, `kill`): handled as Ctrl-C, exit code 143."""


def on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class UserError(CompactHydraException):
    """One sentence that Hydra prints without a traceback (exit code 1); the cause stays chained."""


def provenance() -> dict:
    """Versions and git commit of this checkout (recorded in every run and result row)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    from importlib.metadata import distributions

    # ehrbench and the libraries results depend on beyond torch and numpy (metrics, DP accountant, MST), if installed
    libs = {(d.metadata["Name"] or "").lower(): d.version for d in distributions()}
    libs = {k: libs[k] for k in ("ehrbench", "scipy", "scikit-learn", "lightgbm", "opacus", "mbi", "jax") if k in libs}
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                         "ehrbench": "unknown", **libs},
            "torch_threads": torch.get_num_threads(),  # CPU float reductions, and so a CPU run's numbers, depend on it
            "git_commit": git("rev-parse", "HEAD") or "unknown", "git_dirty": bool(git("status", "--porcelain"))}


def write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str, allow_nan=True))


def from_repo(section: dict, keys: tuple[str, ...]) -> dict:
    """A copy of a config section whose relative paths in `keys` are made absolute against the repository root."""
    out = dict(section)
    for k in keys:
        if isinstance(out.get(k), str) and out[k] and not Path(out[k]).expanduser().is_absolute():
            out[k] = str(REPO / out[k])
    return out


def load_data(dname: str, data_kw: dict) -> data_pkg.EHRData:
    """load_dataset; a failed download fallback also names the local path that was tried."""
    try:
        return data_pkg.load_dataset(dname, **data_kw)
    except OSError as e:
        path = data_kw.get("path")
        if data_kw.get("download") and isinstance(path, str) and not Path(path).exists():
            raise FileNotFoundError(f"{dname}: nothing at data.path {path} (relative paths start at the repository "
                                    f"root) and the download fallback failed: {one_sentence(e)}") from e
        raise


def prepare(config: dict, run_dir: Path) -> tuple[data_pkg.EHRData, Any, Any, Any]:
    """The data, the audit's canaries (None without one), the untrained generator and its Trainer of one cell (every
    torchrun rank builds the same)."""
    key, seed = config["model"]["name"], int(config["seed"])
    torch.manual_seed(seed)
    data_kw = {k: v for k, v in from_repo(config["data"], PATH_KEYS["data"]).items() if k not in RESERVED_DATA_KEYS}
    data = load_data(config["data"]["name"], data_kw)
    model_kw = {k: v for k, v in from_repo(config["model"], PATH_KEYS["model"]).items() if k != "name"
                and (k != "label" or "label" in inspect.signature(models_pkg.get_synthesizer(key)).parameters)}
    synth = models_pkg.build_synthesizer(key, **model_kw)
    canaries = canary.make_canaries(data, config["canaries"], seed) if config.get("canaries") else None
    return data, canaries, synth, models_pkg.Trainer(**config["trainer"], seed=seed, workdir=run_dir)


def follow(cfg: DictConfig, run_dir: Path) -> None:
    """A torchrun rank above 0: once rank 0 has checked and locked the run directory, train in step with it
    (models/distributed.py) and return; rank 0 alone writes the directory, samples and scores."""
    if not distributed.decide():  # rank 0 skipped, refused or failed before training
        return
    data, canaries, synth, trainer = prepare(validate(cfg), run_dir)
    if isinstance(synth, models_pkg.TorchSynthesizer):  # others train without the Trainer: nothing to share
        synth.fit(canary.with_canaries(data, *canaries) if canaries else data, trainer)


def run(cfg: DictConfig, run_dir: Path, previous: dict | None = None) -> dict:
    """Execute one benchmark cell into run_dir and return run.json's content. `previous`: the record of this
    directory's complete run whose sample or scores were lost; its saved synthesizer/ is sampled and scored again."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    settings_key = settings_hash(config)
    dname, seed = cfg.data.name, int(cfg.seed)
    key = cfg.model.name
    mname = config["model"].get("label") or key  # an external tool's display name; otherwise the registry name
    info = {"run_id": f"{cfg.tag}/{dname}/{mname}/seed_{seed}", "tag": cfg.tag, "data": dname, "model": mname,
            "generator": key, "seed": seed, "status": "running", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config, "config_hash": config_hash, "settings_hash": settings_key, "epsilon": None, **provenance()}
    run_json = run_dir / "run.json"
    write_json(run_json, info)
    try:
        info["peak_memory_scope"] = models_pkg.device.reset_peak_memory()  # this cell only, not the worker's past
        data, canaries, synth, trainer = prepare(config, run_dir)
        fit_data = canary.with_canaries(data, *canaries) if canaries else data  # the audit's training data
        curve = config.get("curve") or {}
        scored = {**(curve.get("metrics") or {} if curve.get("eval_at") else {}), **(config["metrics"] or {})}
        metrics_pkg.check_split(data, list(scored))  # before any training
        info["reference"] = bool(getattr(synth, "reference", False))  # references are shown apart, unranked
        info["provider"] = models_pkg.provider(type(synth))  # module, distribution and version of the generator
        info.update(device=str(trainer.device), world_size=distributed.world_size(), n_train=len(data.train),
                    n_features=data.n_features)

        if config.get("resample_from"):  # a trained run's generator with new sampling settings, no training
            synth, fitted = load_trained(config["resample_from"], config)
            info.update(fitted)  # the source's training: fit seconds, budget, steps, epsilon, and where it came from
        elif previous is not None:  # this directory's own trained generator: no second training
            synth = models_pkg.Synthesizer.load(run_dir / "synthesizer")
            info.update({k: previous[k] for k in (*FIT_KEYS, "train_seconds") if k in previous})
        else:
            if curve.get("eval_at"):
                trainer.eval_at = [float(q) for q in curve["eval_at"]]
                trainer.on_eval = curve_writer(run_dir / "curve.jsonl", data, curve, seed, {
                    "run_id": info["run_id"], "tag": cfg.tag, "data": dname, "model": mname, "seed": seed})
            t0 = time.perf_counter()
            synth.fit(fit_data, trainer)
            info["fit_seconds"] = time.perf_counter() - t0 + trainer.resumed_seconds_  # an interrupted fit's too
            info["n_params"] = synth.n_params
            info["steps_per_second"] = trainer.steps_per_second
            info.update(trainer.budget_report())  # budget mode, steps and FLOPs per phase (none if untrained)
            synth.save(run_dir / "synthesizer")

        n = int(cfg.n_samples) if cfg.n_samples is not None else len(data.train)
        t0 = time.perf_counter()
        S = synth.sample(n, seed=seed)
        info["sample_seconds"] = time.perf_counter() - t0
        info["n_samples"] = len(S)
        with atomic_path(run_dir / "synthetic.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, X=S, columns=np.asarray(data.columns))

        t0 = time.perf_counter()
        rows = metrics_pkg.evaluate(data, S, config["metrics"] or {}, seed=seed)
        if canaries:  # the privacy audit; delta: the run's, or 1e-5 for a run that is not private
            delta = float(((config["trainer"] or {}).get("dp") or {}).get("delta") or 1e-5)
            rows.append(canary.audit(data, *canaries, synth, S, delta=delta, seed=seed))
        info["evaluate_seconds"] = time.perf_counter() - t0
        common = {"run_id": info["run_id"], "tag": cfg.tag, "data": dname, "model": mname, "seed": seed}
        extra = {"git_commit": info["git_commit"], "device": info["device"], "config_hash": config_hash,
                 "settings_hash": settings_key, "epsilon": info.get("epsilon")}  # spent epsilon; None = not private
        with atomic_path(run_dir / "results.jsonl") as tmp:
            tmp.write_text("".join(json.dumps({**common, **r, **extra}) + "\n" for r in rows))
        info["peak_memory_mb"] = models_pkg.device.peak_memory_mb(trainer.device)
        info["outputs"] = output_hashes(run_dir)  # "complete" later means these files, unchanged
        info["status"] = "ok"
        info["n_metric_errors"] = sum(r["status"] != "ok" for r in rows)
        return info
    except KeyboardInterrupt:
        info["status"] = "interrupted"
        raise
    except BaseException as e:
        info["status"] = f"error: {type(e).__name__}: {one_sentence(e) if str(e).strip() else ''}"
        info["traceback"] = traceback.format_exc()
        raise
    finally:
        info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            write_json(run_json, info)
        except OSError as e:
            if info["status"] == "ok":
                raise
            print(f"warning: {one_sentence(e)}", file=sys.stderr)  # the run's own error follows
        ckpt = run_dir / "checkpoint.pt"
        if info["status"] == "ok" and ckpt.exists():
            ckpt.unlink()  # the trained state lives in synthesizer/; the checkpoint only serves resumption


def print_summary(info: dict, run_dir: Path) -> None:
    rows = [json.loads(l) for l in (run_dir / "results.jsonl").read_text().splitlines()]
    width = max([len(r["metric"]) for r in rows] + [10])
    print(f"\n{info['model']} on {info['data']} (seed {info['seed']}): fit {info['fit_seconds']:.1f} s, "
          f"sample {info['sample_seconds']:.1f} s, {info['n_params']:,} parameters, device {info['device']}")
    for r in rows:
        value = f"{r['value']:.4f}" if r["status"] == "ok" else r["status"]
        print(f"  {r['metric']:<{width}}  {r['goal']:<4}  {value}")
    print(f"run directory: {run_dir}")


def validate(cfg: DictConfig) -> dict:
    """Check the whole configuration (types, ranges, names and options of data, model, trainer, metrics) before
    any work; returns it resolved. Each problem is a ValueError of one sentence."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ValueError(f"the configuration does not resolve: {one_sentence(e)}") from None
    seed, n = config.get("seed"), config.get("n_samples")
    if type(seed) is not int:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if n is not None and (type(n) is not int or n < 1):
        raise ValueError(f"n_samples must be a positive integer or null, got {n!r}")
    if type(c := config.get("canaries", 0)) is not int or c == 1 or c < 0:
        raise ValueError(f"canaries must be 0 (no audit) or an integer of at least 2, got {config.get('canaries')!r}")
    if type(config.get("rerun")) is not bool:
        raise ValueError(f"rerun must be true or false, got {config.get('rerun')!r}")
    if not isinstance(config.get("tag"), str) or not re.fullmatch(r"[\w.+-]+", config["tag"]):
        raise ValueError(f"tag must be a non-empty name of letters, digits, '.', '+', '-' or '_' (in a YAML file, quote "
                         f"one that YAML reads as a number or boolean: tag: 'inf'), got {config.get('tag')!r}")
    dcfg, mcfg, tcfg = (config.get(k) if isinstance(config.get(k), dict) else {} for k in ("data", "model", "trainer"))
    dname, mname = dcfg.get("name"), mcfg.get("name")
    if dname not in data_pkg.DATASETS:
        raise ValueError(f"unknown dataset {dname!r}; valid choices: {', '.join(sorted(data_pkg.DATASETS))}")
    check_options(f"dataset '{dname}'", "data", data_pkg.DATASETS[dname],
                  {k: v for k, v in dcfg.items() if k not in RESERVED_DATA_KEYS})
    try:
        cls = models_pkg.get_synthesizer(str(mname))
    except KeyError as e:
        raise ValueError(one_sentence(e)) from None
    # model.label: a display name (the model column and the run directory) that any model may carry
    check_options(f"model '{mname}'", "model", cls.__init__, {k: v for k, v in mcfg.items() if k not in ("name", "label")})
    missing = getattr(cls, "unavailable", lambda: None)()  # an optional dependency (mst: the dp extra)
    if missing:
        raise ValueError(missing)
    label = mcfg.get("label")
    if label is not None and (not isinstance(label, str) or not re.fullmatch(r"[\w.+-]+", label)):
        raise ValueError(f"model.label must be a name of letters, digits, '.', '+', '-' or '_', got {label!r}")
    if label is not None and label != mname and label in models_pkg.SYNTHESIZERS:
        raise ValueError(f"model.label {label!r} is the name of a registered generator; give the model "
                         "another display name")
    source = config.get("resample_from")
    if source is not None and (not isinstance(source, str) or distributed.world_size() > 1
                               or (config.get("curve") or {}).get("eval_at")):
        raise ValueError(f"resample_from must be a run directory (a string), without torchrun or curve.eval_at "
                         f"(it trains nothing), got {source!r}")
    export = config.get("export") or {}
    if export.get("dir") is not None and export.get("format") not in data_pkg.export.FORMATS:
        raise ValueError(f"unknown export.format {export.get('format')!r}; valid choices: "
                         f"{', '.join(data_pkg.export.FORMATS)}")
    check_options("trainer", "trainer", models_pkg.Trainer.__init__, tcfg, skip=("seed", "workdir"))
    budget = tcfg.get("budget") or ("steps" if tcfg.get("max_steps") is not None else "paper")
    check_budget(budget, tcfg.get("fraction"), tcfg.get("flops"), tcfg.get("max_steps"), tcfg.get("reference"),
                 tcfg.get("reference_steps"))
    if budget == "compute" and tcfg.get("flops") is None and tcfg.get("reference") not in models_pkg.SYNTHESIZERS:
        raise ValueError(f"unknown trainer.reference {tcfg.get('reference')!r}; valid choices: "
                         f"{', '.join(sorted(models_pkg.SYNTHESIZERS))}")
    precision = tcfg.get("precision", "fp32")
    if precision == "auto":  # as the trainer resolves it: bf16 autocast on CUDA, fp32 elsewhere
        precision = "bf16" if tcfg.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available() else "fp32"
    if models_pkg.dp.dp_config(tcfg.get("dp"), precision) is not None and not (
            issubclass(cls, models_pkg.TorchSynthesizer) or getattr(cls, "supports_dp", False)):
        raise models_pkg.dp.not_private_error(mname)
    if tcfg.get("precision", "fp32") not in models_pkg.step.PRECISIONS:
        raise ValueError(f"unknown trainer.precision {tcfg.get('precision')!r}; valid choices: "
                         f"{', '.join(models_pkg.step.PRECISIONS)}")
    models_pkg.step.resolve_compile(tcfg.get("compile", False), torch.device("cpu"))  # one sentence if unknown
    if tcfg.get("progress", "auto") not in ("auto", True, False):
        raise ValueError(f"trainer.progress must be auto, true or false, got {tcfg.get('progress')!r}")
    try:
        models_pkg.resolve_device(str(tcfg.get("device", "auto")))
    except RuntimeError as e:
        raise ValueError(one_sentence(e)) from None
    curve = config.get("curve") or {}
    eval_at = curve.get("eval_at")
    if eval_at is not None and (not isinstance(eval_at, list) or not eval_at or not all(
            isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q <= 1 for q in eval_at)):
        raise ValueError(f"curve.eval_at must be null or a list of training-budget shares in (0, 1], e.g. "
                         f"[0.1, 0.25, 0.5, 1.0]; got {eval_at!r}")
    if eval_at and (type(curve.get("n_samples")) is not int or curve["n_samples"] < 1):
        raise ValueError(f"curve.n_samples must be a positive integer, got {curve.get('n_samples')!r}")
    metrics = config.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must map metric names to their options, got {metrics!r}")
    if eval_at or curve.get("metrics") is not None:
        if not isinstance(curve.get("metrics"), dict) or not curve["metrics"]:
            raise ValueError(f"curve.metrics must map metric names to their options, got {curve.get('metrics')!r}")
        check_metric_map(curve["metrics"], "curve.metrics")
    check_metric_map(metrics, "metrics")
    return config


def check_metric_map(metrics: dict, where: str) -> None:
    """Every name registered, every option a keyword of the metric (one sentence otherwise)."""
    for name, kw in metrics.items():
        try:
            spec = get_metric(name)
        except KeyError as e:
            raise ValueError(one_sentence(e)) from None
        if kw is not None and not isinstance(kw, dict):
            raise ValueError(f"{where}.{name} must be a mapping of options or {{}}, got {kw!r}")
        check_options(f"metric '{name}'", f"{where}.{name}", spec.fn, kw or {}, skip=("data", "synth", "seed"))


def curve_writer(path: Path, data: Any, curve: dict, seed: int, common: dict) -> Callable[[Any, dict], None]:
    """on_eval for the Trainer: draw curve.n_samples records from the weights as they are (EMA where the method
    keeps one), score curve.metrics and rewrite curve.jsonl with this point's rows (a point replayed after a
    resume replaces its earlier rows, so a resumed run's curve equals an uninterrupted one's)."""
    def on_eval(synth: Any, point: dict) -> None:
        S = synth.sample(int(curve.get("n_samples") or 2000), seed=seed)
        rows = metrics_pkg.evaluate(data, S, curve.get("metrics") or {}, seed=seed)
        old = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        keep = [r for r in old if r.get("fraction") != point["fraction"]]
        new = [{**common, **point, **r} for r in rows]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep + new))
    return on_eval


def save_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """Write .hydra/{config,hydra,overrides}.yaml (as Hydra would; hydra.output_subdir is null so that a refused
    or skipped run never rewrites them), each under a temporary name."""
    hc = HydraConfig.instance().cfg
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hc), ("overrides.yaml", hc.hydra.overrides.task)):
        with atomic_path(run_dir / ".hydra" / name) as tmp:
            OmegaConf.save(node, tmp)


def execute(cfg: DictConfig, run_dir: Path, go: Callable[[bool], Any] = lambda ok: ok) -> None:
    """Validate, decide from the directory's record (skip / refuse / run), lock, then run and print the summary;
    `go` hears whether the run goes ahead (under torchrun it tells the other ranks)."""
    config = validate(cfg)

    def verdict(first: bool) -> tuple[str, Any]:
        prev = previous_run(run_dir)
        if prev.note and first:
            print(f"warning: {prev.note}", file=sys.stderr)
        same = None if prev.config is None else settings_hash(prev.config) == settings_hash(config)
        changed = describe_changes(settings_diff(settings(prev.config), settings(config))) if same is False else ""
        return decide(run_dir, prev, same, changed, bool(cfg.rerun)), prev

    skip = f"skipping {run_dir}: already complete (pass rerun=true to run it again)"
    if verdict(True)[0] == "skip":  # read-only: a finished directory is never touched (not even when read-only)
        print(skip)
        go(False)
        return
    with RunLock(run_dir) as lock:
        if lock.stale_pid:
            print(f"warning: took over {lock.path} from process {lock.stale_pid}, which is no longer running",
                  file=sys.stderr)
        mode, prev = verdict(False)
        if mode == "skip":  # another process finished it while we waited
            print(skip)
            go(False)
            return
        if mode in ("resample", "retrain"):
            lost = ", ".join(missing_outputs(run_dir, prev.record))
            print(f"{run_dir} holds a complete run but {lost}: " + ("sampling and scoring its saved synthesizer/ "
                  "again" if mode == "resample" else "running it again from the start"), file=sys.stderr)
        if cfg.rerun or mode == "retrain":
            clear_outputs(run_dir)
        save_hydra_files(run_dir, cfg)
        go(mode != "resample")
        info = run(cfg, run_dir, prev.record if mode == "resample" else None)
    print_summary(info, run_dir)


def export(cfg: DictConfig) -> None:
    """`export.dir=DIR`: write the configured dataset's train/holdout/test split and split.json (with the
    training split's fingerprint) for a tool outside ehrbench; no run directory is made."""
    config = validate(cfg)
    data_kw = {k: v for k, v in from_repo(config["data"], PATH_KEYS["data"]).items() if k not in RESERVED_DATA_KEYS}
    data = load_data(cfg.data.name, data_kw)
    meta = data_pkg.export_split(data, Path(cfg.export.dir).expanduser(), cfg.export.format)
    print(f"exported {data.name}: " + ", ".join(f"{k} {v:,} rows" for k, v in meta["rows"].items())
          + f" x {len(meta['columns'])} columns -> {cfg.export.dir} (fingerprint {meta['fingerprint']})")


@hydra.main(version_base="1.3", config_path="benchmarks", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    told = []  # under torchrun: whether rank 0 has told the other ranks if the run goes ahead

    def go(ok: bool) -> None:
        if distributed.setup() > 1 and not told:
            told.append(distributed.decide(ok))

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if distributed.setup() > 1 and distributed.rank() > 0:
            return follow(cfg, run_dir)
        if distributed.setup() > 1 and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise ValueError("torchrun runs one cell, not a sweep (-m): start one torchrun per cell, e.g. from a "
                             "launcher job")
        if cfg.get("export") and cfg.export.get("dir"):
            export(cfg)
            remove_empty(run_dir, Path(cfg.paths.runs))  # the folders Hydra made: an export makes no run
            return
        execute(cfg, run_dir, go)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: {run_dir} keeps its last checkpoint; run the same command again to resume", file=sys.stderr)
        raise SystemExit(143 if isinstance(e, Terminated) else 130) from None
    except USER_ERRORS as e:
        remove_empty(run_dir, Path(cfg.paths.runs))  # the empty folders Hydra made for a run refused before it started
        msg = f"error: {one_sentence(e)}"
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep goes on; Hydra reports the first failure at the end
            print(f"{msg} ({run_dir})", file=sys.stderr)
            raise UserError(msg) from e
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(msg, file=sys.stderr)  # one sentence, exit code 1; run.json keeps the traceback of a started run
        raise SystemExit(1) from None
    finally:
        if distributed.rank() == 0:
            go(False)  # a rank-0 failure before training: the other ranks stop waiting
        distributed.teardown()


if __name__ == "__main__":
    try:
        sys.argv[1:] = prepare_argv(sys.argv[1:])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
