"""The wall-clock cost of DP-SGD (trainer.dp) per training step against the same step without DP.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_dp.py [--models ehrdiff,vae,emrwgan]
       [--paths ghost,vmap] [--steps 5] [--vmap-steps 3] [--rounds 3] [--n-patients 20000] [--n-codes 1000] [--threads 2]
       [--device cpu] [--out results.json]
Data: load_dataset("synthetic") (20,000 patients -> 16,000 train x 1,005 columns by default). Models: their
benchmarks/model/<name>.yaml (the papers' sizes and batches). Each round trains `steps` steps without DP, then with
trainer.dp (epsilon 10, delta 1e-5, C 1, K 1; ehrdiff also K 4 by ghost clipping) once per per-record path
(trainer.dp.per_record: ghost, vmap; `--vmap-steps` for the slow one), from fresh models, interleaved so that the
machine's drift affects all alike. A variant's time is the median seconds per step over its rounds' steps after
the first (the first step holds the warm-up and ghost clipping's one-time exactness check); the ratio is to no DP.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_benchmark  # noqa: E402,F401  (binds `ehrbench` to this checkout)

from ehrbench.data import load_dataset  # noqa: E402
from ehrbench.models import Trainer, build_synthesizer  # noqa: E402


def params(name: str) -> dict:
    cfg = OmegaConf.load(ROOT / "benchmarks" / "model" / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, {"sigma_data": 0.14}) if "sigma_data" in cfg else cfg
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("name")
    out.pop("defaults", None)
    return out


def seconds_per_step(name: str, data, steps: int, dp: dict | None, device: str = "cpu") -> list[float]:
    """Seconds of each training step after the first (train_stats.jsonl, one row per step)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(device=device, budget="steps", max_steps=steps, progress=False, dp=dp, log_every=1,
                          workdir=tmp)
        build_synthesizer(name, **params(name)).fit(data, trainer)
        rows = [json.loads(line) for line in (Path(tmp) / "train_stats.jsonl").read_text().splitlines()]
    return [r["seconds_per_step"] for r in rows if r["step"] > 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ehrdiff,vae,emrwgan")
    ap.add_argument("--paths", default="ghost,vmap", help="per-record paths to time (trainer.dp.per_record)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--vmap-steps", type=int, default=None, help="steps per round for the vmap path (default --steps)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-patients", type=int, default=20000)
    ap.add_argument("--n-codes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (a GPU session: --device cuda --paths ghost)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("synthetic", n_patients=a.n_patients, n_codes=a.n_codes, seed=0)
    dp = {"epsilon": 10.0, "delta": 1e-5, "max_grad_norm": 1.0}
    models, paths = a.models.split(","), a.paths.split(",")
    variants = [(m, "no DP", None, a.steps) for m in models]
    for path in paths:  # emrwgan's critic has no ghost path (gradient penalty): its DP run is the loop
        variants += [(m, f"DP K=1 {path}", {**dp, "per_record": path}, a.steps if path == "ghost" else
                      (a.vmap_steps or a.steps)) for m in models if not (m == "emrwgan" and path == "ghost")]
    if "ehrdiff" in models and "ghost" in paths:
        variants += [("ehrdiff", "DP K=4 ghost", {**dp, "noise_multiplicity": 4, "per_record": "ghost"}, a.steps)]
    times: dict[tuple[str, str], list[float]] = {(m, v): [] for m, v, _, _ in variants}
    for r in range(a.rounds):
        for m, v, cfg, steps in variants:
            t = seconds_per_step(m, data, steps, cfg, a.device)
            times[(m, v)] += t
            print(f"round {r}: {m:8s} {v:14s} {np.median(t):.3f} s/step", flush=True)
    print(f"\n{data.n_features} columns, {len(data.train):,} training rows, {a.device}, {a.threads} threads, {a.steps} steps "
          f"({a.vmap_steps or a.steps} for vmap) x {a.rounds} rounds (medians of steps 2..)\n\n"
          "| model | variant | s/step | x no-DP |\n|---|---|---|---|")
    rows = []
    for m, v, _, _ in variants:
        med, base = float(np.median(times[(m, v)])), float(np.median(times[(m, "no DP")]))
        rows.append({"model": m, "variant": v, "seconds_per_step": med, "ratio": med / base})
        print(f"| {m} | {v} | {med:.3f} | {med / base:.1f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
