"""Ray sweeps (benchmarks/hydra/launcher/ray.yaml): the config names the plugin, and a 2-cell local sweep completes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="ray and hydra-ray-launcher are not installed (pip install -e '.[ray]')")


def test_ray_launcher_config():
    import run_benchmark  # noqa: F401  (registers ${ehrbench_repo:})

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema.*")
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=["hydra/launcher=ray", "hydra.launcher.ray.remote.num_gpus=1"],
                          return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "RayLauncher"
    ray = OmegaConf.to_container(launcher.ray, resolve=True)
    assert ray["remote"] == {"num_cpus": 1, "num_gpus": 1, "max_calls": 1}
    assert ray["init"]["address"] is None and ray["init"]["runtime_env"]["env_vars"]["PYTHONPATH"] == str(REPO)


@pytest.mark.slow  # a local Ray instance and 2 cells: ~75 s on the loaded 2-core box
def test_local_ray_sweep(tmp_path):
    """Two cells on a local Ray instance; each worker runs this checkout (run.json's world_size is its field)."""
    # Ray starts its workers at nice 15; on a machine busy with other work they would barely run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_worker_niceness": "0"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "run_benchmark.py", "-m", "hydra/launcher=ray", "model=ehrdiff,vae",
                          "trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=30", "model.epochs=1",
                          "model.batch_size=64", f"paths.runs={tmp_path}", "hydra.launcher.ray.init.num_cpus=2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    for model in ("ehrdiff", "vae"):
        info = json.loads((tmp_path / "default" / "synthetic" / model / "seed_0" / "run.json").read_text())
        assert info["status"] == "ok" and info["world_size"] == 1
    print(f"2-cell local Ray sweep: {time.perf_counter() - t0:.0f} s")
