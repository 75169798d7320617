"""Data-parallel training (models/distributed.py, torch's DistributedDataParallel): 2 gloo processes on CPU.

Exact where the loss is deterministic: medGAN's autoencoder pretraining (a mean over rows) and a VAE with its
reparameterisation noise at 0 (a sum over rows) equal one process on the same global batches up to the order of
floating-point sums: a few float32 ulps per step, which Adam's normalised steps keep at ~1e-7 relative, so rtol
1e-5 is far below any real difference (a wrong row weighting changes the losses in the second digit). Stochastic
losses (EHRDiff, TabDDPM, EMR-WGAN, medGAN's GAN) draw each rank's own noise: the ranks hold the same weights and
train as one process does (parity, not equality).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import REPO, TINY_PARAMS  # first: spawned ranks import this file, and must get this checkout
from ehrbench.data import load_dataset
from ehrbench.models import Trainer, build_synthesizer
from ehrbench.models import trainer as trainer_mod
from ehrbench.models.distributed import rows
from ehrbench.models.vae import VAE, vae_loss

STOCHASTIC = ["ehrdiff", "tabddpm", "emrwgan"]
BATCH = 251  # odd global batches (251 and the epoch's last 229 rows): uneven slices 126/125 and 115/114
STEPS = 4


class NoiselessVAE(VAE):
    """The VAE with its reparameterisation noise at 0: a deterministic loss summed over rows."""

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        return vae_loss(self.modules_["vae"], x, torch.zeros(len(x), self.latent_dim))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(name: str, workdir: Path) -> dict[str, torch.Tensor]:
    """Train a tiny `name` (global batch BATCH) for STEPS steps per phase into workdir; its final state."""
    data = load_dataset("synthetic", n_patients=600, n_codes=40, seed=3)
    params = {**TINY_PARAMS["vae" if name == "vae0" else name], "batch_size": BATCH}
    if name == "medgan":  # pretraining batches of 7 rows: slices 4/3, weights 4/7 and 3/7 (not 1/2 each)
        params["pretrain_batch_size"] = 7
    synth = NoiselessVAE(**params) if name == "vae0" else build_synthesizer(name, **params)
    trainer = Trainer(device="cpu", max_steps=STEPS, log_every=1, checkpoint_every=2, progress=False, seed=0,
                      workdir=workdir)
    synth.fit(data, trainer)
    return {k: v.clone() for k, v in synth.state_tensors().items()}


def worker(rank: int, world: int, port: int, root: str, names: list[str], keep_step: int | None) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if keep_step is not None:  # keep the checkpoint written at keep_step: the state a kill right after it leaves
        save = trainer_mod.save_checkpoint

        def keeping(path, synth, opts, phase, step, completed, clock=None):
            save(path, synth, opts, phase, step, completed, clock)
            if step == keep_step and phase not in completed:
                shutil.copy(path, path.with_name(f"step{step}.pt"))
        trainer_mod.save_checkpoint = keeping
    states = {name: train(name, Path(root) / name) for name in names}
    torch.save(states, Path(root) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def spawn(root: Path, names: list[str], keep_step: int | None = None) -> list[dict]:
    mp.spawn(worker, args=(2, free_port(), str(root), names, keep_step), nprocs=2, join=True)
    return [torch.load(root / f"rank{r}.pt") for r in range(2)]


def losses(workdir: Path, phase: str | None = None) -> list[tuple[str, int, dict]]:
    rows_ = [json.loads(line) for line in (workdir / "train_stats.jsonl").read_text().splitlines()]
    return [(r["phase"], r["step"], r["loss"]) for r in rows_ if phase is None or r["phase"] == phase]


def assert_same_losses(a: list, b: list) -> None:
    assert [(p, s) for p, s, _ in a] == [(p, s) for p, s, _ in b]  # one row per step: nothing written twice
    for (_, _, la), (_, _, lb) in zip(a, b):
        assert la.keys() == lb.keys()
        for k in la:
            assert la[k] == pytest.approx(lb[k], rel=1e-5), (k, la[k], lb[k])


def assert_same_state(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_rows_split_contiguously():
    assert [rows(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [rows(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]  # fewer rows than ranks: an empty slice


def test_dp_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="trainer.dp cannot run under torchrun"):
        Trainer(device="cpu", dp={"epsilon": 10.0, "delta": 1e-5})


def test_two_processes_match_one_where_the_loss_is_deterministic_and_train_alike_elsewhere(tmp_path):
    t0 = time.perf_counter()
    ranks = spawn(tmp_path / "ddp", ["vae0", "medgan", *STOCHASTIC])
    single = {name: train(name, tmp_path / "single" / name) for name in ["vae0", "medgan", *STOCHASTIC]}
    assert_same_losses(losses(tmp_path / "ddp" / "vae0"), losses(tmp_path / "single" / "vae0"))  # a sum over rows
    assert_same_state(ranks[0]["vae0"], single["vae0"])
    assert_same_losses(losses(tmp_path / "ddp" / "medgan", "pretrain"),  # a mean over rows
                       losses(tmp_path / "single" / "medgan", "pretrain"))
    for name in ["vae0", "medgan", *STOCHASTIC]:
        assert_same_state(ranks[0][name], ranks[1][name], exact=True)  # every rank holds the same weights
    for name in STOCHASTIC:  # own noise per rank: the same schedule, losses of the same size as one process's
        ddp, one = losses(tmp_path / "ddp" / name), losses(tmp_path / "single" / name)
        assert [(p, s) for p, s, _ in ddp] == [(p, s) for p, s, _ in one]
        for (_, _, la), (_, _, lb) in zip(ddp, one):
            for k in la:
                assert abs(la[k] - lb[k]) <= 0.5 * abs(lb[k]) + 0.5, (name, k, la[k], lb[k])
    # only rank 0 wrote: one stats file per run and its final checkpoint
    assert sorted(p.name for p in (tmp_path / "ddp" / "ehrdiff").iterdir()) == ["checkpoint.pt", "train_stats.jsonl"]
    print(f"2-process runs of 5 generators and their 1-process references: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow  # two more 2-process starts: 20-40 s on the 2-core box
def test_resume_after_a_kill(tmp_path):
    """A 2-process run killed after its step-2 checkpoint and started again ends where the uninterrupted 2-process
    run does (steps 3-4 and the final weights: each rank's random stream depends only on seed, phase, step, rank)."""
    first = spawn(tmp_path / "first", ["ehrdiff"], keep_step=2)
    resumed = tmp_path / "resumed"
    (resumed / "ehrdiff").mkdir(parents=True)
    shutil.copy(tmp_path / "first" / "ehrdiff" / "step2.pt", resumed / "ehrdiff" / "checkpoint.pt")
    ranks = spawn(resumed, ["ehrdiff"])
    assert_same_losses(losses(resumed / "ehrdiff"), losses(tmp_path / "first" / "ehrdiff")[2:])
    assert_same_state(ranks[0]["ehrdiff"], first[0]["ehrdiff"])


@pytest.mark.slow
def test_torchrun_run_benchmark(tmp_path):
    """`torchrun --nproc_per_node=2 run_benchmark.py`: one run directory, written once; medGAN's deterministic
    autoencoder pretraining has the 1-process losses."""
    args = ["model=medgan", "trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=30",
            *[f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_PARAMS["medgan"].items()],
            "model.pretrain_batch_size=61"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port())]
    subprocess.run([*torchrun, "run_benchmark.py", *args, f"paths.runs={tmp_path / 'ddp'}"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "run_benchmark.py", *args, f"paths.runs={tmp_path / 'one'}"], cwd=REPO,
                   env=env, check=True, capture_output=True)
    ddp, one = (next((tmp_path / d).glob("*/*/*/seed_0")) for d in ("ddp", "one"))
    info = json.loads((ddp / "run.json").read_text())
    assert info["status"] == "ok" and info["world_size"] == 2
    assert not (ddp / "run.lock").exists() and not (ddp / "checkpoint.pt").exists()
    assert_same_losses(losses(ddp, "pretrain"), losses(one, "pretrain"))
    n_results = len((one / "results.jsonl").read_text().splitlines())
    assert len((ddp / "results.jsonl").read_text().splitlines()) == n_results
