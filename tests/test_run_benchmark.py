"""End to end: run_benchmark.py writes a complete run directory for every model; failures and kills are safe."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ehrbench.models import pipeline
from ehrbench.models import SYNTHESIZERS, load_entry_points
from tests.conftest import REPO, TINY_PARAMS, compose, run_cli, skip_unavailable

TINY_DATA = ["data.n_patients=300", "data.n_codes=30"]


def tiny_overrides(name: str) -> list[str]:
    return [f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_PARAMS.get(name, {}).items()]


load_entry_points()  # installed plugins get the same end-to-end test (their configs: conftest.compose)


@pytest.mark.parametrize("name", sorted(n for n in SYNTHESIZERS if n != "external"))
def test_complete_run_directory(name, tmp_path):
    skip_unavailable(name)
    cfg = compose([f"model={name}", "trainer=debug", "metrics=fast", *TINY_DATA, *tiny_overrides(name)])
    info = pipeline.run(cfg, tmp_path)
    assert info["status"] == "ok"
    saved = json.loads((tmp_path / "run.json").read_text())
    for key in ("n_params", "fit_seconds", "sample_seconds", "steps_per_second", "peak_memory_mb", "device",
                "peak_memory_scope", "versions", "git_commit", "status", "config", "split"):
        assert key in saved, key
    torch_model = issubclass(SYNTHESIZERS[name], torch_base())
    assert (saved["sample_flops_per_1000"] > 0) if torch_model else saved["sample_flops_per_1000"] is None
    from importlib.metadata import version
    assert saved["torch_threads"] == torch.get_num_threads()
    assert saved["versions"]["scikit-learn"] == version("scikit-learn") and saved["versions"]["opacus"] == version("opacus")
    rows = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows and all({"data", "model", "seed", "metric", "family", "goal", "value", "seconds", "status"} <= set(r)
                        for r in rows)
    npz = np.load(tmp_path / "synthetic.npz")
    assert npz["X"].shape == (500, 35) and len(npz["columns"]) == 35  # trainer=debug draws 500 records
    assert (tmp_path / "synthesizer" / "config.json").exists() and (tmp_path / "synthesizer" / "state.pt").exists()
    assert not (tmp_path / "checkpoint.pt").exists()


def torch_base():
    from ehrbench.models.base import TorchSynthesizer

    return TorchSynthesizer


def test_split_from_seed_gives_each_seed_its_own_split_in_one_table(tmp_path):
    from ehrbench.models.rundir import data_key, settings_hash

    base = ["model=independent", "trainer=debug", "metrics=fast", *TINY_DATA, "seed=2"]
    own = pipeline.run(compose([*base, "split_from_seed=true"]), tmp_path / "own")
    fixed = pipeline.run(compose(base), tmp_path / "fixed")
    assert own["split"]["seed"] == 2 and fixed["split"]["seed"] == 0
    assert data_key(own["config"]["data"]) == data_key(fixed["config"]["data"])  # one data config: one table
    legacy = {k: v for k, v in fixed["config"].items() if k != "split_from_seed"}  # runs recorded before the key
    assert settings_hash(legacy) == fixed["settings_hash"] != own["settings_hash"]


def test_failing_run_still_writes_run_json(tmp_path):
    cfg = compose(["trainer=debug", "metrics=fast", *TINY_DATA, "model.batch_size=-3"])
    with pytest.raises(Exception):
        pipeline.run(cfg, tmp_path)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["status"].startswith("error: ")


def test_cli_unknown_model_lists_valid_names(tmp_path):
    out = run_cli("model=nope", f"paths.runs={tmp_path}")
    assert out.returncode == 1 and "\n" not in out.stderr.strip()
    assert "ehrdiff" in out.stderr and "independent" in out.stderr


def _cli(tmp_path, *extra):
    # the tiny architecture first, then a schedule long enough (200 steps, a checkpoint every 10) to be killed in
    args = [sys.executable, "run_benchmark.py", "model=ehrdiff", "trainer=debug", "metrics=fast", *TINY_DATA,
            *tiny_overrides("ehrdiff"), "model.epochs=100", "trainer.max_steps=200", "trainer.checkpoint_every=10",
            f"paths.runs={tmp_path}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return args, env


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL a real run after its first checkpoint, rerun the same command, compare with an uninterrupted run."""
    args, env = _cli(tmp_path / "killed")
    run_dir = tmp_path / "killed" / "default" / "synthetic" / "ehrdiff" / "seed_0"
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((run_dir / "run.json").read_text())["status"]
    if status == "ok":
        pytest.skip("the run finished before it could be killed")
    if not (run_dir / "checkpoint.pt").exists():
        pytest.skip("the run was killed before its first checkpoint")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 0 < ckpt["step"] < 200 and ckpt["completed"] == []   # killed in the middle of training
    subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True)
    ref_args, _ = _cli(tmp_path / "ref")
    subprocess.run(ref_args, cwd=REPO, env=env, check=True, capture_output=True)
    ref_dir = tmp_path / "ref" / "default" / "synthetic" / "ehrdiff" / "seed_0"
    a = torch.load(run_dir / "synthesizer" / "state.pt", weights_only=True)
    b = torch.load(ref_dir / "synthesizer" / "state.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(run_dir / "synthetic.npz")["X"], np.load(ref_dir / "synthetic.npz")["X"])
    # a complete run directory is skipped on the next identical command
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "skipping" in out.stdout
