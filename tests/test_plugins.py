"""Third-party generators arrive through the `ehrbench.synthesizers` entry point group."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ehrbench.models import pipeline
from ehrbench.models import SYNTHESIZERS, build_synthesizer, check_synthesizer
from tests.conftest import REPO, compose


def test_entry_point_plugin_is_registered(tmp_path, monkeypatch, tiny_data):
    (tmp_path / "ehrbench_plugin_demo.py").write_text(
        "import numpy as np\n"
        "from ehrbench.models import Synthesizer\n"
        "class Zeros(Synthesizer):\n"
        "    def __init__(self, value: float = 0.0):\n"
        "        self.value = value\n"
        "    def fit(self, data, trainer=None):\n"
        "        self._prepare_fit(data)\n"
        "        return self\n"
        "    def sample(self, n, seed=0):\n"
        "        return np.full((n, self.n_features_), self.value, dtype=np.float32)\n")
    dist = tmp_path / "ehrbench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ehrbench-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ehrbench.synthesizers]\nzeros_demo = ehrbench_plugin_demo:Zeros\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(SYNTHESIZERS, "zeros_demo", raising=False)
    try:
        m = build_synthesizer("zeros_demo", value=1.0).fit(tiny_data)
        assert "zeros_demo" in SYNTHESIZERS and m.name == "zeros_demo"
        assert np.all(m.sample(3) == 1.0)
    finally:
        SYNTHESIZERS.pop("zeros_demo", None)
        sys.modules.pop("ehrbench_plugin_demo", None)


ACME = '''"""A throwaway plugin: smoothed independent prevalences (uses its project's own top-level `models` module)."""
import numpy as np

from ehrbench.models import Synthesizer
from models import SMOOTHING  # the plugin project's own `models`, not ehrbench's


class Acme(Synthesizer):
    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing

    def fit(self, data, trainer=None):
        X = self._prepare_fit(data)
        self.p_ = (X.sum(0) + self.smoothing) / (len(X) + 2 * self.smoothing)
        return self

    def sample(self, n, seed=0):
        self._check_fitted()
        rng = np.random.default_rng(seed)
        p = np.where(self.binary_mask, self.p_, 0.0)
        out = (rng.random((n, self.n_features_)) < p).astype(np.float32)
        out[:, ~self.binary_mask] = self.p_[~self.binary_mask]
        return self._finish(out)
'''


def make_plugin(site):
    """An installed-looking plugin distribution: package, config package, dist-info with both entry points."""
    (site / "acme_gen" / "conf" / "model").mkdir(parents=True)
    (site / "acme_gen" / "__init__.py").write_text(ACME)
    (site / "acme_gen" / "conf" / "__init__.py").write_text("")
    (site / "acme_gen" / "conf" / "model" / "acme.yaml").write_text("name: acme\nsmoothing: 0.5\n")
    (site / "models.py").write_text("SMOOTHING = 0.5\n")  # a top-level `models` of the user's own project
    dist = site / "acme_gen-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-gen\nVersion: 0.3\n")
    (dist / "top_level.txt").write_text("acme_gen\nmodels\n")
    (dist / "entry_points.txt").write_text("[ehrbench.synthesizers]\nacme = acme_gen:Acme\n\n"
                                           "[ehrbench.configs]\nacme_gen = acme_gen.conf\n")


def cli(site, *args):
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "run_benchmark.py"), *args], env=env, capture_output=True,
                          text=True, timeout=300)


TINY = ["trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=20", "tag=plug"]


def test_plugin_package_with_its_own_models_module(tmp_path, monkeypatch):
    """Acceptance: a plugin package (whose project has its own top-level `models`) is found through its entry
    points, runs through the CLI without any hydra.searchpath, passes check_synthesizer, records its provider,
    and appears in a leaderboard beside a built-in generator."""
    site, runs = tmp_path / "site", tmp_path / "runs"
    make_plugin(site)
    for model in ("acme", "independent"):
        out = cli(site, f"model={model}", f"paths.runs={runs}", *TINY)
        assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads((runs / "plug" / "synthetic" / "acme" / "seed_0" / "run.json").read_text())
    assert info["status"] == "ok" and info["model"] == "acme"
    assert info["provider"] == {"module": "acme_gen", "class": "Acme", "package": "acme-gen", "version": "0.3"}
    report = subprocess.run([sys.executable, "-m", "ehrbench.reports", str(runs / "plug"), "--no-figures"],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    board = (runs / "plug" / "report" / "leaderboard.md").read_text()
    assert "| acme |" in board and "| independent (reference) |" in board

    monkeypatch.syspath_prepend(str(site))
    try:
        result = check_synthesizer("acme")
        assert result["fresh_process"] and "acme" in SYNTHESIZERS
    finally:
        SYNTHESIZERS.pop("acme", None)
        for mod in ("acme_gen", "models"):
            sys.modules.pop(mod, None)


def test_plugin_mistakes_are_one_sentence(tmp_path):
    site = tmp_path / "site"
    make_plugin(site)
    (site / "acme_gen" / "conf" / "__init__.py").unlink()
    out = cli(site, "model=acme", f"paths.runs={tmp_path / 'runs'}", *TINY)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: hydra.searchpath entry pkg://acme_gen.conf: 'acme_gen.conf' is a folder without __init__.py; add "
        "an empty acme_gen/conf/__init__.py (Hydra reads pkg:// configs from regular packages only)")
    (site / "acme_gen" / "conf" / "__init__.py").write_text("")
    out = cli(site, "model=acmee", f"paths.runs={tmp_path / 'runs'}", *TINY)
    assert out.returncode == 1 and "error: no config model/acmee.yaml" in out.stderr
    assert "valid choices: " in out.stderr and "hydra.searchpath=[pkg://<package>.conf]" in out.stderr


def test_two_outside_tools_are_two_rows_of_one_leaderboard(tmp_path):
    """Export the split, let two 'tools' write samples (one with the split's fingerprint), score both by name;
    a file made from another split is refused by its fingerprint."""
    import pandas as pd

    runs, split = tmp_path / "runs", tmp_path / "split"
    data = ["data.n_patients=300", "data.n_codes=20", "metrics=fast", f"paths.runs={runs}", "tag=tools"]
    out = cli(tmp_path, *data, f"export.dir={split}")
    assert out.returncode == 0 and "fingerprint" in out.stdout, out.stderr[-2000:]
    meta = json.loads((split / "split.json").read_text())
    train = pd.read_csv(split / "train.csv")
    assert list(train.columns) == meta["columns"] and len(train) == meta["rows"]["train"] == 240
    X = train.to_numpy(np.float32)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", X=X[rng.integers(0, len(X), len(X))], columns=np.array(train.columns, dtype=str),
             fingerprint=np.array(meta["fingerprint"]))
    pd.DataFrame((rng.random(X.shape) < X.mean(0)).astype(np.float32), columns=train.columns).to_csv(
        tmp_path / "b.csv", index=False)
    for f, label in (("a.npz", "tool_a"), ("b.csv", "tool_b")):
        out = cli(tmp_path, *data, "model=external", f"model.path={tmp_path / f}", f"model.label={label}",
                  f"model.fingerprint={meta['fingerprint']}" if label == "tool_b" else "model.fingerprint=null")
        assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in (runs / "tools" / "synthetic").iterdir()) == ["tool_a", "tool_b"]
    from ehrbench.reports.__main__ import main as report  # the same command, in this process

    assert report([str(runs / "tools"), "--no-figures"]) == 0
    board = (runs / "tools" / "report" / "leaderboard.md").read_text()
    assert "| tool_a |" in board and "| tool_b |" in board
    other = compose(["data.n_patients=301", "data.n_codes=20", "metrics=fast", "tag=other", "model=external",
                     f"model.path={tmp_path / 'a.npz'}", "model.label=tool_a"])
    with pytest.raises(ValueError, match=f"made from a training split with fingerprint {meta['fingerprint']}"):
        pipeline.run(other, tmp_path / "other")
    taken = compose([*data[:3], "model=external", f"model.path={tmp_path / 'a.npz'}", "model.label=vae"])
    with pytest.raises(ValueError, match="model.label 'vae' is the name of a registered generator"):
        pipeline.validate(taken)


def test_the_documented_plugin_builds_a_wheel_with_its_configs(tmp_path):
    """docs/plugins.md's pyproject.toml, as written there, builds a wheel that carries conf/model/*.yaml and both
    entry points (an example that only worked editable would leave an installed plugin without its configs)."""
    import re
    import zipfile

    doc = (REPO / "docs" / "plugins.md").read_text()
    toml = re.search(r"```toml\n(.*?)```", doc, re.S).group(1)
    pkg = tmp_path / "acme_gen"
    (pkg / "acme_gen" / "conf" / "model").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(toml)
    (pkg / "acme_gen" / "__init__.py").write_text("class AcmeSynthesizer:\n    pass\n")
    (pkg / "acme_gen" / "conf" / "__init__.py").write_text("")
    (pkg / "acme_gen" / "conf" / "model" / "acme.yaml").write_text("name: acme\n")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(pkg)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("acme_gen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "acme_gen/conf/model/acme.yaml" in names and "acme_gen/conf/__init__.py" in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[ehrbench.synthesizers]" in entry and "acme = acme_gen:AcmeSynthesizer" in entry
    assert "[ehrbench.configs]" in entry and "acme_gen = acme_gen.conf" in entry
