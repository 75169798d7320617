"""Training and sampling speed of every torch generator at its paper configuration: trainer=default vs trainer=fast.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_speed.py [--rows 41868] [--cols 1782]
       [--models ehrdiff,medgan,...] [--steps 200] [--warmup 20] [--rounds 2] [--samples 4096] [--device auto]
       [--compile auto] [--threads 2] [--out speed.json]
       CPU smoke run: --rows 2000 --cols 200 --steps 20 --warmup 5
Data: load_dataset("synthetic") with cols - 5 codes (+ 3 age bands, sex, MORTALITY) and the patients whose 80 %
training split has `rows` records (by default 41,868 x 1,782, the EHRDiff MIMIC-III size). Models: every registered
torch generator with its benchmarks/model/<name>.yaml (the papers' sizes and batches). Profiles: benchmarks/trainer/
default.yaml and fast.yaml, both with budget=steps (each phase capped at --steps) on --device.
Each round trains every model under both profiles from the same seed, back to back and in alternating order, so
that drift in the machine's speed hits both alike; compare them by the median of the per-round ratios.
- steps/s: training steps after the first --warmup of each phase (compilation, allocator warm-up), from the
  trainer's train_stats.jsonl rows (the fast profile reads the device there, so its time is the device's);
- samples/s: one sample(--samples) call after a small warm-up call;
- peak MB: CUDA's peak allocated memory, or on a CPU the process's peak resident set since the cell began;
- prevalence r: prevalence_pearson of those samples against the training split, after --steps steps per phase.
Prints a Markdown table (medians over rounds) and writes every cell and the summary as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_benchmark  # noqa: E402,F401  (binds `ehrbench` to this checkout)

from ehrbench import metrics  # noqa: E402
from ehrbench.data import EHRData, load_dataset  # noqa: E402
from ehrbench.models import SYNTHESIZERS, Trainer, TorchSynthesizer, build_synthesizer  # noqa: E402
from ehrbench.models.device import peak_memory_mb, reset_peak_memory  # noqa: E402

PROFILES = ("default", "fast")
EXTRA_COLUMNS = 5  # the simulator's 3 age bands, sex and MORTALITY next to its codes


def mimic_like(rows: int, cols: int, seed: int = 0) -> EHRData:
    """Simulated data whose 80 % training split is rows x cols (cols - 5 codes)."""
    if cols <= EXTRA_COLUMNS or rows < 8:
        raise ValueError(f"--cols must exceed {EXTRA_COLUMNS} and --rows be at least 8, got {cols} and {rows}")
    return load_dataset("synthetic", n_patients=round(rows / 0.8), n_codes=cols - EXTRA_COLUMNS, seed=seed)


def torch_models() -> list[str]:
    """Every registered generator trained by the shared Trainer that has a benchmarks/model YAML."""
    return [n for n, c in SYNTHESIZERS.items() if issubclass(c, TorchSynthesizer)
            and (ROOT / "benchmarks" / "model" / f"{n}.yaml").exists()]


def model_params(name: str) -> dict:
    """The paper configuration: benchmarks/model/<name>.yaml without its name."""
    out = OmegaConf.to_container(OmegaConf.load(ROOT / "benchmarks" / "model" / f"{name}.yaml"), resolve=True)
    out.pop("name")
    out.pop("defaults", None)
    return out


def profile(name: str, device: str, steps: int, warmup: int, workdir: Path, **overrides) -> dict:
    """Trainer keywords of benchmarks/trainer/<name>.yaml with each phase capped at `steps`, a log row (and, in the
    fast profile, a device read) every `warmup` steps, no intermediate checkpoint."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "benchmarks" / "trainer" / f"{name}.yaml"), resolve=True)
    cfg.update(device=device, budget="steps", max_steps=steps, fraction=None, flops=None, reference=None,
               reference_steps=None, progress=False, log_every=max(1, warmup), checkpoint_every=10**9,
               workdir=workdir, **overrides)
    return cfg


def steady_steps_per_second(stats: Path, warmup: int) -> float:
    """Steps per second over each phase's rows after its first (the first `warmup` steps) in train_stats.jsonl."""
    rows = [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]
    steps = seconds = 0.0
    for phase in dict.fromkeys(r["phase"] for r in rows):
        mine = [r for r in rows if r["phase"] == phase]
        prev = 0
        for k, r in enumerate(mine):
            n = r["step"] - prev
            if k > 0 or len(mine) == 1 or warmup < 1:  # a one-row phase has no steady part: count it all
                steps, seconds = steps + n, seconds + n * r["seconds_per_step"]
            prev = r["step"]
    return steps / seconds if seconds > 0 else float("nan")


def measure(name: str, params: dict, data: EHRData, trainer_kw: dict, samples: int, seed: int = 0,
            prevalence: bool = True) -> dict:
    """Train one model under one profile and time its training steps and its sampling."""
    reset_peak_memory()
    synth = build_synthesizer(name, **params)
    trainer = Trainer(**trainer_kw, seed=seed)
    synth.fit(data, trainer)
    synth.sample(min(64, samples), seed=seed + 1)  # warm-up: first-call kernels and allocations
    t0 = time.perf_counter()
    S = synth.sample(samples, seed=seed)
    sample_s = time.perf_counter() - t0
    row = {"model": name, "steps": trainer.steps_done, "n_params": synth.n_params,
           "steps_per_s": steady_steps_per_second(trainer.stats_path, trainer.log_every),
           "samples": samples, "sample_seconds": sample_s, "samples_per_s": samples / sample_s,
           "peak_mb": peak_memory_mb(trainer.device), "device": str(trainer.device),
           "precision": trainer.precision, "compile": trainer.compile}
    if prevalence:
        out = metrics.evaluate(data, S, {"prevalence_pearson": {}}, seed=seed)
        row["prevalence_r"] = next(r["value"] for r in out if r["metric"] == "prevalence_pearson")
    return row


def run(a: argparse.Namespace) -> dict:
    data = mimic_like(a.rows, a.cols, a.seed)
    print(f"data: {data.train.shape[0]:,} x {data.n_features:,} training matrix; models: {', '.join(a.models)}; "
          f"{a.steps} steps per phase ({a.warmup} warm-up) x {a.rounds} rounds; torch {torch.__version__}", flush=True)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name in a.models:
                order = PROFILES if r % 2 == 0 else PROFILES[::-1]
                for prof in order:
                    over = {"compile": a.compile} if prof == "fast" and a.compile is not None else {}
                    kw = profile(prof, a.device, a.steps, a.warmup, Path(tmp) / f"{r}-{name}-{prof}", **over)
                    cell = {"round": r, "profile": prof, **measure(name, model_params(name), data, kw, a.samples,
                                                                   a.seed)}
                    cells.append(cell)
                    print(json.dumps(cell), flush=True)
    return {"data": list(data.train.shape), "cells": cells, "summary": summarise(cells, a.models)}


def summarise(cells: list[dict], models: list[str]) -> list[dict]:
    """Per model: medians over rounds of each profile's figures, and the median of the per-round fast/default ratios."""
    out = []
    for name in models:
        mine = {p: [c for c in cells if c["model"] == name and c["profile"] == p] for p in PROFILES}
        row = {"model": name, "n_params": mine["default"][0]["n_params"]}
        for p in PROFILES:
            for k in ("steps_per_s", "samples_per_s", "peak_mb", "prevalence_r"):
                vals = [c[k] for c in mine[p] if k in c]
                row[f"{p}_{k}"] = float(np.median(vals)) if vals else None
        ratios = [f["steps_per_s"] / d["steps_per_s"] for d, f in zip(mine["default"], mine["fast"])]
        row["fast_over_default"] = float(np.median(ratios))
        row["ratios"] = ratios
        out.append(row)
    return out


def table(summary: list[dict]) -> str:
    def f(v, fmt):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    head = ("| model | params | steps/s default | steps/s fast | fast/default (per-round) | samples/s default | "
            "samples/s fast | peak MB default | peak MB fast | prevalence r default | prevalence r fast |")
    lines = [head, "|" + "---|" * 11]
    for s in summary:
        lines.append(f"| {s['model']} | {s['n_params']:,} | {f(s['default_steps_per_s'], '.2f')} | "
                     f"{f(s['fast_steps_per_s'], '.2f')} | {f(s['fast_over_default'], '.2f')} "
                     f"({', '.join(format(x, '.2f') for x in s['ratios'])}) | {f(s['default_samples_per_s'], ',.0f')} | "
                     f"{f(s['fast_samples_per_s'], ',.0f')} | {f(s['default_peak_mb'], ',.0f')} | "
                     f"{f(s['fast_peak_mb'], ',.0f')} | {f(s['default_prevalence_r'], '.4f')} | "
                     f"{f(s['fast_prevalence_r'], '.4f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=41868, help="training records (default: MIMIC-III's 41,868)")
    ap.add_argument("--cols", type=int, default=1782, help="columns (default: MIMIC-III's 1,782)")
    ap.add_argument("--models", type=lambda s: s.split(","), default=None, help="default: every torch generator")
    ap.add_argument("--steps", type=int, default=200, help="training steps per phase")
    ap.add_argument("--warmup", type=int, default=20, help="steps per phase left out of steps/s")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default=None, type=lambda s: {"true": True, "false": False}.get(s, s),
                    help="the fast profile's trainer.compile (default: its own, auto = on CUDA only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    a.models = a.models or torch_models()
    unknown = [m for m in a.models if m not in torch_models()]
    if unknown:
        ap.error(f"unknown torch model '{unknown[0]}'; valid choices: {', '.join(torch_models())}")
    if a.warmup >= a.steps:
        ap.error(f"--warmup ({a.warmup}) must be below --steps ({a.steps})")
    torch.set_num_threads(a.threads)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {"started": started, "args": {k: str(v) for k, v in vars(a).items()}, "torch": torch.__version__,
              **run(a)}
    print(f"\n{started} -> {datetime.now(timezone.utc).isoformat(timespec='seconds')}, device "
          f"{result['cells'][0]['device']}, {a.threads} threads, data {result['data'][0]:,} x {result['data'][1]:,}, "
          f"{a.steps} steps per phase, medians of {a.rounds} interleaved rounds\n")
    print(table(result["summary"]))
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
