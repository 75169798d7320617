"""runs.tar.gz: what is kept (no patient-level data), the tables it rebuilds equal the folder's, determinism, bad archives."""
import io
import json
import tarfile

import pandas as pd
import pytest

from ehrbench.reports import write_report
from ehrbench.reports.__main__ import main
from ehrbench.reports.archive import pack, thin_lines, unpack
from tests.conftest import REPO
from tests.test_reports_load import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for model in ("gen", "base"):
        for seed in (2, 0, 1):
            d = make_run(root, model, seed, {"pearson": 0.9 - 0.1 * seed, "mae": 0.1 + seed, "auc": 0.6},
                         losses=model == "gen")
            (d / "synthesizer").mkdir()
            (d / "synthesizer" / "state.pt").write_bytes(b"weights")
            (d / ".hydra").mkdir()
            (d / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    failed = make_run(root, "late", 0, {"pearson": 0.5}, status="error: RuntimeError: boom")
    make_run(root, "late", 1, {"pearson": 0.4})
    return root, failed


def members(archive):
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_pack_keeps_records_rows_configs_and_thinned_losses_but_no_patient_level_data(runs, tmp_path):
    root, failed = runs
    counts = pack(root, tmp_path / "runs.tar.gz", max_stat_lines=10)
    files = members(tmp_path / "runs.tar.gz")
    assert counts["runs"] == 8 and counts["files"] == len(files)
    # no checkpoint and no sample: a sample is patient-level data (real's is a resample of the training records)
    assert not any("synthesizer" in n or n.endswith(".npz") for n in files)
    assert all((root / n).exists() for n in files)
    for model in ("gen", "base"):
        for seed in (0, 1, 2):
            d = root / "t" / "synthetic" / model / f"seed_{seed}"
            rel = d.relative_to(root).as_posix()
            for name in ("run.json", "results.jsonl", ".hydra/config.yaml"):
                assert files[f"{rel}/{name}"] == (d / name).read_bytes()
    assert json.loads(files[f"{failed.relative_to(root).as_posix()}/run.json"])["status"].startswith("error")
    # losses are thinned to 10 evenly spaced lines, first and last kept
    full = (root / "t/synthetic/gen/seed_1/train_stats.jsonl").read_text().splitlines()
    thin = files["t/synthetic/gen/seed_1/train_stats.jsonl"].decode().splitlines()
    assert len(full) == 29 and len(thin) == 10 and thin[0] == full[0] and thin[-1] == full[-1]
    assert set(thin) <= set(full)


def test_the_same_runs_pack_to_the_same_bytes(runs, tmp_path):
    pack(runs[0], tmp_path / "a.tar.gz")
    pack(runs[0], tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_the_archive_rebuilds_the_folders_report(runs, tmp_path):
    root, _ = runs
    a = write_report(root, tmp_path / "folder")
    assert main([str(root), "--out", str(tmp_path / "packed"), "--archive"]) == 0
    archive = tmp_path / "packed" / "runs.tar.gz"
    assert main([str(archive), "--out", str(tmp_path / "again")]) == 0
    b = tmp_path / "again" / "leaderboard.csv"
    pd.testing.assert_frame_equal(pd.read_csv(a["csv"]), pd.read_csv(b))
    # every figure but the two real-vs-synthetic scatters, which need the samples the archive leaves out
    again = sorted(p.name for p in (tmp_path / "again" / "figures").glob("*.png"))
    assert again == sorted(p.name for p in a["figures"].glob("*.png") if not p.stem.endswith(("prevalence", "cooccurrence")))
    assert "prevalence figure skipped: the runs hold no samples" in (tmp_path / "again" / "leaderboard.md").read_text()
    assert "run directories in `packed` (" in (tmp_path / "again" / "leaderboard.md").read_text()  # the archive's folder
    # rendered again into the folder that holds the scatters (the same runs, drawn with their samples): kept, said so
    assert main([str(archive), "--out", str(a["csv"].parent)]) == 0
    md = (a["csv"].parent / "leaderboard.md").read_text()
    assert "__prevalence.png)" in md and "Kept from an earlier render of the same runs" in md
    assert "figure skipped: the runs hold no samples" not in md


def test_thin_lines_keeps_short_files_whole():
    assert thin_lines("a\nb\n", 5) == "a\nb\n"
    assert thin_lines("\n".join(map(str, range(100))), 3) == "0\n50\n99\n"


def test_bad_archives_are_one_sentence(tmp_path, capsys):
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable tar.gz archive"):
        unpack(tmp_path / "junk.tar.gz", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        unpack(tmp_path / "missing.tar.gz", tmp_path / "x")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="not a plain file inside"):
        unpack(evil, tmp_path / "x")
    assert not (tmp_path / "outside.txt").exists()
    assert main([str(tmp_path / "junk.tar.gz"), "--out", str(tmp_path / "r")]) == 2
    assert "not a readable tar.gz archive" in capsys.readouterr().err
    assert main([str(evil), "--archive"]) == 2
    assert "needs a runs folder" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--archive", "--out", str(tmp_path / "r")]) == 2


def test_extracting_never_replaces_a_run(runs, tmp_path, capsys):
    root, _ = runs
    pack(root, tmp_path / "runs.tar.gz")
    assert main([str(tmp_path / "runs.tar.gz"), "--extract-to", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "t/synthetic/gen/seed_0/run.json").read_bytes() == \
        (root / "t/synthetic/gen/seed_0/run.json").read_bytes()
    mine = tmp_path / "x" / "t/synthetic/gen/seed_1/results.jsonl"
    mine.write_text("my newer rows\n")
    (tmp_path / "x" / "t/synthetic/gen/seed_2/run.json").unlink()
    assert main([str(tmp_path / "runs.tar.gz"), "--extract-to", str(tmp_path / "x")]) == 2
    assert "nothing was extracted" in capsys.readouterr().err
    assert mine.read_text() == "my newer rows\n" and not (tmp_path / "x" / "t/synthetic/gen/seed_2/run.json").exists()
    assert main([str(root), "--extract-to", str(tmp_path / "y")]) == 2
    assert "needs a runs.tar.gz archive" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (REPO / "reports").glob("*/runs.tar.gz")))
def test_every_committed_report_rebuilds_from_its_archive(name, tmp_path):
    """The tables of every report in the repository come from its runs.tar.gz (no hand-edited numbers): rebuilt from
    the archive, leaderboard.csv is byte-identical and the header names the report, not a machine path."""
    report = REPO / "reports" / name
    assert main([str(report / "runs.tar.gz"), "--out", str(tmp_path), "--no-figures"]) == 0
    assert (tmp_path / "leaderboard.csv").read_bytes() == (report / "leaderboard.csv").read_bytes()
    header = lambda md: next(line for line in md.read_text().splitlines() if " run directories in `" in line)  # noqa: E731
    assert f" run directories in `{name}` (" in header(report / "leaderboard.md")
    assert header(report / "leaderboard.md") == header(tmp_path / "leaderboard.md")


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (REPO / "reports").glob("*/runs.tar.gz")))
def test_every_committed_report_file_stays_small(name):
    """A committed report is records and pages, not data: every file under 5 MB (the HTML embeds its figures)."""
    big = {p.name: p.stat().st_size for p in (REPO / "reports" / name).rglob("*") if p.stat().st_size >= 5_000_000}
    assert big == {}
