"""Data-parallel training (models/distributed.py): 2 gloo processes on CPU against one process with the same batch.

Tolerance: every rank draws each row's noise exactly as one process does (RowDraws), so the only difference is
the order of the floating-point sums (the gradient of the global mean is the ranks' weighted sum of their own
means): a few float32 ulps per step, which Adam's normalised steps keep at ~1e-7 relative over a few steps.
rtol 1e-5 is two orders above that and far below any real difference (a wrong weighting or noise draw changes the
losses in the second digit).
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
from ehrbench.models.distributed import RowDraws, rows

EXACT = ["ehrdiff", "vae", "emrwgan", "tabddpm"]  # row-separable losses: mean (ehrdiff, emrwgan, tabddpm), sum (vae)
BATCH = 251  # odd global batches (251 and the epoch's last 229 rows): uneven slices 126/125 and 115/114
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(name: str, workdir: Path) -> dict[str, torch.Tensor]:
    """Train a tiny `name` (global batch BATCH) for STEPS steps into workdir; its final state."""
    data = load_dataset("synthetic", n_patients=600, n_codes=40, seed=3)
    synth = build_synthesizer(name, **{**TINY_PARAMS[name], "batch_size": BATCH})
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

        def keeping(path, synth, opts, phase, step, completed):
            save(path, synth, opts, phase, step, completed)
            if step == keep_step and phase not in completed:
                shutil.copy(path, path.with_name(f"step{step}.pt"))
        trainer_mod.save_checkpoint = keeping
    states = {name: train(name, Path(root) / name) for name in names}
    torch.save(states, Path(root) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def spawn(root: Path, names: list[str], keep_step: int | None = None) -> list[dict]:
    mp.spawn(worker, args=(2, free_port(), str(root), names, keep_step), nprocs=2, join=True)
    return [torch.load(root / f"rank{r}.pt") for r in range(2)]


def losses(workdir: Path) -> list[tuple[str, int, dict]]:
    rows_ = [json.loads(line) for line in (workdir / "train_stats.jsonl").read_text().splitlines()]
    return [(r["phase"], r["step"], r["loss"]) for r in rows_]


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
    assert [rows(251, r, 2) for r in range(2)] == [(0, 126), (126, 251)]
    assert [rows(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
    assert [rows(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_row_draws_slice_the_single_process_numbers():
    def draws(n: int) -> list[torch.Tensor]:
        torch.manual_seed(5)
        x = torch.zeros(n, 3)
        return [torch.randn(n, 2), torch.rand(n), torch.randint(0, 9, (n, 4)), torch.randn_like(x),
                torch.empty(n, 3).normal_(), torch.nn.functional.dropout(torch.ones(n, 3), 0.5), torch.randn(7)]

    whole = draws(11)
    for lo, hi in (rows(11, r, 2) for r in range(2)):
        with RowDraws(lo, hi, 11):
            part = draws(hi - lo)
        for w, p in zip(whole[:-1], part[:-1]):
            assert torch.equal(w[lo:hi], p)
        assert torch.equal(whole[-1], part[-1])  # not a per-row draw: made whole, the same on every rank


def test_dp_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="trainer.dp cannot run under torchrun"):
        Trainer(device="cpu", dp={"epsilon": 10.0, "delta": 1e-5})


def test_two_processes_match_one(tmp_path):
    t0 = time.perf_counter()
    ranks = spawn(tmp_path / "ddp", EXACT + ["medgan"])
    for name in EXACT:
        single = train(name, tmp_path / "single" / name)
        assert_same_losses(losses(tmp_path / "ddp" / name), losses(tmp_path / "single" / name))
        assert_same_state(ranks[0][name], single)
        assert_same_state(ranks[0][name], ranks[1][name], exact=True)  # every rank holds the same weights
    # medGAN's batch norm and minibatch averaging see each rank's rows only (as in DDP without SyncBatchNorm): not
    # equal to one process, but the ranks stay in step (rank 0's batch-norm statistics) and train normally
    assert_same_state(ranks[0]["medgan"], ranks[1]["medgan"], exact=True)
    assert [s for _, s, _ in losses(tmp_path / "ddp" / "medgan")] == [1, 2, 3, 4] * 2
    # only rank 0 wrote: one stats file per run and its final checkpoint
    assert sorted(p.name for p in (tmp_path / "ddp" / "ehrdiff").iterdir()) == ["checkpoint.pt", "train_stats.jsonl"]
    print(f"2-process run of {len(EXACT) + 1} generators and references: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow  # two more 2-process starts: 20-40 s on the 2-core box
def test_resume_after_a_kill(tmp_path):
    """A 2-process run killed after its step-2 checkpoint and started again ends where an uninterrupted 1-process
    run does (steps 3-4 and the final weights)."""
    spawn(tmp_path / "first", ["ehrdiff"], keep_step=2)
    resumed = tmp_path / "resumed"
    (resumed / "ehrdiff").mkdir(parents=True)
    shutil.copy(tmp_path / "first" / "ehrdiff" / "step2.pt", resumed / "ehrdiff" / "checkpoint.pt")
    ranks = spawn(resumed, ["ehrdiff"])
    single = train("ehrdiff", tmp_path / "single")
    assert_same_losses(losses(resumed / "ehrdiff"), losses(tmp_path / "single")[2:])
    assert_same_state(ranks[0]["ehrdiff"], single)


@pytest.mark.slow
def test_torchrun_run_benchmark(tmp_path):
    """`torchrun --nproc_per_node=2 run_benchmark.py`: one run directory, written once, the 1-process losses."""
    args = ["model=ehrdiff", "trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=30",
            *[f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_PARAMS["ehrdiff"].items()],
            "model.batch_size=61"]
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
    assert_same_losses(losses(ddp), losses(one))
    n_results = len((one / "results.jsonl").read_text().splitlines())
    assert len((ddp / "results.jsonl").read_text().splitlines()) == n_results
