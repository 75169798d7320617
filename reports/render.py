"""Render leaderboards to Markdown, CSV and one self-contained HTML page (rounding only here); write_report."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from .aggregate import PROFILES, Table, build_tables
from .audit import canary_frame, canary_rows
from .figures import FigureInfo, make_figures
from .frames import failures_frame, metric_frame, summary_frame
from .headline import compact, headline_metrics, interval, intervals_note, question, regime, verdict
from .pairwise import pairwise
from .load import RunSet, load_runs


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame, best: pd.DataFrame | None = None, index: str = "model") -> str:
    """A Markdown table; the index is the first column, headed by its name (else `index`; "" = no index column)."""
    cols = ([df.index.name or index] if index else []) + list(df.columns)
    lines = ["| " + " | ".join(map(_md_escape, cols)) + " |", "|" + "---|" * len(cols)]
    for i, (key, row) in enumerate(df.iterrows()):
        cells = [f"**{_md_escape(v)}**" if best is not None and best.iloc[i][c] else _md_escape(v)
                 for c, v in row.items()]
        lines.append("| " + " | ".join(([_md_escape(key)] if index else []) + cells) + " |")
    return "\n".join(lines)


def html_table(df: pd.DataFrame, best: pd.DataFrame | None = None, index: str = "model", cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ([df.index.name or index] if index else []) + list(df.columns))
    body = []
    for i, (key, row) in enumerate(df.iterrows()):
        tds = [f'<td class="best">{html.escape(str(v))}</td>' if best is not None and best.iloc[i][c]
               else f"<td>{html.escape(str(v))}</td>" for c, v in row.items()]
        first = f"<th>{html.escape(str(key))}</th>" if index else ""
        body.append(f"<tr>{first}{''.join(tds)}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def sections(t: Table) -> list[tuple[str, pd.DataFrame, pd.DataFrame | None]]:
    """(title, formatted frame, best mask) for one leaderboard: summary, then one table per family, then info."""
    out: list[tuple[str, pd.DataFrame, pd.DataFrame | None]] = [("Summary: ranks, profiles, efficiency", summary_frame(t), None)]
    ranked = t.metrics("ranked")
    fams = t.cells.drop_duplicates("metric").set_index("metric")["family"]
    for fam in dict.fromkeys(fams[m] for m in ranked):
        strings, best = metric_frame(t, [m for m in ranked if fams[m] == fam])
        out.append((f"{fam.capitalize()} metrics", strings, best))
    pairs = pairwise(t, headline_metrics(t))
    if not pairs.empty:
        out.append(("Pairwise verdicts: the first by mean rank against each ranked generator on the headline scores "
                    "(the difference, positive where the first is better, with its 95 % interval; tie where it holds 0)", pairs, None))
    info = [m for m in t.metrics() if m not in ranked]
    if info:
        out.append(("Additional values (goal info: shown, never ranked)", *metric_frame(t, info)))
    audit = canary_frame(canary_rows(t.runs, t.values))
    if not audit.empty:
        out.append(("Privacy audit (canaries; python run_benchmark.py canaries=M)", audit, None))
    if not t.ladder.empty:
        out.append(("Calibration ladder on this data (python -m reports --calibrate; a failed metric does not rank)",
                    t.ladder.set_index("metric").astype(str), None))
    return out


LEGEND = ("Cells are mean ± sample standard deviation over seeds, with n the number of seeds that gave a value († fewer than 3); "
          "**bold** marks the best generator per metric (ties all marked); ↑ higher is better, ↓ lower is better, "
          "◎ closest to the metric's ideal is best (nzc: the real count, shown as nzc.real). Signed privacy scores "
          "(dcr, nnaa, attribute_inference_f1, mia_auc, exact_copy_rate; ideal 0) rank by how far they exceed 0 "
          "beyond two standard errors, so values below 0 or within noise of 0 tie. A metric that failed the "
          "calibration ladder on a table's data is shown there without ranks (a note says why); a generator better "
          "than independent marginals (at its budget) on no ranked fidelity metric is marked (failed) and not ranked. Ties are "
          "ties: a generator beats another on a metric only by more than twice the standard error of the difference "
          "(the seeds' spread and the metric's own se); rank = 1 + generators that beat it + half of those it ties "
          "with, bold = beaten by none, a failed or missing cell takes the last places, and a metric whose noise is "
          "unknown (one seed, no se) is not ranked. Near-duplicate metrics share one concept (their mean rank); the "
          "family ranks average the concepts within fidelity, utility and privacy, the mean rank averages the three "
          "families with equal weight, and each profile is a weighted mean of the family ranks (#n = its rank). Rows marked (reference) are "
          "reference points, not competitors (real = a resample of the training data: the fidelity ceiling and the "
          "privacy worst case; independent = independent marginals: the floor): they are shown below the "
          "generators with their values and are never ranked, bolded or counted in other models' ranks.")


def split_notes(tables: list[Table], notes: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Notes that start with a table's label go under that table (without the label); the rest are global."""
    own = {t.label: list(t.notes) for t in tables}
    rest = []
    for n in notes:
        label = next((t.label for t in tables if n.startswith(t.label + ": ")), None)
        if label is None:
            rest.append(n)
        else:
            own[label].append(n[len(label) + 2:])
    return rest, own


HEADLINE_KINDS = ("compute", "privacy_utility")  # the first of these a table has is shown on its first screen


def headline_figure(t: Table, figures: list[FigureInfo]) -> list[FigureInfo]:
    """The first screen's figure: quality vs training compute for a compute sweep, else privacy vs utility."""
    own = {f.kind: f for f in figures if f.table == t.label}
    return [own[k] for k in HEADLINE_KINDS if k in own][:1]


def first_screen(t: Table) -> tuple[list[tuple[str, str]], list[tuple[str, pd.DataFrame, pd.DataFrame]]]:
    """A table's first screen: [(label, sentence)] for the question, budget and verdict, and the compact tables
    [(title, text, best mask)] ("" for the ranked generators)."""
    heads = headline_metrics(t)
    lines = [("Question", question(t)), ("Budget", regime(t, heads)), ("Verdict", verdict(t, heads))]
    titles = {"ranked": "", "not ranked": "Not ranked (values shown, no rank)",
              "references": "References (reference points, never ranked)",
              "compute": "Compute sweep: where each generator stops improving (every larger budget, two at "
                         "least, within noise of it on every headline score), and its headline scores there (at "
                         "its largest budget where it still changes)"}
    tabs = [(titles[g], text, best) for g, (text, best) in compact(t, heads).items()]
    return lines, tabs


def to_markdown(tables: list[Table], failures: pd.DataFrame, figures: list[FigureInfo], notes: list[str],
                header: str, name: str = "", fig_prefix: str = "figures/") -> str:
    """The page: per table its first screen (question, budget, verdict, compact tables, headline figure), then the
    details (what was read, the legend, notes, every metric table and figure) and the failures."""
    parts = [f"# ehrbench leaderboard{': ' + name if name else ''}"]
    figure = lambda f: f"![{f.title}]({fig_prefix}{f.path.name})\n\n*{f.title}.* {f.caption}".rstrip()  # noqa: E731
    for t in tables:
        lines, tabs = first_screen(t)
        parts.append(f"## {t.label}\n\n" + "\n".join(f"**{k}.** {v}  " for k, v in lines).rstrip())
        for title, text, best in tabs:
            parts.append((f"**{title}**\n\n" if title else "") + md_table(text, best))
        parts.append(intervals_note(t))
        parts += [figure(f) for f in headline_figure(t, figures)]
    parts.append(f"## Details\n\n{header}\n\n{LEGEND}")
    notes, own = split_notes(tables, notes)
    parts += [f"> {n}" for n in notes]
    for t in tables:
        parts.append(f"## {t.label}: every metric")
        parts += [f"> {n}" for n in own[t.label]]
        for title, frame, best in sections(t):
            parts.append(f"### {title}\n\n{md_table(frame, best)}")
        parts += [figure(f) for f in figures if f.table == t.label and f not in headline_figure(t, figures)]
    parts.append("## Failures\n\n" + (md_table(failures_frame(failures), index="") if len(failures)
                                      else "No run, file or metric failed."))
    return "\n\n".join(parts) + "\n"


def to_csv(tables: list[Table]) -> pd.DataFrame:
    """Long table: one row per (leaderboard, model, metric) with full precision (se: the mean's standard error,
    ci_low/ci_high: its 95 % interval), plus summary rows."""
    frames = []
    for t in tables:
        c = t.cells.assign(table=t.label, tag=t.tag, data=t.data, se=t.cells["noise"])
        ci = [interval(m, e, n) for m, e, n in zip(c["mean"], c["se"], c["n"])]
        frames.append(c.assign(ci_low=[a for a, _ in ci], ci_high=[b for _, b in ci]))
        s = (t.summary.drop(columns=["seeds", "device", "reference", "failed", "budget", "budget_steps"], errors="ignore")
             .reset_index().melt(id_vars="model", var_name="metric", value_name="mean"))
        refs = set(t.references)
        failed = set(t.summary.index[t.summary["failed"] != ""]) if "failed" in t.summary else set()
        frames.append(s.assign(table=t.label, tag=t.tag, data=t.data, family="summary", goal="info",
                               reference=s["model"].isin(refs), failed=s["model"].isin(failed)))
    cols = ["table", "tag", "data", "model", "reference", "failed", "metric", "family", "goal", "metric_version", "mean", "std",
            "n", "n_error", "se", "ci_low", "ci_high", "ideal", "tol", "rank", "best"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True).reindex(columns=cols)


CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
       "margin:.5em 0 1.5em;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
       "th{background:#f3f3f3}td.best{font-weight:bold;background:#e6f4e6}blockquote{color:#555;margin:.3em 0}"
       "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.85em;color:#444}")


def _html_figure(f: FigureInfo) -> str:
    data = base64.b64encode(Path(f.path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)}</figcaption></figure>")


def to_html(tables: list[Table], failures: pd.DataFrame, figures: list[FigureInfo], notes: list[str],
            header: str, name: str = "") -> str:
    """One page, laid out as to_markdown's, with every figure embedded as base64 PNG: no external file or network
    access."""
    bold = lambda text: html.escape(text).replace("**bold**", "<b>bold</b>")  # noqa: E731
    parts = [f"<h1>ehrbench leaderboard{': ' + html.escape(name) if name else ''}</h1>"]
    for t in tables:
        lines, tabs = first_screen(t)
        parts.append(f'<h2 id="{t.slug}">{html.escape(t.label)}</h2>'
                     + "".join(f"<p><b>{k}.</b> {html.escape(v)}</p>" for k, v in lines))
        parts += [(f"<p><b>{html.escape(title)}</b></p>" if title else "") + html_table(text, best)
                  for title, text, best in tabs]
        parts.append(f"<p>{bold(intervals_note(t))}</p>")
        parts += [_html_figure(f) for f in headline_figure(t, figures)]
    parts.append(f'<h2 id="details">Details</h2><p>{html.escape(header)}</p><p>{bold(LEGEND)}</p>')
    notes, own = split_notes(tables, notes)
    parts += [f"<blockquote>{html.escape(n)}</blockquote>" for n in notes]
    for t in tables:
        parts.append(f'<h2 id="{t.slug}_all">{html.escape(t.label)}: every metric</h2>')
        parts += [f"<blockquote>{html.escape(n)}</blockquote>" for n in own[t.label]]
        for title, frame, best in sections(t):
            parts.append(f"<h3>{html.escape(title)}</h3>{html_table(frame, best)}")
        parts += [_html_figure(f) for f in figures if f.table == t.label and f not in headline_figure(t, figures)]
    parts.append("<h2 id=\"failures\">Failures</h2>" + (html_table(failures_frame(failures), index="", cls="failures")
                                                       if len(failures) else "<p>No run, file or metric failed.</p>"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ehrbench leaderboard</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def source_name(runs_dir: str | Path) -> str:
    """What a header calls the runs: the folder's name; an archive's name without .tar.gz, or for a report's own
    runs.tar.gz the report folder's name (so a report rebuilt from its archive has the same header)."""
    p = Path(str(runs_dir).rstrip("/"))
    if p.name.endswith(".tar.gz"):
        return p.parent.name if p.name == "runs.tar.gz" and p.parent.name else p.name[:-len(".tar.gz")]
    return p.name


def describe(rs: RunSet, runs_dir: str) -> str:
    """One deterministic sentence on what was read (no wall-clock time and no machine path, only the folder's or
    archive's name, so regenerated files diff cleanly wherever they are made)."""
    r = rs.runs
    finished = sorted(str(x)[:10] for x in r["finished"].dropna())
    span = f"; runs finished {finished[0]} to {finished[-1]}" if finished else ""
    commits = sorted({str(c)[:10] for c in r["git_commit"].dropna()})
    tags = ", ".join(sorted({str(t) for t in r["tag"].dropna()})) or "none"
    dirty = int((r["git_dirty"] == True).sum())  # noqa: E712 (None: an older record that did not say)
    state = f", {dirty} of {len(r)} runs with uncommitted changes" if dirty else ""
    return (f"{len(r)} run directories in `{source_name(runs_dir)}` ({int(r['ok'].sum())} complete; tags: {tags}{span}; "
            f"git commit(s): {', '.join(commits) or 'unknown'}{state}). {len(rs.failures)} failure row(s).")


def write_report(runs_dir: str | Path, out: str | Path, profiles: dict[str, dict[str, float]] = PROFILES,
                 figures: bool = True, source: str | None = None,
                 data_paths: dict[str, str] | None = None, calibration: list[Path] | None = None) -> dict[str, Path]:
    """Build every table and figure for runs_dir and write them to out; returns the written paths by kind.
    source: what the header names as the runs' origin (default runs_dir; e.g. the archive runs_dir came from).
    data_paths: dataset name -> where the figures reload it from (else the shipped config's path).
    calibration: verdict.csv files of calibration ladders besides the committed reports/calibration/*/ ones."""
    rs = load_runs(runs_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    from .calibrate import load_verdicts, shipped_verdicts

    tables: list[Table] = build_tables(rs, profiles, load_verdicts([*shipped_verdicts(), *(calibration or [])]))
    notes = []
    if not tables:
        notes.append(f"no run directories found under {source or runs_dir} (expected <tag>/<data>/<model>/seed_<n>/run.json)")
    figs, fig_notes = make_figures(rs, tables, out / "figures", data_paths) if figures else ([], [])
    notes += fig_notes
    header = describe(rs, source or str(runs_dir))
    paths = {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "leaderboard.html"}
    from ehrbench.data.cache import atomic_path  # every file is written under a temporary name, then renamed

    name = source_name(source or str(runs_dir))
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(to_markdown(tables, rs.failures, figs, notes, header, name))
    with atomic_path(paths["csv"]) as tmp:
        to_csv(tables).to_csv(tmp, index=False, float_format="%.10g")
    paths["failures"] = out / "failures.csv"
    with atomic_path(paths["failures"]) as tmp:
        rs.failures.to_csv(tmp, index=False)
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(to_html(tables, rs.failures, figs, notes, header, name))
    if figs:
        paths["figures"] = out / "figures"
    return paths
