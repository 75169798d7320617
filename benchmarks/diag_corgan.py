"""Why CorGAN's samples are empty on sparse codes: its autoencoder after pretraining, then its GAN, both read out
as the official 0.5 threshold would and as probabilities (what Bernoulli draws would give).

Usage: OMP_NUM_THREADS=1 python benchmarks/diag_corgan.py [--pretrain-steps 32] [--gan-steps 100] [--reports 5]
       [--warmup-d-updates 100] [--n-patients 20000] [--n-codes 1000]
Data: load_dataset("synthetic") (16,000 training records of the defaults, about 1.2 % of the codes set). The
model is models/corgan.py at its paper defaults; the loop calls its losses and optimisers directly (batches drawn
with replacement, as the official loader does), pretraining first, then the critic warm-up (100 critic updates per
generator update for the first 25) and the GAN (5 per update). Printed per report point: the autoencoder's or the
generator's mean output probability (the data's prevalence beside it), the BCE per record of the reconstruction,
and the Pearson r between the real code prevalences and (a) the thresholded samples ("nan" when the threshold
leaves every code at 0) and (b) the mean probabilities.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_benchmark  # noqa: E402,F401  (binds `ehrbench` to this checkout)

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from ehrbench.data import load_dataset  # noqa: E402
from ehrbench.models.corgan import CorGAN  # noqa: E402


def prevalence_r(real: np.ndarray, P: np.ndarray) -> float:
    """Pearson r of per-code prevalences; nan when the synthetic prevalences are constant (e.g. all zero)."""
    p = P.mean(0)
    return float("nan") if np.ptp(p) == 0 else float(np.corrcoef(real, p)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-steps", type=int, default=32, help="autoencoder steps (one epoch of 16,000 = 32)")
    ap.add_argument("--gan-steps", type=int, default=100, help="generator updates")
    ap.add_argument("--reports", type=int, default=5, help="report points during the GAN")
    ap.add_argument("--warmup-d-updates", type=int, default=100, help="critic updates per early generator update")
    ap.add_argument("--n-patients", type=int, default=20000)
    ap.add_argument("--n-codes", type=int, default=1000)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("synthetic", n_patients=args.n_patients, n_codes=args.n_codes)
    s = CorGAN(warmup_d_updates=args.warmup_d_updates)
    X = torch.as_tensor(s._prepare_fit(data))
    s.init_training(s.n_features_, 0)
    opt, g = s.optimizers_, torch.Generator().manual_seed(0)
    real = X.mean(0).numpy()

    def step(key: str) -> float:
        opt[key].zero_grad()
        loss = s.loss(X[torch.randint(len(X), (s.batch_size,), generator=g)], key)
        loss.backward()
        opt[key].step()
        return float(loss.detach())

    t0 = time.perf_counter()
    for _ in range(args.pretrain_steps):
        step("ae")
    ae = s.modules_["ae"].eval()
    with torch.no_grad():
        rec = torch.sigmoid(ae.decode_logits(ae.encode(X[:2000])))
        bce = float(F.binary_cross_entropy(rec, X[:2000], reduction="none").sum(1).mean())
    ae.train()
    p = rec.numpy()
    print(f"pretrain {args.pretrain_steps} steps: BCE/record {bce:.1f}, mean p {p.mean():.4f} (data {real.mean():.4f}),"
          f" prevalence r thresholded {prevalence_r(real, p >= 0.5):.3f}, of probabilities {prevalence_r(real, p):.3f}"
          f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    every = max(1, args.gan_steps // max(1, args.reports))
    for i in range(args.gan_steps):
        for _ in range(s.warmup_d_updates if i < s.warmup_steps else s.d_updates):
            d = step("d")
        gl = step("g")
        if (i + 1) % every == 0 or i + 1 == args.gan_steps:
            mods = s.modules_.eval()
            with torch.no_grad():
                p = s.decode(mods["gen"](torch.randn(2000, mods["gen"].width, generator=g))).numpy()
            mods.train()
            print(f"gan {i + 1}: critic loss {d:.4f}, generator loss {gl:.4f}, mean p {p.mean():.4f}, codes >= 0.5 "
                  f"per record {(p >= 0.5).sum(1).mean():.2f}, prevalence r thresholded "
                  f"{prevalence_r(real, p >= 0.5):.3f}, of probabilities {prevalence_r(real, p):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
