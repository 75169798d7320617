"""Baseline generators vs the floor and the ceiling on the default simulator data with the short CPU schedule.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_baselines.py [--models medgan,vae,emrwgan,independent,real]
       [--max-steps N] [--n-patients 20000] [--n-codes 1000] [--seed 0] [--threads 2] [--out results.json]
       [--set emrwgan.lr_g=1e-4 ...]   (diagnostics only: override a model hyperparameter of the YAML)
Data: load_dataset("synthetic") with benchmarks/data/synthetic.yaml (20,000 patients -> 16,000 train x 1,005).
Models: benchmarks/model/<name>.yaml (the papers' defaults); trainer: benchmarks/trainer/default.yaml (equal
training compute: the FLOPs of 2,000 EHRDiff steps per generator; --max-steps N caps each phase instead) on the CPU.
Each fitted model is sampled (as many rows as train) with its default binarisation, and models with a 0.5 threshold
or Bernoulli default are also sampled with the other rule (rows "name+rule"). Metrics: those of
benchmarks/metrics/default.yaml among prevalence_pearson, nzc, cooccurrence_pearson, cmd, correlation_mae,
tstr_auroc. Prints a Markdown table and which generators beat `independent` on a correlation-aware metric.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ehrbench.data import load_dataset  # noqa: E402
from ehrbench import metrics  # noqa: E402
from ehrbench.models import Trainer, build_synthesizer  # noqa: E402

WANTED = ("prevalence_pearson", "nzc", "cooccurrence_pearson", "cmd", "correlation_mae", "tstr_auroc")
CORRELATION_AWARE = ("cooccurrence_pearson", "cmd", "correlation_mae", "tstr_auroc")
OTHER_RULE = {"threshold": "bernoulli", "bernoulli": "threshold"}


def config(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "benchmarks" / group / f"{name}.yaml"), resolve=True)


def metric_spec() -> dict:
    default = config("metrics", "default")
    spec = {m: default.get(m, {}) or {} for m in WANTED if m in metrics.METRICS}
    if not any(m in spec for m in CORRELATION_AWARE):
        raise RuntimeError(f"none of the correlation-aware metrics {', '.join(CORRELATION_AWARE)} is registered")
    return spec


def score(data, S: np.ndarray, spec: dict, seed: int) -> dict:
    rows = metrics.evaluate(data, S, spec, seed=seed)
    return {r["metric"]: r["value"] if r["status"] == "ok" else r["status"] for r in rows if r["goal"] != "info"}


def run(args: argparse.Namespace) -> list[dict]:
    data_kw = {k: v for k, v in config("data", "synthetic").items() if k != "name"}
    data_kw.update(n_patients=args.n_patients, n_codes=args.n_codes)
    data = load_dataset("synthetic", **data_kw)
    trainer_kw = {**config("trainer", "default"), "device": "cpu", "progress": False}
    if args.max_steps is not None:  # the old per-phase cap (trainer.budget=steps) instead of equal compute
        trainer_kw.update(budget="steps", max_steps=args.max_steps, reference=None, reference_steps=None)
    spec = metric_spec()
    print(f"data: synthetic {data.train.shape[0]} train x {data.n_features}; trainer: {trainer_kw}; "
          f"metrics: {', '.join(spec)}", flush=True)
    results = []
    for name in args.models:
        params = {k: v for k, v in config("model", name).items() if k != "name"}
        params.update({k.split(".", 1)[1]: v for k, v in args.set.items() if k.split(".", 1)[0] == name})
        synth = build_synthesizer(name, **params)
        trainer = Trainer(**trainer_kw, seed=args.seed)
        t0 = time.perf_counter()
        synth.fit(data, trainer)
        fit_s = time.perf_counter() - t0
        rules = [params.get("binarize")] if "binarize" in params else [None]
        if rules[0] in OTHER_RULE:
            rules.append(OTHER_RULE[rules[0]])
        for rule in rules:
            if rule is not None:
                synth.binarize = rule
            t0 = time.perf_counter()
            S = synth.sample(len(data.train), seed=args.seed)
            sample_s = time.perf_counter() - t0
            label = name if rule is None or rule == rules[0] else f"{name}+{rule}"
            row = {"model": label, "binarize": rule, "n_params": synth.n_params, "steps": trainer.steps_done,
                   "fit_seconds": round(fit_s, 1), "sample_seconds": round(sample_s, 2),
                   **score(data, S, spec, args.seed)}
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def table(results: list[dict]) -> str:
    cols = [c for c in (*WANTED, "fit_seconds", "sample_seconds", "steps") if any(c in r for r in results)]
    goal = {m: metrics.METRICS[m].goal for m in WANTED if m in metrics.METRICS}
    head = ["model", *[f"{c} ({'↑' if goal[c] == 'max' else '↓'})" if c in goal else c for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["model"]] + [(f"{r[c]:.0f}" if c == "nzc" else f"{r[c]:.4f}")
                                if isinstance(r.get(c), float) and c in goal else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beats_independent(results: list[dict]) -> list[str]:
    ref = next((r for r in results if r["model"] == "independent"), None)
    if ref is None:
        return []
    out = []
    for r in results:
        if r["model"] in ("independent", "real"):
            continue
        won = [m for m in CORRELATION_AWARE if isinstance(r.get(m), float) and isinstance(ref.get(m), float)
               and (r[m] > ref[m] if metrics.METRICS[m].goal == "max" else r[m] < ref[m])]
        out.append(f"{r['model']}: beats independent on {', '.join(won) if won else 'NO correlation-aware metric'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=lambda s: s.split(","), default=["medgan", "vae", "emrwgan", "independent", "real"])
    ap.add_argument("--max-steps", type=int, default=None,
                    help="cap each phase at this many steps (budget=steps); default: trainer=default's equal compute")
    ap.add_argument("--n-patients", type=int, default=config("data", "synthetic")["n_patients"])
    ap.add_argument("--n-codes", type=int, default=config("data", "synthetic")["n_codes"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--set", nargs="*", default=[], metavar="MODEL.PARAM=VALUE",
                    help="diagnostics: override model hyperparameters (YAML values), e.g. emrwgan.lr_g=1e-4")
    args = ap.parse_args()
    bad = [s for s in args.set if "=" not in s or "." not in s.split("=", 1)[0]]
    if bad:
        ap.error(f"--set expects MODEL.PARAM=VALUE, got {bad[0]!r}")
    args.set = {k: OmegaConf.create(f"v: {v}").v for k, v in (s.split("=", 1) for s in args.set)}
    torch.set_num_threads(args.threads)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = run(args)
    print(f"\n{started} -> {datetime.now(timezone.utc).isoformat(timespec='seconds')}, torch {torch.__version__}, "
          f"{args.threads} threads, budget {'steps <= %d' % args.max_steps if args.max_steps else 'equal compute'}\n")
    print(table(results))
    print("\n" + "\n".join(beats_independent(results)))
    if args.out is not None:
        args.out.write_text(json.dumps({"started": started, "args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results}, indent=2))


if __name__ == "__main__":
    main()
