"""Issue #27: reports never touch the network, "complete" means the outputs are there, writes fail in one sentence
and leave nothing half-written, hostile files and small splits are refused, SIGTERM and CLI slips are one line."""
import json
import os
import resource
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import run_benchmark
from ehrbench.models import pipeline
from ehrbench.data import load_dataset
from ehrbench.data.cache import fetch
from ehrbench.models import Synthesizer, build_synthesizer
from ehrbench.reports.__main__ import main as reports_main
from ehrbench.reports.archive import pack, unpack
from tests.conftest import REPO, compose, run_cli
from tests.test_reports_load import make_run

TINY = ["model=vae", "trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=20"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


# 1. a report never downloads, and reads no file named by the runs ------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "file"])
def test_a_report_never_fetches_a_recorded_url(tmp_path, local_http, scheme, monkeypatch):
    base, _, seen = local_http
    secret = tmp_path / "secret.zip"
    secret.write_bytes(b"not for the report")
    url = f"{base}/x.zip" if scheme == "http" else f"file://{secret}"
    monkeypatch.setenv("EHRBENCH_CACHE", str(tmp_path / "cache"))
    data = {"name": "diabetes130", "path": str(tmp_path / "absent"), "download": True, "url": url, "sha256": "0" * 64}
    make_run(tmp_path / "runs", "vae", 0, {"auc": 0.7}, data=data)
    pack(tmp_path / "runs", tmp_path / "evil.tar.gz")
    assert reports_main([str(tmp_path / "evil.tar.gz"), "--out", str(tmp_path / "out")]) == 0
    assert seen == [] and not (tmp_path / "cache").exists()  # no request, nothing copied into the cache
    assert "prevalence" in (tmp_path / "out" / "leaderboard.md").read_text()  # the figure was attempted


def test_fetch_takes_only_http_addresses(tmp_path):
    with pytest.raises(ValueError, match="only http\\(s\\) addresses are fetched"):
        fetch(f"file://{REPO / 'README.md'}", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_recorded_path_is_never_read(tmp_path):
    from ehrbench.reports.figures import loader_options

    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n0,1\n1,0\n0,0\n1,1\n")
    recorded = {"name": "matrix", "path": str(secret), "split_seed": 0}
    with pytest.raises(ValueError, match="no path for dataset 'matrix': give it as --data matrix=PATH"):
        loader_options(recorded, {})
    assert loader_options(recorded, {"matrix": "mine.csv"}) == {"split_seed": 0, "path": "mine.csv"}
    shipped = loader_options({"name": "diabetes130", "path": "/elsewhere", "download": True, "url": "x"}, {})
    assert set(shipped) == {"path"} and shipped["path"].endswith("diabetes130") and "/elsewhere" not in shipped["path"]
    with pytest.raises(ValueError, match="data.n_patients must be >= 3"):  # recorded values: types and ranges checked
        loader_options({"name": "synthetic", "n_patients": -1}, {})


def test_the_report_cli_names_a_bad_data_option_and_an_out_file(tmp_path, capsys):
    make_run(tmp_path / "runs", "vae", 0, {"auc": 0.7})
    (tmp_path / "file").write_text("x")
    assert reports_main([str(tmp_path / "runs"), "--out", str(tmp_path / "file")]) == 2
    assert reports_main([str(tmp_path / "runs"), "--data", "nopath"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: --out {tmp_path / 'file'} is a file, not a folder; give a folder for the report",
                   "error: --data takes NAME=PATH (e.g. --data diabetes130=/data/uci), got 'nopath'"]


# 2. complete means the outputs are there, as recorded -------------------------------------------------------------
def cli(runs: Path, *extra: str, limit: int | None = None) -> subprocess.CompletedProcess:
    if limit is None:
        return run_cli(*TINY, f"paths.runs={runs}", *extra)

    def lower_limit():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "run_benchmark.py", *TINY, f"paths.runs={runs}", *extra], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=lower_limit)


def values(d: Path) -> dict:
    return {r["metric"]: r["value"] for r in map(json.loads, (d / "results.jsonl").read_text().splitlines())}


def test_lost_outputs_are_made_again(tmp_path):
    d = tmp_path / "default" / "synthetic" / "vae" / "seed_0"
    out = cli(tmp_path)
    assert out.returncode == 0 and f"next: python -m reports {tmp_path / 'default'} " in out.stdout  # the tag's folder
    first, X, stats = values(d), np.load(d / "synthetic.npz")["X"], (d / "train_stats.jsonl").read_bytes()
    record = json.loads((d / "run.json").read_text())
    assert set(record["outputs"]) == {"results.jsonl", "synthetic.npz", "synthesizer/config.json",
                                      "synthesizer/state.pt"}

    (d / "results.jsonl").unlink()  # the scores lost, the generator kept: sample and score again, no training
    out = cli(tmp_path)
    assert out.returncode == 0 and "results.jsonl is missing: sampling and scoring its saved synthesizer/ again" \
        in out.stderr, out.stderr
    again = json.loads((d / "run.json").read_text())
    assert values(d) == pytest.approx(first, nan_ok=True) and np.array_equal(np.load(d / "synthetic.npz")["X"], X)
    assert again["fit_seconds"] == record["fit_seconds"] and (d / "train_stats.jsonl").read_bytes() == stats

    (d / "results.jsonl").write_text("{}\n")  # a changed output is not the recorded one
    assert "results.jsonl changed since the run" in cli(tmp_path).stderr

    import shutil

    shutil.rmtree(d / "synthesizer")  # the generator lost: train again from the start
    out = cli(tmp_path)
    assert out.returncode == 0 and "synthesizer/config.json is missing" in out.stderr and \
        "running it again from the start" in out.stderr, out.stderr
    assert (d / "synthesizer" / "state.pt").is_file() and values(d) == pytest.approx(first, nan_ok=True)
    assert "already complete" in cli(tmp_path).stdout


def test_decide_on_records(tmp_path):
    from ehrbench.models.rundir import ARCHIVED, Previous, decide

    (tmp_path / "results.jsonl").write_text("{}\n")
    old = Previous("ok", {}, record={"status": "ok"})  # an older record without "outputs": existence is checked
    assert decide(tmp_path, old, True, "", False) == "retrain"  # no sample, no synthesizer/
    (tmp_path / ARCHIVED).write_text("")  # an extracted archive's run is complete with its scores
    assert decide(tmp_path, old, True, "", False) == "skip"
    (tmp_path / "results.jsonl").unlink()
    assert decide(tmp_path, old, True, "", False) == "retrain"


def test_an_extracted_archive_marks_its_runs(tmp_path):
    from ehrbench.models.rundir import ARCHIVED

    make_run(tmp_path / "runs", "vae", 0, {"auc": 0.7})
    pack(tmp_path / "runs", tmp_path / "runs.tar.gz")
    unpack(tmp_path / "runs.tar.gz", tmp_path / "x")
    assert [p.parent.name for p in (tmp_path / "x").rglob(ARCHIVED)] == ["seed_0"]


# 3. a failed write is one sentence and leaves nothing half-written ------------------------------------------------
def test_a_size_limit_is_one_sentence_and_leaves_no_temporary_file(tmp_path):
    out = cli(tmp_path, "model.hidden_dim=256", "trainer.checkpoint_every=1", limit=64 * 1024)
    d = tmp_path / "default" / "synthetic" / "vae" / "seed_0"
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0] == (f"error: could not write {d / 'checkpoint.pt'}: the file size limit was reached (ulimit -f) "
                        "(nothing was left half-written)")
    assert not [p for p in d.rglob("*") if "tmp" in p.name]
    assert json.loads((d / "run.json").read_text())["status"] == f"error: OSError: {lines[0][len('error: '):]}"


SAVE_UNDER_LIMIT = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from ehrbench.models import build_synthesizer
m = build_synthesizer("vae", hidden_dim=64, latent_dim=8, epochs=1, batch_size=32)
from ehrbench.models import Trainer
m.fit((np.random.default_rng(0).random((64, 40)) < 0.3).astype(np.float32),
      Trainer(device="cpu", budget="steps", max_steps=1, progress=False))
try:
    m.save(sys.argv[1])
except OSError as e:
    print(e)
"""


def test_synthesizer_save_under_a_size_limit(tmp_path):
    env = {**ENV, "PYTHONPATH": str(REPO)}
    code = "import tests.conftest\n" + SAVE_UNDER_LIMIT  # binds `ehrbench` to this checkout
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.strip() == (f"could not write {tmp_path / 's' / 'state.pt'}: the file size limit was reached "
                                  "(ulimit -f) (nothing was left half-written)"), out.stderr
    assert os.listdir(tmp_path / "s") == []


# 4. a corrupt or malicious saved generator is one sentence ---------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ehrbench-pwned",))


@pytest.mark.parametrize("content", ["truncated", "pickle"])
def test_resample_from_a_bad_state_is_one_sentence(tmp_path, content):
    config = pipeline.validate(compose(TINY))
    data = load_dataset("synthetic", n_patients=300, n_codes=20)
    src = tmp_path / "src"
    m = build_synthesizer("vae", **{k: v for k, v in config["model"].items() if k != "name"})
    m.n_features_, m.kinds_, m.columns_ = data.n_features, data.kinds, data.columns
    m.init_modules(data.n_features)
    m.save(src / "synthesizer")
    (src / "run.json").write_text(json.dumps({"status": "ok", "config": config}))
    if content == "truncated":
        (src / "synthesizer" / "state.pt").write_bytes((src / "synthesizer" / "state.pt").read_bytes()[:100])
    else:
        torch.save({"modules.x": Payload()}, src / "synthesizer" / "state.pt")
    with pytest.raises(ValueError) as e:
        pipeline.run(compose([*TINY, f"resample_from={src}"]), tmp_path / "dst")
    assert str(e.value).startswith(f"{src / 'synthesizer' / 'state.pt'} is unreadable (")
    record = (tmp_path / "dst" / "run.json").read_text()
    assert "weights_only" not in str(e.value) and "weights_only" not in record
    assert not Path("/tmp/ehrbench-pwned").exists()
    with pytest.raises(ValueError, match="is unreadable"):
        Synthesizer.load(src / "synthesizer")


# 6. a split too small for the metrics asked for is refused ---------------------------------------------------------
def test_a_three_row_matrix_is_refused_naming_the_sizes(tmp_path):
    from ehrbench.metrics import check_split

    csv = tmp_path / "three.csv"
    csv.write_text("a,b\n0,1\n1,0\n1,1\n")
    data = load_dataset("matrix", path=str(csv))
    with pytest.raises(ValueError, match=r"data 'matrix' splits into train 2, holdout 0 and test 1 rows "
                                         r"\(data.split=\[0.8, 0.1, 0.1\]\), but metric 'mia_auc' needs at least 2 "
                                         "holdout rows; use more patients or another data.split"):
        check_split(data, ["prevalence_pearson", "mia_auc"])
    with pytest.raises(ValueError, match="splits into train 2, holdout 0 and test 1 rows"):
        pipeline.run(compose(["model=independent", "data=matrix", f"data.path={csv}", "metrics=fast"]),
                          tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"].startswith("error: ValueError: data")


def test_a_one_row_test_file_is_refused(tmp_path):
    from ehrbench.metrics import check_split

    rng = np.random.default_rng(0)
    np.save(tmp_path / "X_num_train.npy", (rng.random((40, 6)) < 0.4).astype(np.float32))
    np.save(tmp_path / "X_num_test.npy", (rng.random((1, 6)) < 0.4).astype(np.float32))
    data = load_dataset("ehrdiff_npy", path=str(tmp_path))
    with pytest.raises(ValueError, match="metric 'exact_copy_rate' needs at least 2 holdout rows"):
        check_split(data, ["nzc", "exact_copy_rate"])
    check_split(data, ["nzc"])  # a fidelity metric reads train only


# 9. command-line slips -------------------------------------------------------------------------------------------
def test_an_unknown_data_choice_is_one_sentence():
    with pytest.raises(ValueError, match="no config data/nosuch.yaml in benchmarks/ or the search path; valid "
                                         "choices: diabetes130, ehrdiff_npy, matrix"):
        run_benchmark.prepare_argv(["data=nosuch"])
    with pytest.raises(ValueError, match="no config trainer/nosuch.yaml"):
        run_benchmark.prepare_argv(["model=vae", "trainer=nosuch"])


def test_a_budget_sweep_that_does_not_increase_is_one_sentence():
    with pytest.raises(ValueError, match="trainer.reference_steps=174,52 is not a strictly increasing budget list; "
                                         "list each budget once, smallest first, e.g. trainer.reference_steps=52,174"):
        run_benchmark.prepare_argv(["-m", "trainer.reference_steps=174,52"])
    with pytest.raises(ValueError, match="trainer.fraction=0.1,0.1 is not a strictly increasing"):
        run_benchmark.prepare_argv(["trainer.fraction=0.1,0.1"])
    assert "trainer.reference_steps=52,174" in run_benchmark.prepare_argv(["trainer.reference_steps=52,174"])


@pytest.mark.parametrize("tag", ["inf", "nan", "true", "1e3", "null"])
def test_a_tag_that_yaml_reads_as_a_value_stays_a_name(tag):
    args = run_benchmark.prepare_argv([f"tag={tag}", "+model.label=1e3"])
    config = pipeline.validate(compose(args))
    assert config["tag"] == tag and config["model"]["label"] == "1e3"


# 10. no dependency floor with a known remote-code-execution flaw ---------------------------------------------------
def test_pyarrow_floor_excludes_cve_2023_47248():
    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pyarrow = next(Requirement(d) for d in deps if d.startswith("pyarrow"))
    assert not pyarrow.specifier.contains("14.0.0") and pyarrow.specifier.contains("14.0.1")
