"""Rendering: every table and figure in the self-contained HTML, Markdown/CSV content, determinism, the CLI."""
import base64
import re
import statistics

import pandas as pd
import pytest

from ehrbench.reports import build_tables, load_runs, write_report
from ehrbench.reports.__main__ import main
from ehrbench.reports.frames import failures_frame, fmt_cell
from ehrbench.reports.load import FAILURE_COLUMNS
from ehrbench.reports.render import sections
from tests.test_reports_load import make_run

KINDS = ["prevalence", "cooccurrence", "metrics", "ranks", "losses", "privacy_utility"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    vals = {"gen": [0.91, 0.93], "base": [0.5, 0.52], "ref": [0.99]}
    for model, pearsons in vals.items():
        for seed, p in enumerate(pearsons):
            auc = "error: ValueError: only one class" if model == "base" and seed == 1 else 0.6 + 0.1 * seed
            make_run(root, model, seed, {"pearson": p, "mae": 1 - p, "auc": auc, "risk": p / 2, "pearson.real": 25.0},
                     losses=model == "gen", fit_seconds=10.0 + seed, se=0.0)
    (make_run(root, "broken", 0, {"pearson": 0.1}) / "run.json").write_text("[1, 2")
    make_run(root, "gen", 0, {"pearson": 0.3}, data={"name": "nosuchdata", "path": "/nowhere"}, npz=False)
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(runs, out)


def test_html_holds_every_table_and_figure(runs, report):
    out, paths = report
    html = paths["html"].read_text()
    tables = build_tables(load_runs(runs))
    assert [t.label for t in tables] == ["t / nosuchdata", "t / synthetic"]
    for t in tables:
        assert f">{t.label}</h2>" in html
        for title, frame, _ in sections(t):
            assert f"<h3>{title}</h3>" in html
            for col in frame.columns:
                assert f"<th>{col}</th>" in html
    pngs = sorted((out / "figures").glob("*.png"))
    expect = [f"t_synthetic__{k}.png" for k in KINDS] + ["t_nosuchdata__metrics.png"]
    assert [p.name for p in pngs] == sorted(expect)  # nosuchdata: no data to load (no scatters), one seed (no ranks)
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert base64.b64encode(p.read_bytes()).decode() in html
    assert html.count("<img ") == len(pngs)
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # self-contained: opens offline
    assert "<h2 id=\"failures\">Failures</h2>" in html and "t/synthetic/broken/seed_0" in html


def test_markdown_content(report):
    md = report[1]["markdown"].read_text()
    gen = [0.91, 0.93]
    # mean ± std rounded at the std's 2nd significant digit, n shown († < 3); the best mean in bold (ref: one seed)
    assert f"| gen | 0.080 ± 0.014 (n=2†) | {statistics.mean(gen):.3f} ± {statistics.stdev(gen):.3f} (n=2†) |" in md
    assert "| ref | **0.01 (n=1†)** | **0.99 (n=1†)** |" in md
    assert "0.6 (n=1†, 1 err)" in md                                        # base's auc: one value, one error
    assert "nosuchdata: prevalence figure skipped" not in md                # notes sit under their table ...
    assert "prevalence figure skipped: dataset 'nosuchdata' could not be loaded" in md
    assert "corrupt run.json" in md and "error: ValueError: only one class" in md
    for k in KINDS:
        assert f"(figures/t_synthetic__{k}.png)" in md


def test_csv_matches_independent_means(runs, report):
    df = pd.read_csv(report[1]["csv"])
    syn = df[df["table"] == "t / synthetic"]
    row = syn[(syn["model"] == "gen") & (syn["metric"] == "mae")].iloc[0]
    assert row["mean"] == pytest.approx(statistics.mean([0.09, 0.07])) and row["n"] == 2 and row["rank"] == 2
    assert row["std"] == pytest.approx(statistics.stdev([0.09, 0.07]))
    mr = syn[(syn["model"] == "ref") & (syn["metric"] == "mean_rank")].iloc[0]
    # families weigh equally: fidelity (pearson, mae) 1, utility 2 (auc: gen's 0.65 ± se 0.05 ties ref's and base's
    # 0.6), privacy (risk) 3
    assert mr["family"] == "summary" and mr["mean"] == pytest.approx((1 + 2 + 3) / 3)
    fit = syn[(syn["model"] == "gen") & (syn["metric"] == "fit_seconds")].iloc[0]
    assert fit["mean"] == pytest.approx(10.5)
    assert set(syn["model"]) == {"gen", "base", "ref", "broken"}


def test_regenerated_files_are_identical(runs, report, tmp_path):
    again = write_report(runs, tmp_path)
    for kind in ("markdown", "csv", "html"):
        assert again[kind].read_bytes() == report[1][kind].read_bytes(), kind
    for p in (report[0] / "figures").glob("*.png"):
        assert (tmp_path / "figures" / p.name).read_bytes() == p.read_bytes(), p.name


def test_fmt_cell():
    assert fmt_cell(0.123456, 0.0123, 3) == "0.123 ± 0.012 (n=3)"
    assert fmt_cell(881.0, 2.1, 3) == "881.0 ± 2.1 (n=3)"
    assert fmt_cell(12345.6, 250.0, 2) == "12,346 ± 250 (n=2†)"  # † fewer than 3 seeds
    assert fmt_cell(0.5, float("nan"), 1) == "0.5 (n=1†)"
    assert fmt_cell(0.5, 0.0, 2) == "0.5 ± 0 (n=2†)"
    assert fmt_cell(float("nan"), float("nan"), 0, 3) == "error ×3"
    assert fmt_cell(float("nan"), float("nan"), 0) == "—"


def test_cli(runs, tmp_path, capsys):
    assert main([str(runs), "--out", str(tmp_path), "--no-figures", "--profile", "edu=fidelity:1,utility:1"]) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    assert "edu ↓" in md and "![" not in md and not (tmp_path / "figures").exists()
    assert "leaderboard.html" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2 and "does not exist" in capsys.readouterr().err
    assert main([str(runs), "--profile", "bad"]) == 2


def test_failures_display_merges_one_metric_failing_alike_in_many_runs():
    rows = [{"kind": "metric", "path": f"t/d/{m}/seed_{i}", "tag": "t", "data": "d", "model": m, "seed": i,
             "metric": "continuous_wd", "reason": "error: ValueError: no continuous columns"}
            for m in ("b", "a") for i in (1, 0)]
    rows.append({"kind": "run", "path": "t/d/c/seed_0", "tag": "t", "data": "d", "model": "c", "seed": 0,
                 "metric": None, "reason": "corrupt run.json: x"})
    rows.append({**rows[0], "reason": "error: other"})
    f = failures_frame(pd.DataFrame(rows, columns=FAILURE_COLUMNS))
    merged = f[f["reason"] == "error: ValueError: no continuous columns"].iloc[0]
    assert (merged["path"], merged["model"], merged["seed"], merged["runs"]) == ("t/d/*", "a, b", "0, 1", 4)
    assert len(f) == 3 and f.loc[f["kind"] == "run", "path"].item() == "t/d/c/seed_0"
    assert f.loc[f["reason"] == "error: other", "path"].item() == "t/d/b/seed_1"


def test_the_header_names_no_machine_path(tmp_path):
    from ehrbench.reports.render import describe

    assert describe(load_runs(tmp_path), str(tmp_path / "sweeps" / "leaderboard_x") + "/").startswith(
        "0 run directories in `leaderboard_x` (")
    for seed in (0, 1, 2):
        make_run(tmp_path, "gen", seed, npz=False)
    run_json = tmp_path / "t" / "synthetic" / "gen" / "seed_1" / "run.json"
    run_json.write_text(run_json.read_text().replace('"git_commit": "abc123"', '"git_commit": "abc123", "git_dirty": true'))
    assert "git commit(s): abc123, 1 of 3 runs with uncommitted changes)" in describe(load_runs(tmp_path), "runs.tar.gz")
