"""Third-party generators arrive through the `ehrbench.synthesizers` entry point group."""
import sys

import numpy as np

from models import SYNTHESIZERS, base, build_synthesizer


def test_entry_point_plugin_is_registered(tmp_path, monkeypatch, tiny_data):
    (tmp_path / "ehrbench_plugin_demo.py").write_text(
        "import numpy as np\n"
        "from models import Synthesizer\n"
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
