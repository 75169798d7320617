"""Hydra entry point: one run = (data, model, seed) -> fit -> sample -> evaluate -> the run directory.

The cell is models/pipeline.py (the configuration's schema and checks: models/config.py): before anything in the run
directory changes, the whole configuration is checked and the directory's record read; a complete run with the same
settings is skipped, one with other settings refused (rerun=true replaces it). A user error is one sentence on stderr and exit code 1
(HYDRA_FULL_ERROR=1 shows the traceback; in a sweep each failing cell prints its sentence and Hydra reports the
first at the end); Ctrl-C or SIGTERM prints one line and leaves status "interrupted".
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any


def _bind_ehrbench(root: Path) -> None:
    """Import `ehrbench.data`, `ehrbench.models`, ... from the folders next to this file (an installed copy
    or an uninstalled clone alike), and run without the repository root on sys.path, so that a plugin or
    project with its own top-level `models` or `data` package is not shadowed by ours (docs/plugins.md)."""
    if "ehrbench" not in sys.modules and (root / "models" / "__init__.py").exists():  # in a clone, not a wheel
        import importlib.machinery
        import importlib.util

        spec = importlib.machinery.ModuleSpec("ehrbench", None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        sys.modules["ehrbench"] = importlib.util.module_from_spec(spec)
    if __name__ == "__main__" and sys.path and Path(sys.path[0] or ".").resolve() == root:
        sys.path.pop(0)


_bind_ehrbench(Path(__file__).resolve().parent)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import ehrbench.models as models_pkg
from ehrbench.models import distributed
from ehrbench.models.base import one_sentence
from ehrbench.models.pipeline import REPO, execute, export, follow
from ehrbench.models.plugins import prepare_argv
from ehrbench.models.rundir import RunDirError, remove_empty

# ${ehrbench_repo:} in configs: this checkout's root (the Ray launcher puts it on its workers' PYTHONPATH)
OmegaConf.register_new_resolver("ehrbench_repo", lambda: str(REPO), replace=True)


def bind_worker() -> None:
    """Ray's worker_process_setup_hook (benchmarks/hydra/launcher/ray.yaml): importing this module has bound
    `ehrbench` to this checkout before the worker unpickles a sweep cell."""


# benchmarks/hydra/launcher/{joblib,submitit_slurm}.yaml share the plugins' names on purpose (so that
# `hydra/launcher=joblib` picks ours); Hydra 1.3 warns about that harmless overlay.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema")
# errors caused by the input (configuration, files, data, divergence): one sentence, no traceback
USER_ERRORS = (ValueError, KeyError, OSError, RunDirError, models_pkg.TrainingDiverged)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, `timeout`, `kill`): handled as Ctrl-C, exit code 143."""


def on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class UserError(CompactHydraException):
    """One sentence that Hydra prints without a traceback (exit code 1); the cause stays chained."""


@hydra.main(version_base="1.3", config_path=str(REPO / "benchmarks"), config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    told = []  # under torchrun: whether rank 0 has told the other ranks if the run goes ahead

    def go(ok: bool) -> None:
        if distributed.setup() > 1 and not told:
            told.append(distributed.decide(ok))

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if distributed.setup() > 1 and distributed.rank() > 0:
            return follow(cfg, run_dir)
        if distributed.setup() > 1 and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise ValueError("torchrun runs one cell, not a sweep (-m): start one torchrun per cell, e.g. from a "
                             "launcher job")
        if cfg.get("export") and cfg.export.get("dir"):
            export(cfg)
            remove_empty(run_dir, Path(cfg.paths.runs))  # the folders Hydra made: an export makes no run
            return
        execute(cfg, run_dir, go)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: {run_dir} keeps its last checkpoint; run the same command again to resume", file=sys.stderr)
        raise SystemExit(143 if isinstance(e, Terminated) else 130) from None
    except USER_ERRORS as e:
        remove_empty(run_dir, Path(cfg.paths.runs))  # the empty folders Hydra made for a run refused before it started
        msg = f"error: {one_sentence(e)}"
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep goes on; Hydra reports the first failure at the end
            print(f"{msg} ({run_dir})", file=sys.stderr)
            raise UserError(msg) from e
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(msg, file=sys.stderr)  # one sentence, exit code 1; run.json keeps the traceback of a started run
        raise SystemExit(1) from None
    finally:
        if distributed.rank() == 0:
            go(False)  # a rank-0 failure before training: the other ranks stop waiting
        distributed.teardown()


def cli(argv: list[str]) -> int:
    """`python run_benchmark.py ARGV`: the exit code (Hydra parses sys.argv, so it is set here)."""
    try:
        sys.argv[1:] = prepare_argv(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
