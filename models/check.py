"""check_synthesizer: the contract check every generator, built in or plugin, must pass (docs/plugins.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ehrbench.data import EHRData, load_dataset

from .base import SYNTHESIZERS, Synthesizer, TorchSynthesizer, get_synthesizer, register_synthesizer
from .trainer import Trainer


class ContractError(AssertionError):
    """A synthesizer broke its contract; the message names the check and what was seen."""


def check_data(seed: int = 3) -> EHRData:
    """The default check data: 300 simulated patients x (16 codes + demographics + label), binary, and two
    continuous columns in [0, 1] (one tied to a code), so that both column kinds are exercised."""
    base = load_dataset("synthetic", n_patients=300, n_codes=16, seed=seed)
    rng = np.random.default_rng(seed)

    def widen(X: np.ndarray) -> np.ndarray:
        lab = np.clip(0.3 + 0.4 * X[:, :1] + 0.1 * rng.standard_normal((len(X), 1)), 0, 1)
        return np.c_[X, lab, rng.beta(2, 5, (len(X), 1))].astype(np.float32)

    return EHRData(widen(base.train), widen(base.holdout), widen(base.test), (*base.columns, "LAB_A", "LAB_B"),
                   (*base.kinds, "continuous", "continuous"), base.label_columns, name="check")


def check_synthesizer(name_or_class: str | type[Synthesizer], params: dict | None = None,
                      data: EHRData | None = None, *, steps: int = 6, n: int = 64,
                      fresh_process: bool = True) -> dict[str, Any]:
    """Check a generator against the Synthesizer contract on tiny data; raise ContractError on the first breach.

    Checks: hyperparameters JSON-serialisable and rebuildable; fit returns self; sample(n, seed) is (n, d)
    float32 with binary columns exactly {0, 1} and continuous columns finite (and in [0, 1] where the training
    column is); the same seeds give the same model and samples, another sample seed other samples; n_params a
    non-negative int (for a TorchSynthesizer: its trainable parameters); save -> load gives identical samples, in
    this process and in a fresh one; fit rejects non-binary, non-finite and 1-D input with a ValueError.
    Torch generators train `steps` steps per phase (trainer budget `steps`). Returns a report of what ran.
    """
    cls, name, temporary = _resolve(name_or_class)
    params = dict(params or {})
    data = data if data is not None else check_data()
    report: dict[str, Any] = {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}", "checks": []}
    try:
        _params(cls, params, report)
        a = _fit(cls, params, data, steps)
        S = _sample_contract(a, data, n, report)
        b = _fit(cls, params, data, steps)
        _expect(np.array_equal(S, b.sample(n, seed=0)), "seed determinism",
                "two fits with the same seeds gave different samples (draw randomness from trainer.seed and the "
                "sample seed only)")
        _expect(np.array_equal(S, a.sample(n, seed=0)), "seed determinism", "sampling twice with seed 0 differed")
        _expect(not np.array_equal(S, a.sample(n, seed=1)), "seed sensitivity", "seeds 0 and 1 gave identical samples")
        report["checks"] += ["seed determinism", "seed sensitivity"]
        _n_params(a, report)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                a.save(Path(tmp) / "synth")
                back = Synthesizer.load(Path(tmp) / "synth")
                again = back.sample(n, seed=0)
            except Exception as e:  # noqa: BLE001 (reported as the contract breach it is)
                raise ContractError(f"save/load: {type(e).__name__}: {e}") from e
            _expect(type(back) is type(a) and back.get_params() == a.get_params(), "save/load",
                    f"loaded {type(back).__name__} with {back.get_params()}, saved {type(a).__name__} with {a.get_params()}")
            _expect(np.array_equal(again, S), "save/load", "the loaded model samples differently")
            _expect(back.n_params == a.n_params, "save/load", f"n_params {back.n_params} after load, {a.n_params} before")
            report["checks"].append("save/load")
            report["fresh_process"] = fresh_process and _fresh_process(cls, name, Path(tmp) / "synth", S, n)
        _bad_input(cls, params, report)
    finally:
        if temporary:
            SYNTHESIZERS.pop(name, None)
    return report


def _resolve(name_or_class: str | type[Synthesizer]) -> tuple[type[Synthesizer], str, bool]:
    """The class, its registry name, and whether it was registered here for the check only."""
    if isinstance(name_or_class, str):
        return get_synthesizer(name_or_class), name_or_class, False
    cls = name_or_class
    if not (isinstance(cls, type) and issubclass(cls, Synthesizer)):
        raise TypeError(f"check_synthesizer takes a registered name or a Synthesizer subclass, got {cls!r}")
    for key, registered in SYNTHESIZERS.items():
        if registered is cls:
            return cls, key, False
    name = cls.__name__.lower()
    register_synthesizer(name)(cls)
    return cls, name, True


def _expect(ok: bool, check: str, detail: str) -> None:
    if not ok:
        raise ContractError(f"{check}: {detail}")


def _params(cls: type[Synthesizer], params: dict, report: dict) -> None:
    m = cls(**params)
    got = m.get_params()
    try:
        json.dumps(got)
    except TypeError as e:
        raise ContractError(f"hyperparameters: get_params() is not JSON-serialisable ({e})") from None
    _expect(cls(**got).get_params() == got, "hyperparameters", "cls(**get_params()) does not give the same parameters")
    report["checks"].append("hyperparameters")


def _fit(cls: type[Synthesizer], params: dict, data: EHRData, steps: int) -> Synthesizer:
    trainer = Trainer(device="cpu", budget="steps", max_steps=steps, log_every=max(1, steps), progress=False,
                      checkpoint_every=10**9, seed=0)
    m = cls(**params)
    out = m.fit(data, trainer)
    _expect(out is m, "fit", f"fit() must return self, returned {type(out).__name__}")
    _expect(getattr(m, "n_features_", None) == data.n_features, "fit",
            "after fit, n_features_ must equal the data width (call self._prepare_fit(data) in fit)")
    return m


def _sample_contract(m: Synthesizer, data: EHRData, n: int, report: dict) -> np.ndarray:
    S = m.sample(n, seed=0)
    _expect(isinstance(S, np.ndarray) and S.shape == (n, data.n_features), "sample shape",
            f"sample({n}) gave {type(S).__name__} of shape {getattr(S, 'shape', None)}, expected ({n}, {data.n_features})")
    _expect(S.dtype == np.float32, "sample dtype", f"samples are {S.dtype}, expected float32")
    binary = np.asarray([k == "binary" for k in data.kinds])
    values = np.unique(S[:, binary])
    _expect(set(values.tolist()) <= {0.0, 1.0}, "binary columns",
            f"binary columns hold values other than 0/1, e.g. {values[(values != 0) & (values != 1)][:3].tolist()}")
    C, T = S[:, ~binary], data.train[:, ~binary]
    _expect(bool(np.isfinite(C).all()), "continuous columns", "continuous columns hold NaN or inf")
    unit = (T.min(0) >= 0) & (T.max(0) <= 1)
    _expect(bool(((C[:, unit] >= 0) & (C[:, unit] <= 1)).all()), "continuous columns",
            "a continuous column scaled to [0, 1] in training was sampled outside [0, 1]")
    report["checks"] += ["sample shape", "sample dtype", "binary columns", "continuous columns"]
    return S


def _n_params(m: Synthesizer, report: dict) -> None:
    k = m.n_params
    _expect(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0, "n_params",
            f"n_params must be a non-negative int, got {k!r}")
    if isinstance(m, TorchSynthesizer):
        want = sum(p.numel() for p in m.modules_.parameters() if p.requires_grad)
        _expect(k == want, "n_params", f"n_params is {k}, the trainable parameters of modules_ number {want}")
    report["n_params"] = int(k)
    report["checks"].append("n_params")


def _bad_input(cls: type[Synthesizer], params: dict, report: dict) -> None:
    X = np.zeros((20, 4), dtype=np.float32)
    X[::2, 0] = 1.0
    cases = {"a non-binary value": X.copy(), "NaN": X.copy(), "a 1-D array": X[:, 0].copy()}
    cases["a non-binary value"][3, 1] = 0.5
    cases["NaN"][3, 1] = np.nan
    for what, bad in cases.items():
        try:
            cls(**params).fit(bad, None)
        except ValueError:
            continue
        except Exception as e:  # noqa: BLE001 (reported, not swallowed)
            raise ContractError(f"bad input: fit with {what} raised {type(e).__name__} ({e}); expected a ValueError "
                                "(call self._prepare_fit(data) first)") from None
        raise ContractError(f"bad input: fit accepted {what} (call self._prepare_fit(data) first)")
    report["checks"].append("bad input")


_CHILD = """
import importlib, importlib.machinery, importlib.util, json, sys
import numpy as np, torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])  # another thread count may round matmuls differently
if "ehrbench" not in sys.modules:
    spec = importlib.machinery.ModuleSpec("ehrbench", None, is_package=True)
    spec.submodule_search_locations = a["ehrbench_path"]
    sys.modules["ehrbench"] = importlib.util.module_from_spec(spec)
from ehrbench.models import SYNTHESIZERS, Synthesizer, register_synthesizer
obj = importlib.import_module(a["module"])
for part in a["qualname"].split("."):
    obj = getattr(obj, part)
if a["name"] not in SYNTHESIZERS:
    register_synthesizer(a["name"])(obj)
np.save(a["out"], Synthesizer.load(a["dir"]).sample(a["n"], seed=0))
"""


def _fresh_process(cls: type[Synthesizer], name: str, directory: Path, S: np.ndarray, n: int) -> bool:
    """Load the saved model in a new interpreter and compare its samples; False when the class is not importable."""
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return False
    import ehrbench

    out = directory.parent / "fresh.npy"
    args = {"module": cls.__module__, "qualname": cls.__qualname__, "name": name, "dir": str(directory),
            "out": str(out), "n": n, "ehrbench_path": list(ehrbench.__path__),
            "threads": torch.get_num_threads()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)}
    # -P and cwd: no current folder on the child's path (it would put a checkout's `models` folder first)
    proc = subprocess.run([sys.executable, "-P", "-c", _CHILD, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=directory.parent)
    lines = proc.stderr.strip().splitlines()
    _expect(proc.returncode == 0, "save/load (fresh process)",
            f"loading in a new interpreter failed: {lines[-1] if lines else proc.returncode}")
    _expect(np.array_equal(np.load(out), S), "save/load (fresh process)",
            "a new interpreter samples differently from the saved model (state not all in state.pt?)")
    return True


__all__ = ["ContractError", "check_data", "check_synthesizer"]

