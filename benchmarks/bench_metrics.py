"""Speed/memory benchmark of the default metric suite on MIMIC-sized simulator data, with an sklearn k-NN comparison.

Usage: .venv/bin/python benchmarks/bench_metrics.py [--scale 1.0] [--metrics benchmarks/metrics/default.yaml]
       [--device auto] [--threads 2] [--skip-sklearn]
Default data: the simulator with 1,777 codes (+ 3 age bands, sex, MORTALITY = 1,782 columns), split into
41,868 train / 4,652 holdout / 4,652 test patients (the EHRDiff MIMIC-III sizes); synthetic = the train rows
with every cell flipped with probability 0.001 (a near-copy, so no metric takes an early exit).
Goals on a 2-core CPU: whole suite < 120 s, process peak memory < 8 GB, no metric > 40 s.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN, HOLDOUT, TEST = 41868, 4652, 4652


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples the process RSS every 5 ms in a thread; .peak is the highest value seen inside the `with` block.

    RSS covers numpy and torch allocations alike (tracemalloc would miss torch's allocator).
    """

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the patient counts (e.g. 0.1 for a quick run)")
    ap.add_argument("--n-codes", type=int, default=1777)
    ap.add_argument("--metrics", default=str(ROOT / "benchmarks/metrics/default.yaml"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the LightGBM metrics use their n_jobs)")
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()

    import torch
    import yaml

    torch.set_num_threads(args.threads)
    from ehrbench.data import load_dataset
    from ehrbench.metrics import evaluate
    from ehrbench.metrics.neighbors import encode, knn, resolve_device

    n_tr, n_ho, n_te = (max(10, int(round(x * args.scale))) for x in (TRAIN, HOLDOUT, TEST))
    total = n_tr + n_ho + n_te
    t0 = time.perf_counter()
    data = load_dataset("synthetic", n_patients=total, n_codes=args.n_codes, seed=0,
                        split=(n_tr / total, n_ho / total, 1 - (n_tr + n_ho) / total))
    rng = np.random.default_rng(1)
    synth = data.train.copy()
    flip = rng.random(synth.shape, dtype=np.float32) < 1e-3
    synth[flip] = 1 - synth[flip]
    del flip
    dev = resolve_device(args.device)
    print(f"data: train {data.train.shape}, holdout {len(data.holdout)}, test {len(data.test)}, synthetic {synth.shape}, "
          f"{data.train.mean() * 100:.2f}% ones; built in {time.perf_counter() - t0:.1f} s; device {dev}; "
          f"torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")

    spec = {k: dict(v or {}, **({"device": args.device} if "device" in _params(k) else {}))
            for k, v in yaml.safe_load(Path(args.metrics).read_text()).items()}
    rows = []
    t_suite = time.perf_counter()
    for name, kw in spec.items():
        with PeakRSS() as mem:
            out = evaluate(data, synth, {name: kw}, seed=0)
        rows.append((name, out[0]["seconds"], mem.peak - mem.start, mem.peak, out[0]["value"], out[0]["status"]))
    suite = time.perf_counter() - t_suite

    print("\n| metric | seconds | extra RSS MB | process RSS MB | value | status |\n|---|---:|---:|---:|---:|---|")
    for name, s, extra, peak, v, st in rows:
        print(f"| {name} | {s:.2f} | {extra:.0f} | {peak:.0f} | {v:.4g} | {st[:70]} |")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    slowest = max(rows, key=lambda r: r[1])
    print(f"\nwhole suite: {suite:.1f} s (goal < 120 s); process peak RSS {peak_gb:.2f} GB (goal < 8 GB); "
          f"slowest metric {slowest[0]} {slowest[1]:.1f} s (goal < 40 s)")

    if not args.skip_sklearn:
        _compare_sklearn(data, synth, dev, encode, knn)


def _params(name: str) -> set[str]:
    import inspect

    from ehrbench.metrics import METRICS

    return set(inspect.signature(METRICS[name].fn).parameters)


def _compare_sklearn(data, synth, dev, encode, knn) -> None:
    """The mia_auc nearest-neighbour step (members + non-members -> closest synthetic record) three ways."""
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors

    m = len(data.holdout)
    Q, S = encode(data, np.concatenate([data.train[:m], data.holdout]), synth)
    print(f"\nnearest-neighbour step: {len(Q)} queries x {len(S)} synthetic records x {S.shape[1]} columns")
    t = time.perf_counter()
    ours = knn(Q, S, 1, device=dev)[0][:, 0]
    t_ours = time.perf_counter() - t
    print("| implementation | seconds | max abs difference of squared distances |\n|---|---:|---:|")
    print(f"| ehrbench metrics.neighbors.knn ({dev}) | {t_ours:.2f} | 0 |")
    for label, A, B in (("sklearn NearestNeighbors brute, dense float32", Q, S),
                        ("sklearn NearestNeighbors brute, CSR sparse", sp.csr_matrix(Q), sp.csr_matrix(S))):
        t = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=1, algorithm="brute", metric="euclidean").fit(B)
        d = nn.kneighbors(A, return_distance=True)[0][:, 0] ** 2
        print(f"| {label} | {time.perf_counter() - t:.2f} | {np.abs(d - ours).max():.3g} |")


if __name__ == "__main__":
    main()
