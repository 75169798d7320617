"""Loader timings: Diabetes-130, PhysioNet 2012 (set A, A+B) and generated MIMIC-III-sized DIAGNOSES/PROCEDURES files.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--data ../shared/data] [--repeat 3]

Prints one line per loader: shape (patients x columns), best wall-clock seconds of --repeat loads, and the target.
Sources that are absent are reported as skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ehrbench.data import load_dataset  # noqa: E402


def mimic_like(folder: Path, n_patients: int = 46520, n_diag: int = 651000, n_proc: int = 240000, seed: int = 0) -> None:
    """DIAGNOSES_ICD.csv.gz / PROCEDURES_ICD.csv.gz in the MIMIC-III layout with MIMIC-III's row counts (random codes)."""
    rng = np.random.default_rng(seed)
    for stem, n, pool in (("DIAGNOSES_ICD", n_diag, 6984), ("PROCEDURES_ICD", n_proc, 2009)):
        r = rng.zipf(1.3, n) % pool
        if stem == "DIAGNOSES_ICD":
            codes = np.where(r % 10 == 0, "E" + (8000 + r % 1000).astype(str),
                             np.where(r % 10 == 1, "V" + (1000 + r % 900).astype(str), (10000 + r).astype(str)))
        else:
            codes = (1000 + r).astype(str)
        pd.DataFrame({"ROW_ID": np.arange(n), "SUBJECT_ID": rng.integers(0, n_patients, n), "HADM_ID": 0,
                      "SEQ_NUM": 1, "ICD9_CODE": codes}).to_csv(folder / f"{stem}.csv.gz", index=False)


def timed(label: str, target: float | None, repeat: int, **kw) -> None:
    best, d = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        d = load_dataset(**kw)
        best = min(best, time.perf_counter() - t)
    n = len(d.train) + len(d.holdout) + len(d.test)
    goal = f"(target < {target:g} s: {'ok' if best < target else 'MISSED'})" if target else ""
    print(f"{label:<34} {n:>7} x {d.n_features:<5} {best:6.2f} s  {goal}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("EHRBENCH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--data", default=default, help="folder holding diabetes130/ and physionet2012/")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.data)
    print(f"cpus available: {len(os.sched_getaffinity(0))}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if (root / "diabetes130" / "diabetic_data.csv").is_file():
        timed("diabetes130", 10, args.repeat, name="diabetes130", path=str(root / "diabetes130"))
    else:
        print("diabetes130: skipped (no diabetic_data.csv under --data)")
    if (root / "physionet2012" / "set-a.tar.gz").is_file():
        timed("physionet2012 set A", 30, args.repeat, name="physionet2012", path=str(root / "physionet2012"), sets=["a"])
        timed("physionet2012 sets A+B", None, args.repeat, name="physionet2012", path=str(root / "physionet2012"))
    else:
        print("physionet2012: skipped (no set-a.tar.gz under --data)")
    with tempfile.TemporaryDirectory() as tmp:
        mimic_like(Path(tmp))
        timed("mimic3 (generated, MIMIC-III size)", None, args.repeat, name="mimic3", path=tmp)


if __name__ == "__main__":
    main()
