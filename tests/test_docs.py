"""The docs are true: their skeletons pass check_synthesizer, and nothing points outside the repository."""
import importlib
import re
import sys

import pytest

from ehrbench.models import SYNTHESIZERS, check_synthesizer
from tests.conftest import REPO

DOCS = REPO / "docs"


def skeletons() -> dict[str, str]:
    """The ```python blocks of docs/plugins.md that start with '# module: <file>.py'."""
    text = (DOCS / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(# module: (\w+)\.py\n.*?)```", text, flags=re.S)
    return {name: code for code, name in blocks}


def test_plugins_md_has_a_numpy_and_a_torch_skeleton():
    found = skeletons()
    assert set(found) == {"em_mixture", "torch_mixture"}
    assert "TorchSynthesizer" in found["torch_mixture"] and "torch" not in found["em_mixture"]


@pytest.mark.parametrize("module", ["em_mixture", "torch_mixture"])
def test_skeleton_passes_check_synthesizer(module, tmp_path, monkeypatch):
    (tmp_path / f"{module}.py").write_text(skeletons()[module])
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module(module)
        report = check_synthesizer(module, {"epochs": 3} if module == "torch_mixture" else None)
        assert report["fresh_process"] and report["n_params"] > 0
    finally:
        SYNTHESIZERS.pop(module, None)
        sys.modules.pop(module, None)


def test_no_reference_points_outside_the_repository():
    files = [REPO / "README.md", *DOCS.glob("*.md"), *REPO.glob("*.py"), *REPO.glob("*/*.py"),
             *REPO.glob("benchmarks/**/*.yaml")]
    for f in files:
        if f.name == "test_docs.py":
            continue
        text = f.read_text()
        for outside in ("DESIGN" + ".md", "research/" + "ehrdiff.md", "research/" + "peers.md", "shared/" + "research"):
            assert outside not in text, (f, outside)
    for doc, base in [(REPO / "README.md", REPO), *((d, DOCS) for d in DOCS.glob("*.md"))]:
        for link in re.findall(r"\]\(((?!https?:)[^)#]+)", doc.read_text()):
            assert (base / link).exists(), (doc.name, link)


def test_the_readme_is_a_front_page_and_the_guide_holds_the_rest():
    """README <= 250 lines (issue 31); every section the guide's contents list names exists in the guide."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
    guide = (DOCS / "guide.md").read_text()
    for anchor in re.findall(r"^- \[[^\]]+\]\(#([^)]+)\)", guide, re.M):
        heads = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", guide, re.M)}
        assert anchor in heads, anchor


# A number quoted from a committed leaderboard carries <!--csv:REPORT/MODEL/METRIC--> right after it (invisible
# when rendered); the test reads reports/REPORT/leaderboard.csv and fails when the written number is not the
# table's mean (or "mean ± std") rounded as written; "%" after it means the value x 100.
QUOTE = re.compile(r"<!--csv:([^/>]+)/([^/>]+)/([^/>]+?)-->")
NUMBER = re.compile(r"([-+−]?\d[\d,]*(?:\.\d+)?)(?:\s*±\s*(\d[\d,]*(?:\.\d+)?))?\s*(%)?$")


def _close(written: str, value: float) -> bool:
    digits = len(written.split(".")[1]) if "." in written else 0
    return abs(float(written.replace(",", "").replace("−", "-")) - value) <= 0.5 * 10 ** -digits + 1e-9 * abs(value)


def check_quotes(text: str, tables: dict) -> list[str]:
    """Every wrong or unreadable quote in text, one message each (tables: report name -> its leaderboard.csv)."""
    import pandas as pd

    wrong = []
    for m in QUOTE.finditer(text):
        report, model, metric = (g.strip() for g in m.groups())
        number = NUMBER.search(text[max(0, m.start() - 40):m.start()].rstrip("* "))
        if report not in tables:
            tables[report] = pd.read_csv(REPO / "reports" / report / "leaderboard.csv")
        rows = tables[report][(tables[report]["model"] == model) & (tables[report]["metric"] == metric)]
        if number is None or len(rows) != 1:
            wrong.append(f"{m.group(0)}: {'no number before it' if number is None else f'{len(rows)} rows'}")
            continue
        scale = 100.0 if number.group(3) else 1.0
        mean, sd = rows["mean"].iloc[0] * scale, rows["std"].iloc[0] * scale
        if not _close(number.group(1), mean) or (number.group(2) and not _close(number.group(2), sd)):
            wrong.append(f"{number.group(0)}{m.group(0)}: the table says {mean:.6g} ± {sd:.4g}")
    return wrong


DOC_FILES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_numbers_quoted_from_leaderboards_match_their_csv(doc):
    text = doc.read_text()
    assert check_quotes(text, {}) == []
    assert not re.search(r"<!--csv:[^>]*\|", text)  # a pipe would split a Markdown table's cell


def test_every_decimal_in_the_readme_results_is_checked():
    """The README's results section quotes only numbers that carry their CSV reference (integers such as dataset
    sizes and ε levels are not leaderboard values)."""
    results = (REPO / "README.md").read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
    bare = QUOTE.sub("", re.sub(r"\d[\d,]*(?:\.\d+)?(?:\s*±\s*\d[\d,]*(?:\.\d+)?)?\s*%?(?=<!--csv:)", "", results))
    bare = re.sub(r"\]\([^)]*\)", "]", bare)  # link targets
    assert re.findall(r"\d+\.\d+", bare) == []


@pytest.mark.parametrize("quote", [
    "real CMD 0.0140<!--csv:leaderboard_synthetic/real/cmd-->",              # the mismatches issue 31 found
    "NZC 904<!--csv:leaderboard_synthetic/real/nzc-->",
    "fit mean 1,020 s<!--csv:leaderboard_diabetes130/ehrdiff_cond/fit_seconds-->",
    "TSTR 0.710 ± 0.050<!--csv:leaderboard_diabetes130/vae/tstr_auroc-->",     # right mean, wrong spread
    "copies 50 %<!--csv:leaderboard_diabetes130/ehrdiff/exact_copy_rate-->",
    "TSTR<!--csv:leaderboard_diabetes130/vae/tstr_auroc-->",                   # no number
    "0.7<!--csv:leaderboard_diabetes130/nosuchmodel/tstr_auroc-->",
])
def test_a_wrong_quote_is_caught(quote):
    assert len(check_quotes(quote, {})) == 1


def test_a_right_quote_passes():
    import pandas as pd

    row = pd.read_csv(REPO / "reports" / "leaderboard_diabetes130" / "leaderboard.csv").query(
        "model == 'vae' and metric == 'tstr_auroc'").iloc[0]
    tag = "<!--csv:leaderboard_diabetes130/vae/tstr_auroc-->"
    assert check_quotes(f"TSTR **{row['mean']:.3f} ± {row['std']:.3f}**{tag}", {}) == []
    assert check_quotes(f"TSTR {100 * row['mean']:.1f} %{tag}", {}) == []
