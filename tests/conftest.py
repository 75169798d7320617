"""Shared fixtures: a tiny simulator dataset and Hydra composition of the real config tree."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_benchmark  # (binds `ehrbench` to this checkout: the tests test the code they sit beside)
from ehrbench.data import load_dataset

REPO = Path(__file__).resolve().parents[1]

CONFIG_DIR = str(REPO / "benchmarks")

torch.set_num_threads(1)

# Hyperparameters that keep every registered generator to seconds on CPU (architecture shrunk, same code path).
TINY_PARAMS = {
    "ehrdiff": {"unit_dims": [32, 16, 32], "time_dim": 16, "batch_size": 64, "epochs": 2, "warmup_steps": 4,
                "num_steps": 4, "sample_batch_size": 256},
    "medgan": {"embedding_dim": 16, "noise_dim": 16, "generator_dims": [16, 16], "discriminator_dims": [32, 16],
               "pretrain_epochs": 2, "pretrain_batch_size": 64, "epochs": 2, "batch_size": 64, "burn_in_batches": 3,
               "sample_batch_size": 64},
    "vae": {"hidden_dim": 32, "latent_dim": 8, "batch_size": 64, "epochs": 2, "sample_batch_size": 64},
    "emrwgan": {"z_dim": 16, "generator_dims": [32, 32], "critic_dims": [32, 32], "batch_size": 64, "epochs": 2,
                "sample_batch_size": 64},
    "tabddpm": {"d_layers": [32, 32], "dim_t": 16, "num_timesteps": 20, "batch_size": 64, "steps": 4,
                "sample_batch_size": 64},
    "corgan": {"latent_dim": 32, "n_channels_base": 1, "discriminator_dims": [16, 16], "batch_size": 64, "epochs": 2,
               "d_updates": 2, "warmup_d_updates": 3, "warmup_steps": 20},
    "mst": {"iters": 200},
}


def skip_unavailable(name: str) -> None:
    """Skip a test of a generator whose optional dependency is missing (its `unavailable()` says which, e.g. mst
    without the dp extra); every other generator runs."""
    from ehrbench.models import get_synthesizer

    reason = getattr(get_synthesizer(name), "unavailable", lambda: None)()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_data():
    """600 patients x (40 codes + 5 demographic/label columns), deterministic."""
    return load_dataset("synthetic", n_patients=600, n_codes=40, seed=3)


@pytest.fixture()
def local_http(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (base URL, that folder, the request paths)."""
    import http.server
    import threading

    folder, seen = tmp_path / "served", []
    folder.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, seen
    httpd.shutdown()
    httpd.server_close()


def compose(overrides: list[str] | None = None):
    """Compose benchmarks/config.yaml exactly as run_benchmark.py does (no Hydra runtime needed)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from ehrbench.models import plugin_searchpath

    overrides = list(overrides or [])
    if plugin_searchpath() and not any(o.startswith("hydra.searchpath=") for o in overrides):
        overrides.append(f"hydra.searchpath=[{','.join(plugin_searchpath())}]")  # installed plugins' configs
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """`python run_benchmark.py ARGV` in this process (no interpreter start-up): its exit code, stdout and stderr.
    Hydra's logging set-up is off (its dictConfig would close handlers that other libraries bound to pytest's
    streams). Tests of signals, kills, other folders and installed plugins start a real process instead."""
    out, err, root = io.StringIO(), io.StringIO(), logging.getLogger()
    handlers, level = list(root.handlers), root.level  # Hydra configures logging per run: put it back after
    argv_before, sigterm, full = sys.argv, signal.getsignal(signal.SIGTERM), os.environ.pop("HYDRA_FULL_ERROR", None)
    try:
        sys.argv = ["run_benchmark.py"]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_benchmark.cli([*argv, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    finally:
        for h in set(root.handlers) - set(handlers):
            h.close()
        root.handlers[:], root.level = handlers, level
        sys.argv = argv_before
        signal.signal(signal.SIGTERM, sigterm)
        if full is not None:
            os.environ["HYDRA_FULL_ERROR"] = full
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
