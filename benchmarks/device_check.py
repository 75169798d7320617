"""Issue 16's goal figures on one GPU: EHRDiff paper-config training and sampling speed, CPU-vs-CUDA distance agreement.

Usage: python benchmarks/device_check.py [--quick] [--out check.json]
Installs nothing beyond the project and runs in under 8 minutes on one GPU. Without CUDA it says that no GPU was
found and runs --quick: tiny shapes and a small network, a smoke test of this script whose figures say nothing.
Figures (goals of issue 16 "Speed and scale"):
- EHRDiff training steps/s at the paper configuration (benchmarks/model/ehrdiff.yaml: batch 1,024) on a 41,868 x
  1,782 simulated training matrix, under trainer=default (fp32) and trainer=fast (and trainer=fast without
  torch.compile on CUDA); steps after the first 50 are counted (compilation left out). Goal: >= 700 steps/s.
- seconds to sample 41,000 records with the paper's 32 Heun steps (63 network evaluations each), with the paper's
  sample batch (4,096) and in one batch. Goal: < 3 s.
- the projected time of the full paper schedule (5,000 epochs x ceil(41,868 / 1,024) = 205,000 steps).
- metrics/neighbors.py's dense distance path on CUDA against the CPU's dense path (forced on sparse EHR-like
  0/1 data): k-NN Hamming distances and indices (k = 1 and 5) and radius counts equal, kernel sums within 1e-6
  relative, float64 (continuous) k-NN distances within 1e-9. Without CUDA the CPU sparse path stands in for CUDA.
Exit code 1 if the distance paths disagree; a missed speed goal is printed, not an error.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import mimic_like, model_params, profile, steady_steps_per_second  # noqa: E402

from ehrbench.metrics import neighbors as nb  # noqa: E402
from ehrbench.models import Trainer, build_synthesizer  # noqa: E402

GOAL_STEPS_PER_S, GOAL_SAMPLE_S = 700.0, 3.0
FULL = {"rows": 41868, "cols": 1782, "warmup": 50, "steps": 2050, "samples": 41000, "queries": 2048}
QUICK = {"rows": 512, "cols": 64, "warmup": 2, "steps": 6, "samples": 256, "queries": 200}
QUICK_NET = {"unit_dims": [64, 32, 64], "time_dim": 32, "batch_size": 128, "sample_batch_size": 256}


def training(shape: dict, quick: bool, device: str, cuda: bool, workdir: Path) -> dict:
    """Steps/s per profile, then sampling time and the projected paper schedule from the fast-trained model."""
    data = mimic_like(shape["rows"], shape["cols"])
    params = {**model_params("ehrdiff"), **(QUICK_NET if quick else {})}
    variants = [("default", {}), ("fast", {})] + ([("fast, eager", {"compile": False})] if cuda else [])
    out: dict = {"data": list(data.train.shape), "profiles": {}}
    synth = None
    for label, over in variants:
        kw = profile(label.split(",")[0], device, shape["steps"], shape["warmup"], workdir / label.replace(", ", "_"),
                     **over)
        synth = build_synthesizer("ehrdiff", **params)
        trainer = Trainer(**kw, seed=0)
        synth.fit(data, trainer)
        out["profiles"][label] = {"steps_per_s": steady_steps_per_second(trainer.stats_path, trainer.log_every),
                                  "precision": trainer.precision, "compile": trainer.compile,
                                  "n_params": synth.n_params}
        print(f"EHRDiff training, trainer={label} ({trainer.precision}{', compiled' if trainer.compile else ''}): "
              f"{out['profiles'][label]['steps_per_s']:,.1f} steps/s", flush=True)
    out["paper_steps"] = synth.plan(len(data.train))[0].total_steps
    out["sampling"] = {}
    for batch in (synth.sample_batch_size, shape["samples"]):
        synth.sample_batch_size = batch
        synth.sample(min(batch, shape["samples"]), seed=1)  # warm-up at this batch shape
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        synth.sample(shape["samples"], seed=0)  # returns a host array: the device has finished
        out["sampling"][str(batch)] = time.perf_counter() - t0
    return out


def neighbors_agreement(shape: dict, cuda: bool) -> dict:
    """The dense distance path on CPU (forced) against CUDA (or, without CUDA, the CPU sparse path)."""
    rng = np.random.default_rng(0)
    n_q, n_r, d = shape["queries"], shape["rows"], shape["cols"]
    prevalence = rng.beta(0.3, 30.0, d)  # about 1 % of the cells set, like EHR code matrices
    Q = (rng.random((n_q, d)) < prevalence).astype(np.float32)
    R = (rng.random((n_r, d)) < prevalence).astype(np.float32)
    radii = np.full(n_r, float(np.median(R.sum(1))), np.float32)
    other = "cuda" if cuda else "cpu"

    def figures(device: str, dense: bool) -> dict:
        saved = nb.SPARSE_DENSITY
        nb.SPARSE_DENSITY = 0.0 if dense else saved  # 0: no matrix counts as sparse, so the CPU takes dense blocks
        try:
            return {"k1": nb.knn(Q, R, 1, return_index=True, hamming=True, device=device),
                    "k5": nb.knn(Q, R, 5, return_index=True, hamming=True, device=device),
                    "counts": nb.count_within(Q, R, radii, device=device),
                    "kernel": nb.kernel_sum(Q, R, 50.0, device=device)}
        finally:
            nb.SPARSE_DENSITY = saved

    t0 = time.perf_counter()
    a, b = figures("cpu", True), figures(other, cuda)
    C = rng.normal(size=(min(n_q, 500), 32))
    D = rng.normal(size=(min(n_r, 2000), 32))
    ca = nb.knn(C, D, 3, return_index=True, device="cpu")
    if cuda:
        cb = nb.knn(C, D, 3, return_index=True, device="cuda")
    else:  # brute force in float64
        full = ((C[:, None, :] - D[None, :, :]) ** 2).sum(-1)
        idx = np.argsort(full, axis=1, kind="stable")[:, :3]
        cb = (np.take_along_axis(full, idx, 1), idx)
    checks = {"knn_k1_equal": all(np.array_equal(x, y) for x, y in zip(a["k1"], b["k1"])),
              "knn_k5_equal": all(np.array_equal(x, y) for x, y in zip(a["k5"], b["k5"])),
              "radius_counts_equal": bool(np.array_equal(a["counts"], b["counts"])),
              "kernel_sum_rel_diff": abs(a["kernel"] - b["kernel"]) / max(abs(b["kernel"]), 1e-300),
              "float64_knn_max_rel_diff": float(np.max(np.abs(ca[0] - cb[0]) / np.maximum(np.abs(cb[0]), 1e-300))),
              "float64_knn_index_equal": bool(np.array_equal(ca[1], cb[1]))}
    ok = (checks["knn_k1_equal"] and checks["knn_k5_equal"] and checks["radius_counts_equal"]
          and checks["kernel_sum_rel_diff"] < 1e-6 and checks["float64_knn_max_rel_diff"] < 1e-9
          and checks["float64_knn_index_equal"])
    return {"against": "cuda" if cuda else "cpu sparse path", "shape": [n_q, n_r, d], "agree": ok,
            "seconds": time.perf_counter() - t0, **checks}


def verdict(met: bool, quick: bool) -> str:
    return "not assessed (--quick)" if quick else ("MET" if met else "MISSED")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes and a small network (always so without CUDA)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    quick = a.quick or not cuda
    shape = QUICK if quick else FULL
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name() if cuda else "no GPU found"
    print(f"ehrbench device check (issue 16): {device} ({name}), torch {torch.__version__}", flush=True)
    if not cuda:
        print("no GPU found: reduced --quick run; its figures say nothing about the goals", flush=True)
    elif quick:
        print("--quick: reduced shapes and a small network; its figures say nothing about the goals", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"device": device, "device_name": name, "quick": quick, "torch": torch.__version__,
                  "training": training(shape, quick, device, cuda, Path(tmp))}
    tr = result["training"]
    fast = tr["profiles"]["fast"]["steps_per_s"]
    print(f"goal >= {GOAL_STEPS_PER_S:.0f} steps/s (trainer=fast, {tr['data'][0]:,} x {tr['data'][1]:,}): "
          f"{fast:,.1f} -> {verdict(fast >= GOAL_STEPS_PER_S, quick)}")
    for batch, s in tr["sampling"].items():
        print(f"sampling {shape['samples']:,} records, 32 Heun steps (63 network evaluations each), batch "
              f"{int(batch):,}: {s:.2f} s -> goal < {GOAL_SAMPLE_S:.0f} s: {verdict(s < GOAL_SAMPLE_S, quick)}")
    for label, p in tr["profiles"].items():
        print(f"projected paper schedule ({tr['paper_steps']:,} steps), trainer={label}: "
              f"{tr['paper_steps'] / p['steps_per_s'] / 60:,.1f} min")
    result["neighbors"] = nb_result = neighbors_agreement(shape, cuda)
    q, r, d = nb_result["shape"]
    print(f"neighbors, dense distance path on CPU vs {nb_result['against']} ({q:,} x {r:,} x {d:,}): k-NN equal "
          f"{nb_result['knn_k1_equal'] and nb_result['knn_k5_equal']}, radius counts equal "
          f"{nb_result['radius_counts_equal']}, kernel sum rel. diff {nb_result['kernel_sum_rel_diff']:.1e}, float64 "
          f"k-NN rel. diff {nb_result['float64_knn_max_rel_diff']:.1e} -> {'AGREE' if nb_result['agree'] else 'DISAGREE'}")
    result["seconds"] = time.perf_counter() - t0
    print(f"done in {result['seconds']:.0f} s")
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=2, default=str))
    return 0 if nb_result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
