"""CPU training-step speed of our EHRDiff (MIMIC and CinC networks) and TabDDPM against the official code, interleaved.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_official.py --ehrdiff-repo DIR --tabddpm-repo DIR
       [--nets mimic,cinc,tabddpm,tabddpm_diabetes130] [--steps 60] [--warmup 10] [--rounds 3] [--threads 1] [--out official.json]
DIR: checkouts of github.com/sczzz3/EHRDiff and github.com/yandex-research/tab-ddpm (their own code is imported from
there, never copied; EHRDiff's LinearModel needs `pip install einops`). Data, each net on the shape it was made for:
- mimic: the MIMIC-III network and batch (1,024) on load_dataset("synthetic") of MIMIC-III's 41,868 x 1,782 shape;
- cinc: the CinC 2012 network and batch (256) on PhysioNet 2012 set A (needs the data under EHRBENCH_DATA);
- tabddpm: the tuned configs' MLP (256, 256) and batch 4,096 on PhysioNet 2012 set A, quantile-normalised;
- tabddpm_diabetes130: the same on Diabetes-130 (mostly binary: the multinomial diffusion's cost).
Loops, each with its own fresh model from the same seed:
- official: the training loop of EHRDiff runners/train_dpdm_base.py (DataLoader(shuffle=True) over the rows,
  DistributedDataParallel on a one-process gloo group, AdamW, cosine warm-up schedule, ExponentialMovingAverage of
  model/ema.py, loss score_losses.EDMLoss through denoiser.EDMDenoiser) or of TabDDPM scripts/train.py (shuffled
  batches as lib's FastTensorDataLoader, mixed_loss, AdamW, linear lr annealing, EMA of every step);
- official-noddp (EHRDiff): the same without DistributedDataParallel, the official step at its leanest;
- ours: the shared Trainer of run_benchmark (trainer=default, budget=steps), the step every CPU leaderboard runs.
Each round runs every loop of a net back to back, each in a fresh process, in rotating order, so that drift in the
machine's speed hits all alike; steps/s counts the steps after --warmup. Prints per-round ratios ours / official and their medians.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_speed  # noqa: E402  (binds `ehrbench` to this checkout)

from ehrbench.data import load_dataset  # noqa: E402
from ehrbench.models import Trainer, build_synthesizer  # noqa: E402

NETS = ("mimic", "cinc", "tabddpm", "tabddpm_diabetes130")
MODEL = {"mimic": "ehrdiff", "cinc": "ehrdiff", "tabddpm": "tabddpm", "tabddpm_diabetes130": "tabddpm"}


def net_params(net: str) -> dict:
    """Our hyperparameters of the net: benchmarks/model/<model>.yaml, for cinc overlaid by ehrdiff_cinc.yaml."""
    from omegaconf import OmegaConf

    over = [OmegaConf.load(ROOT / "benchmarks" / "model" / f"{n}.yaml")
            for n in ([MODEL[net]] + (["ehrdiff_cinc"] if net == "cinc" else []))]
    out = OmegaConf.to_container(OmegaConf.merge(*over), resolve=True)
    for k in ("name", "defaults"):
        out.pop(k, None)
    return out


def load_module(path: Path, name: str):
    """Import one official file by path (its package __init__ may pull in CUDA extensions)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def net_data(net: str):
    """The dataset each net was made for (EHRData; its .train rows feed the official loops)."""
    if net == "mimic":
        return bench_speed.mimic_like(41868, 1782)
    name = "diabetes130" if net == "tabddpm_diabetes130" else "physionet2012"
    root = Path(os.environ.get("EHRBENCH_DATA", ROOT.parent / "shared" / "data")) / name
    if not root.exists():
        raise FileNotFoundError(f"--nets {net} needs {name} under {root}; set EHRBENCH_DATA or drop the net")
    return load_dataset(name, path=str(root)) if name == "diabetes130" else load_dataset(name, path=str(root), sets=["a"])


def official_ehrdiff(repo: Path, net: str, X: np.ndarray, ddp: bool):
    """A closure running one step of EHRDiff's official training loop (runners/train_dpdm_base.py, no DP)."""
    sys.path.insert(0, str(repo))
    linear = load_module(repo / "model" / "linear_model.py", "official_linear_model")
    denoiser = load_module(repo / "denoiser.py", "official_denoiser")
    losses = load_module(repo / "score_losses.py", "official_score_losses")
    ema_mod = load_module(repo / "model" / "ema.py", "official_ema")
    p = net_params(net)
    kw = dict(z_dim=X.shape[1], time_dim=p.get("time_dim", 384), unit_dims=list(p.get("unit_dims", [1024, 384, 384, 384, 1024])))
    if p.get("random_fourier_features"):
        kw.update(random_fourier_features=True, learned_sinusoidal_dim=p.get("learned_sinusoidal_dim", 32))
    sigma_data = p.get("sigma_data", 0.14)
    model = denoiser.EDMDenoiser(model=linear.LinearModel(**kw), sigma_data=sigma_data, sigma_min=0.02, sigma_max=80.0)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    ema = ema_mod.ExponentialMovingAverage(model.parameters(), decay=0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    batch = p.get("batch_size", 1024)
    total = (len(X) // batch + 1) * 5000

    def cosine(step: int, warmup: int = 20000) -> float:  # transformers' get_cosine_schedule_with_warmup
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    loss_fn = losses.EDMLoss(p_mean=-1.2, p_std=1.2, sigma_data=sigma_data, n_classes=None).get_loss
    rows = [X[i] for i in range(len(X))]  # the official Dataset indexes a numpy array row by row
    loader = torch.utils.data.DataLoader(rows, shuffle=True, batch_size=batch)

    def batches():
        while True:
            yield from loader

    it = batches()

    def step() -> None:
        x = next(it).to(torch.float32)
        opt.zero_grad(set_to_none=True)
        loss = torch.mean(loss_fn(model, x, None))
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model.parameters())

    return step


def official_tabddpm(repo: Path, X: np.ndarray):
    """A closure running one step of TabDDPM's official loop (scripts/train.py Trainer) on quantile-normalised rows."""
    sys.path.insert(0, str(repo))
    from tab_ddpm import GaussianMultinomialDiffusion, MLPDiffusion  # official package
    from sklearn.preprocessing import QuantileTransformer

    binary = np.all((X == 0) | (X == 1), axis=0)
    qt = QuantileTransformer(output_distribution="normal", n_quantiles=max(min(len(X) // 30, 1000), 10),
                             subsample=int(1e9), random_state=0)
    Xn = qt.fit_transform(X[:, ~binary]) if (~binary).any() else X[:, :0]  # Diabetes-130: every column binary
    n_num, n_bin = int((~binary).sum()), int(binary.sum())
    net = MLPDiffusion(d_in=n_num + 2 * n_bin, num_classes=0, is_y_cond=False,
                       rtdl_params={"d_layers": [256, 256], "dropout": 0.0}, dim_t=128)
    diffusion = GaussianMultinomialDiffusion(num_classes=np.array([2] * n_bin), num_numerical_features=n_num,
                                             denoise_fn=net, num_timesteps=1000, gaussian_loss_type="mse",
                                             scheduler="cosine", device=torch.device("cpu"))
    diffusion.train()
    ema = copy.deepcopy(net)
    data = torch.from_numpy(np.concatenate([Xn, X[:, binary]], axis=1)).float()
    opt = torch.optim.AdamW(diffusion.parameters(), lr=1e-3, weight_decay=1e-5)
    state = {"perm": None, "i": 0, "step": 0}

    def step() -> None:
        if state["perm"] is None or state["i"] >= len(data):  # FastTensorDataLoader: shuffled copy per epoch
            state["perm"], state["i"] = data[torch.randperm(len(data))], 0
        x = state["perm"][state["i"]:state["i"] + 4096]
        state["i"] += 4096
        opt.zero_grad()
        lm, lg = diffusion.mixed_loss(x, {})
        (lm + lg).backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 1e-3 * (1 - state["step"] / 30000)
        with torch.no_grad():  # update_ema of scripts/utils_train.py, rate 0.999
            for targ, src in zip(ema.parameters(), net.parameters()):
                targ.detach().mul_(0.999).add_(src.detach(), alpha=1 - 0.999)
        state["step"] += 1

    return step


def time_official(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps - warmup):
        step()
    return (steps - warmup) / (time.perf_counter() - t0)


def time_ours(net: str, data, steps: int, warmup: int, workdir: Path) -> float:
    synth = build_synthesizer(MODEL[net], **net_params(net))
    trainer = Trainer(**bench_speed.profile("default", "cpu", steps, warmup, workdir), seed=0)
    synth.fit(data, trainer)
    return bench_speed.steady_steps_per_second(trainer.stats_path, trainer.log_every)


def time_cell(a: argparse.Namespace, net: str, loop: str) -> float:
    """Steps/s of one loop on one net, in this process."""
    data = net_data(net)
    torch.manual_seed(0)
    if loop == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            return time_ours(net, data, a.steps, a.warmup, Path(tmp))
    X = data.train.astype(np.float32)
    if MODEL[net] == "tabddpm":
        return time_official(official_tabddpm(a.tabddpm_repo, X), a.steps, a.warmup)
    if loop == "official":
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/store", rank=0, world_size=1)
    return time_official(official_ehrdiff(a.ehrdiff_repo, net, X, loop == "official"), a.steps, a.warmup)


def run(a: argparse.Namespace, argv: list[str]) -> dict:
    """Every round runs each loop of a net in a fresh process (so that one loop's process-wide switches, such as our
    trainer's denormal flush or a gloo group, never reach another), in rotating order."""
    cells = []
    for net in a.nets:
        loops = ["ours", "official"] + (["official-noddp"] if MODEL[net] != "tabddpm" else [])
        print(f"{net}: loops {', '.join(loops)}", flush=True)
        for r in range(a.rounds):
            for loop in loops[r % len(loops):] + loops[:r % len(loops)]:
                out = subprocess.run([sys.executable, __file__, *argv, "--cell", f"{net}:{loop}"], capture_output=True,
                                     text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{net}/{loop} failed: {out.stderr.strip()[-2000:]}")
                sps = json.loads(out.stdout.strip().splitlines()[-1])["steps_per_s"]
                cells.append({"net": net, "round": r, "loop": loop, "steps_per_s": sps})
                print(json.dumps(cells[-1]), flush=True)
    return {"cells": cells, "summary": summarise(cells)}


def summarise(cells: list[dict]) -> list[dict]:
    out = []
    for net in dict.fromkeys(c["net"] for c in cells):
        by = {}
        for c in cells:
            if c["net"] == net:
                by.setdefault(c["loop"], {})[c["round"]] = c["steps_per_s"]
        for loop in (k for k in by if k != "ours"):
            ratios = [by["ours"][r] / by[loop][r] for r in sorted(by[loop])]
            out.append({"net": net, "against": loop, "ours_steps_per_s": float(np.median(list(by["ours"].values()))),
                        "official_steps_per_s": float(np.median(list(by[loop].values()))),
                        "ratio_median": float(np.median(ratios)), "ratios": ratios})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ehrdiff-repo", type=Path, default=None, help="checkout of sczzz3/EHRDiff")
    ap.add_argument("--tabddpm-repo", type=Path, default=None, help="checkout of yandex-research/tab-ddpm")
    ap.add_argument("--nets", type=lambda s: s.split(","), default=list(NETS))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # net:loop, run in this process (internal)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    bad = [n for n in a.nets if n not in NETS]
    if bad:
        ap.error(f"unknown net '{bad[0]}'; valid choices: {', '.join(NETS)}")
    for flag, need in (("--ehrdiff-repo", {"mimic", "cinc"}), ("--tabddpm-repo", {"tabddpm", "tabddpm_diabetes130"})):
        repo = getattr(a, flag[2:].replace("-", "_"))
        if need & set(a.nets) and (repo is None or not repo.is_dir()):
            ap.error(f"{flag} must name a checkout of the official code for nets {', '.join(sorted(need & set(a.nets)))}")
    if a.warmup >= a.steps:
        ap.error(f"--warmup ({a.warmup}) must be below --steps ({a.steps})")
    torch.set_num_threads(a.threads)
    if a.cell is not None:
        net, loop = a.cell.split(":")
        print(json.dumps({"steps_per_s": time_cell(a, net, loop)}))
        return {}
    result = {"args": {k: str(v) for k, v in vars(a).items()}, "torch": torch.__version__, **run(a, argv)}
    print(f"\n{a.threads} threads, {a.steps} steps ({a.warmup} warm-up), {a.rounds} interleaved rounds\n")
    print("| net | against | ours steps/s | official steps/s | ours / official (per round) |\n|---|---|---|---|---|")
    for s in result["summary"]:
        print(f"| {s['net']} | {s['against']} | {s['ours_steps_per_s']:.2f} | {s['official_steps_per_s']:.2f} | "
              f"{s['ratio_median']:.2f} ({', '.join(f'{x:.2f}' for x in s['ratios'])}) |")
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
