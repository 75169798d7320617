"""One benchmark cell: check the configuration and the run directory, then fit -> sample -> evaluate into it."""
from __future__ import annotations

import hashlib
import inspect
import json
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib.metadata import distributions
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import ehrbench.data as data_pkg
import ehrbench.metrics as metrics_pkg
from ehrbench.data.cache import atomic_path
from ehrbench.metrics import canary

from . import device, distributed
from .base import Synthesizer, TorchSynthesizer, build_synthesizer, get_synthesizer, one_sentence
from .budget import sample_flops
from .config import validate
from .plugins import provider
from .resample import FIT_KEYS, load_trained
from .rundir import (RESERVED_DATA_KEYS, RunLock, clear_outputs, decide, describe_changes, missing_outputs,
                     output_hashes, previous_run, settings, settings_diff, settings_hash)
from .trainer import Trainer

# relative file paths in these keys are taken from the repository root (docs/guide.md "Datasets"), not the current folder
PATH_KEYS = {"data": ("path", "columns_file"), "model": ("path",)}


def repo_root() -> Path:
    """The folder of run_benchmark.py and benchmarks/, where relative paths start: the clone's root, or
    site-packages for an installed wheel (ehrbench/models/ lies two levels below it there)."""
    here = Path(__file__).resolve().parent
    return here.parent if (here.parent / "run_benchmark.py").exists() else here.parents[1]


REPO = repo_root()


def provenance() -> dict:
    """Versions and git commit of this checkout (recorded in every run and result row)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
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


def data_options(config: dict) -> dict:
    """The loader's keyword arguments: the data config minus the reserved keys, relative paths from the repository
    root, and split_seed = seed under split_from_seed (each seed then draws its own train/holdout/test split)."""
    kw = {k: v for k, v in from_repo(config["data"], PATH_KEYS["data"]).items() if k not in RESERVED_DATA_KEYS}
    if config.get("split_from_seed"):
        kw["split_seed"] = int(config["seed"])
    return kw


def prepare(config: dict, run_dir: Path) -> tuple[data_pkg.EHRData, Any, Any, Any]:
    """The data, the audit's canaries (None without one), the untrained generator and its Trainer of one cell (every
    torchrun rank builds the same)."""
    key, seed = config["model"]["name"], int(config["seed"])
    torch.manual_seed(seed)
    data = load_data(config["data"]["name"], data_options(config))
    model_kw = {k: v for k, v in from_repo(config["model"], PATH_KEYS["model"]).items() if k != "name"
                and (k != "label" or "label" in inspect.signature(get_synthesizer(key)).parameters)}
    synth = build_synthesizer(key, **model_kw)
    canaries = canary.make_canaries(data, config["canaries"], seed) if config.get("canaries") else None
    return data, canaries, synth, Trainer(**config["trainer"], seed=seed, workdir=run_dir)


def follow(cfg: DictConfig, run_dir: Path) -> None:
    """A torchrun rank above 0: once rank 0 has checked and locked the run directory, train in step with it
    (models/distributed.py) and return; rank 0 alone writes the directory, samples and scores."""
    if not distributed.decide():  # rank 0 skipped, refused or failed before training
        return
    data, canaries, synth, trainer = prepare(validate(cfg), run_dir)
    if isinstance(synth, TorchSynthesizer):  # others train without the Trainer: nothing to share
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
    t_start = time.perf_counter()

    def say(what: str) -> None:  # one line per phase, also into a log file
        print(f"[{time.perf_counter() - t_start:6.0f} s] {what}", flush=True)
    try:
        info["peak_memory_scope"] = device.reset_peak_memory()  # this cell only, not the worker's past
        say(f"{info['run_id']}: loading {dname}")
        data, canaries, synth, trainer = prepare(config, run_dir)
        say(f"{dname}: {len(data.train):,} training rows x {data.n_features:,} columns")
        fit_data = canary.with_canaries(data, *canaries) if canaries else data  # the audit's training data
        curve = config.get("curve") or {}
        scored = {**(curve.get("metrics") or {} if curve.get("eval_at") else {}), **(config["metrics"] or {})}
        metrics_pkg.check_split(data, list(scored))  # before any training
        info["reference"] = bool(getattr(synth, "reference", False))  # references are shown apart, unranked
        info["provider"] = provider(type(synth))  # module, distribution and version of the generator
        info.update(device=str(trainer.device), world_size=distributed.world_size(), n_train=len(data.train),
                    n_features=data.n_features, split=data.meta.get("split"))

        if config.get("resample_from"):  # a trained run's generator with new sampling settings, no training
            synth, fitted = load_trained(config["resample_from"], config)
            info.update(fitted)  # the source's training: fit seconds, budget, steps, epsilon, and where it came from
        elif previous is not None:  # this directory's own trained generator: no second training
            synth = Synthesizer.load(run_dir / "synthesizer")
            info.update({k: previous[k] for k in (*FIT_KEYS, "train_seconds") if k in previous})
        else:
            if curve.get("eval_at"):
                trainer.eval_at = [float(q) for q in curve["eval_at"]]
                trainer.on_eval = curve_writer(run_dir / "curve.jsonl", data, curve, seed, {
                    "run_id": info["run_id"], "tag": cfg.tag, "data": dname, "model": mname, "seed": seed})
            say(f"training {mname} on {trainer.device}")
            t0 = time.perf_counter()
            synth.fit(fit_data, trainer)
            info["fit_seconds"] = time.perf_counter() - t0 + trainer.resumed_seconds_  # an interrupted fit's too
            info["n_params"] = synth.n_params
            info["steps_per_second"] = trainer.steps_per_second
            info.update(trainer.budget_report())  # budget mode, steps and FLOPs per phase (none if untrained)
            synth.save(run_dir / "synthesizer")

        n = int(cfg.n_samples) if cfg.n_samples is not None else len(data.train)
        say(f"sampling {n:,} records")
        t0 = time.perf_counter()
        S = synth.sample(n, seed=seed)
        info["sample_seconds"] = time.perf_counter() - t0
        info["n_samples"] = len(S)
        info["sample_flops_per_1000"] = sample_flops(synth, seed=seed)
        with atomic_path(run_dir / "synthetic.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, X=S, columns=np.asarray(data.columns))

        say(f"scoring {len(config['metrics'] or {})} metrics" + (" and the canary audit" if canaries else ""))
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
        info["peak_memory_mb"] = device.peak_memory_mb(trainer.device)
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
    tag_dir = Path(info["config"]["paths"]["runs"]) / info["tag"]
    if not run_dir.resolve().is_relative_to(tag_dir.resolve()):  # hydra.run.dir put the run elsewhere
        tag_dir = run_dir
    print(f"next: python -m reports {tag_dir}   (the leaderboard of every run under it)")


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
    data = load_data(cfg.data.name, data_options(config))
    meta = data_pkg.export_split(data, Path(cfg.export.dir).expanduser(), cfg.export.format)
    print(f"exported {data.name}: " + ", ".join(f"{k} {v:,} rows" for k, v in meta["rows"].items())
          + f" x {len(meta['columns'])} columns -> {cfg.export.dir} (fingerprint {meta['fingerprint']})")
