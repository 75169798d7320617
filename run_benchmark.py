"""Hydra entry point: one run = (data, model, seed) -> fit -> sample -> evaluate -> the run directory."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import data as data_pkg
import metrics as metrics_pkg
import models as models_pkg

REPO = Path(__file__).resolve().parent
# benchmarks/hydra/launcher/{joblib,submitit_slurm}.yaml share the plugins' names on purpose (so that
# `hydra/launcher=joblib` picks ours); Hydra 1.3 warns about that harmless overlay.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema")
RESERVED_DATA_KEYS = ("name", "sigma_data")  # sigma_data is a hint read by model YAMLs, not a loader argument


def provenance() -> dict:
    """Versions and git commit of this checkout (recorded in every run and result row)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    from importlib.metadata import PackageNotFoundError, version
    try:
        ehrbench = version("ehrbench")
    except PackageNotFoundError:
        ehrbench = "unknown"
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                         "ehrbench": ehrbench},
            "git_commit": git("rev-parse", "HEAD") or "unknown", "git_dirty": bool(git("status", "--porcelain"))}


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str, allow_nan=True))
    os.replace(tmp, path)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Execute one benchmark cell into run_dir and return run.json's content."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    dname, mname, seed = cfg.data.name, cfg.model.name, int(cfg.seed)
    info = {"run_id": f"{cfg.tag}/{dname}/{mname}/seed_{seed}", "tag": cfg.tag, "data": dname, "model": mname,
            "seed": seed, "status": "running", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config, "config_hash": config_hash, "epsilon": None, **provenance()}
    run_json = run_dir / "run.json"
    write_json(run_json, info)
    try:
        info["peak_memory_scope"] = models_pkg.trainer.reset_peak_memory()  # this cell only, not the worker's past
        torch.manual_seed(seed)
        data_kw = {k: v for k, v in config["data"].items() if k not in RESERVED_DATA_KEYS}
        data = data_pkg.load_dataset(dname, **data_kw)
        model_kw = {k: v for k, v in config["model"].items() if k != "name"}
        synth = models_pkg.build_synthesizer(mname, **model_kw)
        info["reference"] = bool(getattr(synth, "reference", False))  # references are shown apart, unranked
        trainer = models_pkg.Trainer(**config["trainer"], seed=seed, workdir=run_dir)
        info.update(device=str(trainer.device), n_train=len(data.train), n_features=data.n_features)

        t0 = time.perf_counter()
        synth.fit(data, trainer)
        info["fit_seconds"] = time.perf_counter() - t0
        info["n_params"] = synth.n_params
        info["steps_per_second"] = trainer.steps_per_second
        synth.save(run_dir / "synthesizer")

        n = int(cfg.n_samples) if cfg.n_samples is not None else len(data.train)
        t0 = time.perf_counter()
        S = synth.sample(n, seed=seed)
        info["sample_seconds"] = time.perf_counter() - t0
        info["n_samples"] = len(S)
        np.savez_compressed(run_dir / "synthetic.npz", X=S, columns=np.asarray(data.columns))

        t0 = time.perf_counter()
        rows = metrics_pkg.evaluate(data, S, config["metrics"] or {}, seed=seed)
        info["evaluate_seconds"] = time.perf_counter() - t0
        common = {"run_id": info["run_id"], "tag": cfg.tag, "data": dname, "model": mname, "seed": seed}
        extra = {"git_commit": info["git_commit"], "device": info["device"], "config_hash": config_hash}
        with open(run_dir / "results.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({**common, **r, **extra}) + "\n")
        info["peak_memory_mb"] = models_pkg.trainer.peak_memory_mb(trainer.device)
        info["status"] = "ok"
        info["n_metric_errors"] = sum(r["status"] != "ok" for r in rows)
        return info
    except BaseException as e:
        info["status"] = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        info["traceback"] = traceback.format_exc()
        raise
    finally:
        info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(run_json, info)
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


@hydra.main(version_base="1.3", config_path="benchmarks", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    previous = run_dir / "run.json"
    if previous.exists() and not cfg.rerun:
        try:
            status = json.loads(previous.read_text()).get("status")
        except json.JSONDecodeError:
            status = None
        if status == "ok":
            print(f"skipping {run_dir}: already complete (pass rerun=true to run it again)")
            return
    if cfg.rerun:
        for name in ("checkpoint.pt", "train_stats.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    info = run(cfg, run_dir)
    print_summary(info, run_dir)


if __name__ == "__main__":
    sys.exit(main())
