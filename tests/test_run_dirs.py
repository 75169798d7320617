"""Run directories never contradict themselves: settings-aware skip and reports, locks, atomic outputs, one-sentence
errors before any work, repository-relative paths, divergence and the smaller cases of issue #12."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ehrbench.models import pipeline
from ehrbench.models import Trainer, TrainingDiverged, build_synthesizer
from ehrbench.reports import build_tables, load_runs
from tests.conftest import REPO, TINY_PARAMS, compose, run_cli

TINY = ["trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=20"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def cli(runs: Path, *extra: str, cwd: Path = REPO, wait: bool = True):
    tiny = TINY[:2] if any(e.startswith("data=") for e in extra) else TINY  # n_patients/n_codes: simulator only
    if wait and cwd == REPO:
        return run_cli("model=vae", *tiny, f"paths.runs={runs}", *extra)
    args = [sys.executable, str(REPO / "run_benchmark.py"), "model=vae", *tiny, f"paths.runs={runs}", *extra]
    if not wait:
        # SIGINT back to its default: a test runner started in the background (`cmd &`) inherits it ignored
        return subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def cell(runs: Path, model: str = "vae", seed: int = 0, data: str = "synthetic") -> Path:
    return runs / "default" / data / model / f"seed_{seed}"


def one_sentence(out) -> str:
    """The run failed with exit code 1 and exactly one line on stderr (no traceback); returns that line."""
    assert out.returncode == 1, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete CLI run (vae, tiny data), shared by the cases that only read or refuse it."""
    runs = tmp_path_factory.mktemp("finished")
    out = cli(runs)
    assert out.returncode == 0, out.stderr
    return runs


# 1. reports: different settings of one model are different rows ---------------------------------------------------
def test_report_splits_models_by_settings(tmp_path):
    base = ["model=vae", *TINY]
    for i, extra in enumerate([[], ["model.lr=0.0001"]]):
        for seed in (0, 1):
            d = tmp_path / f"v{i}" / f"seed_{seed}"
            info = pipeline.run(compose([*base, *extra, f"seed={seed}"]), d)
            assert info["settings_hash"] and info["config_hash"]
    rows = [json.loads(l) for l in (d / "results.jsonl").read_text().splitlines()]
    assert {r["settings_hash"] for r in rows} == {info["settings_hash"]}
    old = json.loads((d / "run.json").read_text())
    del old["settings_hash"]  # an old run: the hash is computed from its recorded config
    (d / "run.json").write_text(json.dumps(old))
    rs = load_runs(tmp_path)
    assert rs.runs["settings_hash"].nunique() == 2 and rs.runs["ok"].all()
    (table,) = build_tables(rs)
    assert set(table.models) == {"vae [model.lr=0.001]", "vae [model.lr=0.0001]"}
    assert (table.summary["runs_ok"] == 2).all()
    assert any("different settings (model.lr)" in n for n in table.notes)


# 2. a changed command over a finished run is refused before anything changes ---------------------------------------
def test_changed_settings_refused_and_nothing_changes(finished):
    d = cell(finished)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    out = cli(finished, "n_samples=50")
    line = one_sentence(out)
    assert "already holds a complete run made with other settings (n_samples: 500 -> 50)" in line  # trainer=debug: 500
    assert "pass rerun=true" in line and "choose another directory" in line
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before  # .hydra/config.yaml included
    same = cli(finished, "trainer.progress=true")  # a key that does not change results: still the same run
    assert same.returncode == 0 and "skipping" in same.stdout
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_rerun_replaces_every_output(tmp_path):
    assert cli(tmp_path).returncode == 0
    out = cli(tmp_path, "n_samples=50", "rerun=true")
    assert out.returncode == 0, out.stderr
    d = cell(tmp_path)
    assert len(np.load(d / "synthetic.npz")["X"]) == 50
    assert "n_samples: 50" in (d / ".hydra" / "config.yaml").read_text()
    assert not (d / "run.lock").exists()


# 3. two runs in one directory ---------------------------------------------------------------------------------------
def test_two_processes_one_directory(tmp_path):
    slow = ["trainer.max_steps=150", "model.epochs=400"]
    procs = [cli(tmp_path, *slow, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = next((o, p) for o, p in zip(outs, procs) if p.returncode == 1)
    lines = [l for l in loser[0][1].splitlines() if l.strip()]
    winner_pid = next(p.pid for p in procs if p.returncode == 0)
    assert len(lines) == 1 and f"in use by process {winner_pid}" in lines[0], lines
    d = cell(tmp_path)
    steps = [json.loads(l)["step"] for l in (d / "train_stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer only
    assert json.loads((d / "run.json").read_text())["status"] == "ok" and not (d / "run.lock").exists()


def test_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = cell(tmp_path)
    d.mkdir(parents=True)
    (d / "run.lock").write_text(f"{dead.pid}\n")
    out = cli(tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"from process {dead.pid}, which is no longer running" in out.stderr


# 4. a corrupt checkpoint names the file and the way out -------------------------------------------------------------
def test_corrupt_checkpoint(tmp_path, tiny_data):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    m = build_synthesizer("vae", **TINY_PARAMS["vae"])
    t = Trainer(device="cpu", max_steps=4, progress=False, workdir=tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint.pt is unreadable \(.*\); delete it, or pass rerun=true"):
        m.fit(tiny_data, t)
    runs = tmp_path / "runs"
    d = cell(runs)
    d.mkdir(parents=True)
    (d / "checkpoint.pt").write_bytes(b"garbage")
    line = one_sentence(cli(runs))
    assert f"{d / 'checkpoint.pt'} is unreadable" in line and "weights_only" not in line
    assert cli(runs, "rerun=true").returncode == 0


# 5. kill -9 while synthetic.npz is written leaves no truncated file ------------------------------------------------
KILL_SCRIPT = """
import sys, time, numpy as np
from pathlib import Path
import run_benchmark  # noqa: F401
from ehrbench.models import pipeline
from tests.conftest import compose
def slow(f, **arrays):
    f.write(b"PK\\x03\\x04 half a zip")
    f.flush()
    Path(sys.argv[2]).write_text("writing")
    time.sleep(120)
np.savez_compressed = slow
pipeline.run(compose(sys.argv[3:]), Path(sys.argv[1]))
"""


def test_kill_during_npz_write_keeps_previous_file(tmp_path):
    d, marker = tmp_path / "run", tmp_path / "marker"
    d.mkdir()
    np.savez_compressed(d / "synthetic.npz", X=np.zeros((2, 2)))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(d), str(marker), "model=vae", *TINY], cwd=REPO,
                            env=ENV)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the run never reached the npz write"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert np.array_equal(np.load(d / "synthetic.npz")["X"], np.zeros((2, 2)))  # the old file, whole


# 6. a wrong setting from the command line writes nothing ----------------------------------------------------------
def test_validation_from_the_command_line_writes_nothing(tmp_path):
    line = one_sentence(cli(tmp_path, "model.batch_size=0"))
    assert line == "error: model.batch_size must be >= 1, got 0"
    assert not any(tmp_path.rglob("*"))  # nothing written, not even an empty cell folder


# 7. user errors are one sentence; Ctrl-C is one line and status "interrupted" ---------------------------------------
@pytest.mark.parametrize("sig, code, first", [(signal.SIGINT, 130, "interrupted: "),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM): ")])
def test_ctrl_c_and_sigterm_are_one_line_and_recorded(tmp_path, sig, code, first):
    """Ctrl-C, and SIGTERM as batch schedulers (SLURM, `timeout`) stop jobs: one line, status "interrupted"."""
    proc = cli(tmp_path, "trainer.max_steps=100000", "model.epochs=100000", "trainer.checkpoint_every=20",
               wait=False)
    d = cell(tmp_path)
    deadline = time.time() + 300
    while not (d / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)  # generous: a loaded 2-core CI box
    assert proc.returncode == code, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(first) and "Traceback" not in err, err
    assert json.loads((d / "run.json").read_text())["status"] == "interrupted"


def test_missing_file_is_one_sentence_and_traceback_on_request(tmp_path):
    args = ["model=external", "model.path=nowhere.npz"]
    assert "nowhere.npz: no such file" in one_sentence(cli(tmp_path, *args))
    full = subprocess.run([sys.executable, "run_benchmark.py", *TINY, f"paths.runs={tmp_path}", *args], cwd=REPO,
                          env={**ENV, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True)
    assert full.returncode == 1 and "Traceback" in full.stderr


# 8. relative paths start at the repository root --------------------------------------------------------------------
def test_relative_paths_from_repo_root(tmp_path):
    X = (np.random.default_rng(0).random((60, 4)) < 0.4).astype(np.float32)
    np.savez(tmp_path / "m.npz", X=X, columns=np.array(["a", "b", "c", "d"]))
    rel = os.path.relpath(tmp_path / "m.npz", REPO)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cli(tmp_path / "runs", "data=matrix", f"data.path={rel}", "metrics=fast", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    miss = cli(tmp_path / "runs", "data=diabetes130", "data.path=no/such/folder", "+data.url=http://127.0.0.1:9/x",
               cwd=elsewhere)
    line = one_sentence(miss)
    assert f"nothing at data.path {REPO / 'no/such/folder'}" in line and "download fallback failed" in line


# 9. divergence: runaway weights stop training; messages name only files that exist ---------------------------------
def test_runaway_weights_stop_medgan(tmp_path, tiny_data):
    m = build_synthesizer("medgan", **{**TINY_PARAMS["medgan"], "lr": 1e6})
    t = Trainer(device="cpu", max_steps=20, checkpoint_every=50, log_every=1, progress=False, workdir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"medgan: the weights ran away .* no checkpoint had been written"):
        m.fit(tiny_data, t)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_nan_message_names_existing_checkpoint_only(tmp_path, tiny_data, monkeypatch):
    m = build_synthesizer("vae", **TINY_PARAMS["vae"])
    real_loss, calls = m.loss, {"n": 0}

    def loss(x, key):
        calls["n"] += 1
        return real_loss(x, key) * (float("nan") if calls["n"] == 1 else 1.0)

    monkeypatch.setattr(m, "loss", loss)
    t = Trainer(device="cpu", max_steps=4, checkpoint_every=2, progress=False, workdir=tmp_path)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet") as e:
        m.fit(tiny_data, t)
    assert "checkpoint.pt" not in str(e.value)


# 10. smaller cases --------------------------------------------------------------------------------------------------
def test_run_json_that_is_not_an_object(finished):
    d = cell(finished)
    (d / "run.json").write_text("[]")
    out = cli(finished)
    assert out.returncode == 0, out.stderr
    assert "holds a JSON list, not a run record" in out.stderr
    assert json.loads((d / "run.json").read_text())["status"] == "ok"


def test_external_npz_with_object_columns(tmp_path):
    from ehrbench.models.external import read_matrix

    p = tmp_path / "s.npz"
    np.savez(p, X=np.zeros((3, 2)), columns=np.array(["a", None], dtype=object))
    with pytest.raises(ValueError, match=r"s.npz: array 'columns' holds Python objects.*np.array\(names, dtype=str\)"):
        read_matrix(p)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_finished_directory_is_skipped(tmp_path):
    assert cli(tmp_path).returncode == 0
    paths = [p for p in tmp_path.rglob("*")] + [tmp_path]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        out = cli(tmp_path)
        assert out.returncode == 0 and "skipping" in out.stdout, out.stderr
    finally:
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_skip_writes_nothing(finished, monkeypatch):
    """What makes a read-only finished directory work (also checked as root): a skip opens nothing for writing."""
    d = cell(finished)
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*")} | {d: d.stat().st_mtime_ns}
    out = cli(finished)
    assert out.returncode == 0 and "skipping" in out.stdout
    assert ({p: p.stat().st_mtime_ns for p in d.rglob("*")} | {d: d.stat().st_mtime_ns}) == before


def test_matrix_stray_value_reported(tmp_path, caplog):
    from ehrbench.data import load_dataset

    X = (np.random.default_rng(0).random((50, 3)) < 0.5).astype(float)
    X[7, 1] = 2.0
    np.savez(tmp_path / "m.npz", X=X, columns=np.array(["a", "b", "c"]))
    with caplog.at_level("WARNING"):
        d = load_dataset("matrix", path=str(tmp_path / "m.npz"))
    assert d.kinds == ("binary", "continuous", "binary")
    assert d.meta["mostly_binary_continuous"] == {"b": {"value": 2.0, "row": 7, "non_binary_cells": 1}}
    assert "hold mostly 0/1 but are continuous" in caplog.text and "'b'" in caplog.text
