"""The wall-clock cost of DP-SGD (trainer.dp) per training step against the same step without DP.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_dp.py [--models ehrdiff,vae,emrwgan] [--steps 5]
       [--rounds 3] [--n-patients 20000] [--n-codes 1000] [--threads 2] [--out results.json]
Data: load_dataset("synthetic") (20,000 patients -> 16,000 train x 1,005 columns by default). Models: their
benchmarks/model/<name>.yaml (the papers' sizes and batches). Each round trains `steps` steps without DP, then with
trainer.dp (epsilon 10, delta 1e-5, C 1, K 1; ehrdiff also K 4), from fresh models, interleaved so that the
machine's drift affects both alike; prints seconds per step (median over rounds) and the DP/non-DP ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ehrbench.data import load_dataset  # noqa: E402
from ehrbench.models import Trainer, build_synthesizer  # noqa: E402


def params(name: str) -> dict:
    cfg = OmegaConf.load(ROOT / "benchmarks" / "model" / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, {"sigma_data": 0.14}) if "sigma_data" in cfg else cfg
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("name")
    out.pop("defaults", None)
    return out


def seconds_per_step(name: str, data, steps: int, dp: dict | None) -> float:
    trainer = Trainer(device="cpu", budget="steps", max_steps=steps, progress=False, dp=dp)
    build_synthesizer(name, **params(name)).fit(data, trainer)
    return trainer.train_seconds / trainer.steps_done  # the training loop only (no FLOP count, no calibration)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ehrdiff,vae,emrwgan")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-patients", type=int, default=20000)
    ap.add_argument("--n-codes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("synthetic", n_patients=a.n_patients, n_codes=a.n_codes, seed=0)
    dp = {"epsilon": 10.0, "delta": 1e-5, "max_grad_norm": 1.0}
    variants = [(m, "no DP", None) for m in a.models.split(",")]
    variants += [(m, "DP K=1", dp) for m in a.models.split(",")]
    variants += [("ehrdiff", "DP K=4", {**dp, "noise_multiplicity": 4})] if "ehrdiff" in a.models else []
    times: dict[tuple[str, str], list[float]] = {(m, v): [] for m, v, _ in variants}
    for r in range(a.rounds):
        for m, v, cfg in variants:
            times[(m, v)].append(seconds_per_step(m, data, a.steps, cfg))
            print(f"round {r}: {m:8s} {v:7s} {times[(m, v)][-1]:.3f} s/step", flush=True)
    print(f"\n{data.n_features} columns, {len(data.train):,} training rows, {a.threads} threads, {a.steps} steps x "
          f"{a.rounds} rounds (medians)\n\n| model | variant | s/step | x no-DP |\n|---|---|---|---|")
    rows = []
    for m, v, _ in variants:
        med, base = float(np.median(times[(m, v)])), float(np.median(times[(m, "no DP")]))
        rows.append({"model": m, "variant": v, "seconds_per_step": med, "ratio": med / base})
        print(f"| {m} | {v} | {med:.3f} | {med / base:.1f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
