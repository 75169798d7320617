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
