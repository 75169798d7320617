"""The cost of mst (models/mst.py) on wide binary data: fit seconds (measurement + selection, mbi's estimate),
sample seconds and peak memory.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_mst.py [--n-patients 25000] [--n-codes 995] [--epsilon 10]
       [--delta 1e-5] [--iters 10000] [--n-samples 20000] [--out results.json]
Needs the dp extra (pip install -e ".[dp]"). Data: load_dataset("synthetic"); the defaults give its training split of
20,000 patients x 1,000 binary columns (995 codes + 5 demographic/label columns). One private fit (trainer.dp
epsilon/delta, seed 0), then sample(n_samples, seed=0). Wall seconds and process CPU seconds (all threads; JAX's
XLA compiler uses several) are both printed: on a shared machine the CPU seconds are the steadier figure. Peak
memory is the process's peak resident set size (ru_maxrss) after each phase. To keep XLA to one core as well:
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_benchmark  # noqa: E402,F401  (binds `ehrbench` to this checkout)

import numpy as np  # noqa: E402

from ehrbench.data import load_dataset  # noqa: E402
from ehrbench.models import Trainer, build_synthesizer  # noqa: E402
from ehrbench.models.mst import missing_extra  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-patients", type=int, default=25000)
    ap.add_argument("--n-codes", type=int, default=995)
    ap.add_argument("--epsilon", type=float, default=10.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--iters", type=int, default=10000)
    ap.add_argument("--n-samples", type=int, default=20000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if missing_extra():
        sys.exit(missing_extra())
    data = load_dataset("synthetic", n_patients=a.n_patients, n_codes=a.n_codes, seed=0)
    n, d = data.train.shape
    print(f"data: {n:,} x {d:,} ({sum(k == 'binary' for k in data.kinds)} binary); peak {peak_mb():.0f} MB", flush=True)
    trainer = Trainer(device="cpu", seed=0, dp={"epsilon": a.epsilon, "delta": a.delta})
    model = build_synthesizer("mst", iters=a.iters)
    w0, c0 = time.perf_counter(), time.process_time()
    model.fit(data, trainer)
    fit_wall, fit_cpu, fit_peak = time.perf_counter() - w0, time.process_time() - c0, peak_mb()
    print(f"fit: {fit_wall:.1f} s wall, {fit_cpu:.1f} s CPU (measure + select {model._timings['measure_select']:.1f} s, "
          f"mbi estimate {model._timings['estimate']:.1f} s wall); peak {fit_peak:.0f} MB; "
          f"epsilon spent {trainer.dp_report()['epsilon']:.4f}", flush=True)
    w0, c0 = time.perf_counter(), time.process_time()
    S = model.sample(a.n_samples, seed=0)
    sample_wall, sample_cpu = time.perf_counter() - w0, time.process_time() - c0
    X = data.train
    prev = float(np.corrcoef(S.mean(0), X.mean(0))[0, 1])
    print(f"sample {a.n_samples:,}: {sample_wall:.1f} s wall, {sample_cpu:.1f} s CPU; peak {peak_mb():.0f} MB; "
          f"prevalence r {prev:.4f}", flush=True)
    result = {"n_train": n, "n_columns": d, "epsilon": a.epsilon, "delta": a.delta, "iters": a.iters,
              "fit_seconds": fit_wall, "fit_cpu_seconds": fit_cpu, **{f"{k}_seconds": v for k, v in model._timings.items()},
              "sample_seconds": sample_wall, "sample_cpu_seconds": sample_cpu, "n_samples": a.n_samples,
              "peak_memory_mb_fit": fit_peak, "peak_memory_mb": peak_mb(), "prevalence_r": prev,
              "epsilon_spent": trainer.dp_report()["epsilon"], "n_params": model.n_params}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
