"""The Synthesizer protocol (sklearn contract), the SYNTHESIZERS registry and the TorchSynthesizer base."""
from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ehrbench.data import EHRData, check_matrix
from ehrbench.data.cache import atomic_path

from .options import check_options

SYNTHESIZERS: dict[str, type["Synthesizer"]] = {}
_SHAPE_KEYS = ("n_features_", "kinds_", "columns_")  # saved in config.json, not in state.pt
ENTRY_POINT_GROUP = "ehrbench.synthesizers"


def register_synthesizer(name: str):
    """Class decorator: register a Synthesizer subclass under `name` (the YAML's `name:` and the leaderboard key)."""

    def wrap(cls: type[Synthesizer]) -> type[Synthesizer]:
        if name in SYNTHESIZERS and SYNTHESIZERS[name] is not cls:
            raise ValueError(f"synthesizer '{name}' is already registered by {SYNTHESIZERS[name].__module__}")
        cls.name = name
        SYNTHESIZERS[name] = cls
        return cls

    return wrap


def load_entry_points() -> None:
    """Load third-party generators declared in the `ehrbench.synthesizers` entry-point group."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in SYNTHESIZERS:
            cls = ep.load()
            register_synthesizer(ep.name)(cls)


def get_synthesizer(name: str) -> type["Synthesizer"]:
    if name not in SYNTHESIZERS:
        load_entry_points()
    if name not in SYNTHESIZERS:
        module = Path(__file__).with_name(f"{name}.py")
        hint = (f"models/{name}.py exists but is not imported: add `from . import {name}` to models/__init__.py"
                if module.exists() else f"a generator registers with @register_synthesizer('{name}') in a module "
                "that models/__init__.py imports, or through the ehrbench.synthesizers entry point")
        raise KeyError(f"unknown model '{name}'; valid choices: {', '.join(sorted(SYNTHESIZERS))} ({hint})")
    return SYNTHESIZERS[name]


def build_synthesizer(name: str, **params: Any) -> "Synthesizer":
    """Instantiate a registered synthesizer; unknown hyperparameters are a clear error listing the valid ones."""
    cls = get_synthesizer(name)
    valid = list(inspect.signature(cls.__init__).parameters)[1:]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(f"model '{name}' has no hyperparameter '{unknown[0]}'; valid choices: {', '.join(valid)}")
    return cls(**params)


class Synthesizer:
    """Base class of every generator.

    Contract (docs/contracts.md §3): `__init__` only stores JSON-serialisable hyperparameters; `fit(data, trainer)`
    learns state in attributes ending in `_` and returns self; `sample(n, seed)` returns an (n, d) float32
    array whose binary columns are exactly 0/1; `save(dir)` writes config.json + state.pt (tensors only);
    `Synthesizer.load(dir)` rebuilds it.
    """

    name: ClassVar[str] = "base"
    # hyperparameters read only when sampling: `resample_from` may change them on a trained run (models/resample.py)
    sampling_params: ClassVar[tuple[str, ...]] = ()

    # ---- hyperparameters -------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        keys = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {k: _jsonable(getattr(self, k)) for k in keys}

    # ---- fitting ---------------------------------------------------------------------------------
    def _prepare_fit(self, data: EHRData | np.ndarray, kinds: tuple[str, ...] | None = None) -> np.ndarray:
        """Validate the hyperparameters' ranges and the training matrix, record columns_/kinds_/n_features_;
        returns float32 X."""
        self._check_ranges()
        if isinstance(data, EHRData):
            X, kinds, columns = data.train, data.kinds, data.columns
        else:
            X = np.asarray(data)
            kinds = tuple(kinds) if kinds is not None else ("binary",) * (X.shape[1] if X.ndim == 2 else 0)
            columns = tuple(f"x{j}" for j in range(len(kinds)))
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"{self.name}.fit: expected a non-empty 2-D patients x features matrix, got shape {X.shape}")
        check_matrix(np.asarray(X, dtype=np.float32), kinds, f"{self.name}.fit", columns)
        self.n_features_ = X.shape[1]
        self.kinds_ = tuple(kinds)
        self.columns_ = tuple(columns)
        return np.ascontiguousarray(X, dtype=np.float32)

    def fit(self, data: EHRData | np.ndarray, trainer: Any = None) -> "Synthesizer":
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        raise NotImplementedError

    def _check_ranges(self) -> None:
        """Each hyperparameter's type and range (models/options.py:RANGES), one sentence naming the first bad one."""
        check_options(f"model '{self.name}'", self.name, type(self).__init__, self.get_params())

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_"):
            raise RuntimeError(f"{self.name} is not fitted; call fit() or Synthesizer.load() first")

    @property
    def binary_mask(self) -> np.ndarray:
        return np.asarray([k == "binary" for k in self.kinds_])

    @property
    def n_params(self) -> int:
        """Learned numbers: the elements of the learned state that save() writes (0 before fit)."""
        if not hasattr(self, "n_features_"):
            return 0
        return int(sum(t.numel() for t in self.state_tensors().values()))

    # ---- persistence -----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned state as a flat dict of tensors (what state.pt holds).

        Default: every learned attribute (name ending in `_`, other than n_features_/kinds_/columns_) that is a
        numpy array, a tensor or a number. Override this and load_state_tensors for any other state."""
        state = {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_") or key in _SHAPE_KEYS:
                continue
            if isinstance(value, torch.Tensor):
                state[key] = value.detach().cpu()
            elif isinstance(value, (np.ndarray, np.number, int, float, bool)) and np.asarray(value).dtype != object:
                state[key] = torch.from_numpy(np.array(value))
            else:
                raise TypeError(f"{self.name}.save: learned attribute '{key}' is a {type(value).__name__}; the default "
                                "save stores numpy arrays, tensors and numbers only, so override state_tensors() and "
                                "load_state_tensors() (docs/plugins.md)")
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Default: set each saved attribute back (numpy arrays; 0-d values as Python numbers)."""
        for key, t in state.items():
            a = t.numpy()
            setattr(self, key, a.item() if a.ndim == 0 else a)

    def save(self, directory: str | os.PathLike) -> None:
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        config = {"name": self.name, "params": self.get_params(), "n_features": self.n_features_,
                  "kinds": list(self.kinds_), "columns": list(self.columns_)}
        with atomic_path(d / "state.pt") as tmp, open(tmp, "wb") as f:
            torch.save(self.state_tensors(), f)
        with atomic_path(d / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Synthesizer":
        d = Path(directory)
        if not (d / "config.json").exists() or not (d / "state.pt").exists():
            raise FileNotFoundError(f"{d}: not a saved synthesizer (expected config.json and state.pt)")
        try:
            config = json.loads((d / "config.json").read_text())
            if not isinstance(config, dict) or not {"name", "params", "n_features", "kinds", "columns"} <= set(config):
                raise ValueError("not a synthesizer description")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{d / 'config.json'} is unreadable ({one_sentence(e)}); run the training again "
                             "(rerun=true) to write a new one") from None
        target = get_synthesizer(config["name"])
        if cls is not Synthesizer and cls is not TorchSynthesizer and not issubclass(target, cls):
            raise TypeError(f"{d} holds a '{config['name']}' synthesizer, not '{cls.name}'")
        self = target(**config["params"])
        self.n_features_ = int(config["n_features"])
        self.kinds_ = tuple(config["kinds"])
        self.columns_ = tuple(config["columns"])
        advice = "run the training again (rerun=true) to write a new one"
        state = read_tensors(d / "state.pt", advice)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{d / 'state.pt'} is unreadable (not a mapping of tensors); {advice}")
        self.load_state_tensors(state)
        return self

    def _finish(self, X: np.ndarray) -> np.ndarray:
        """Final output contract: float32, binary columns exactly 0/1 (callers binarise by their own rule)."""
        X = np.asarray(X, dtype=np.float32)
        assert X.shape[1] == self.n_features_
        return X


class TorchSynthesizer(Synthesizer):
    """A synthesizer trained by the shared Trainer.

    Subclasses give `build(n_features) -> nn.ModuleDict`, `optimizers() -> dict[key, Optimizer]`,
    `loss(x, key) -> Tensor` and optionally `lr_scale(step, total)`; `fit` calls `trainer.run(...)` once per
    training phase. `plan(n_rows)` declares those phases at the paper's settings (models.budget.Phase: name,
    paper steps, batch size, loss keys per step), so the trainer can size every phase of every method by one
    budget rule (trainer.budget=compute needs it); `run_plan` runs them. `ema_decay` (a hyperparameter, or None)
    makes the trainer keep an EMA copy `ema_`, which `sampling_modules()` returns for sampling.
    `row_reduction` says how its losses reduce over the batch's rows: "mean" or "sum" of per-row terms, row j's
    term a function of row j and its own random draws only, or None (undeclared). One fact, three readers: ghost
    clipping needs it declared (models/ghost.py); DP noise multiplicity averages a record's K copies, so a "sum"
    loss is divided by K there (models/dp.py); under torchrun a rank's slice of a "sum" loss weighs 1, of a mean
    its share of the rows (models/distributed.py). `paper_form` holds attributes that the FLOP count
    (models.budget.step_flops) sets on its copy of the model, so that budgets count the paper's computation, not
    a faster equal one (TabDDPM's folded network).
    """

    ema_decay: float | None = None
    row_reduction: str | None = None  # "mean" | "sum" of per-row terms, or None (undeclared: no ghost clipping)
    paper_form: ClassVar[dict[str, Any]] = {}

    def build(self, n_features: int) -> nn.ModuleDict:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        raise NotImplementedError

    def lr_scale(self, step: int, total: int) -> float:
        return 1.0

    def model_rows(self, X: np.ndarray) -> np.ndarray:
        """Records (data columns) as the rows `loss` reads: the same unless fit reorders them."""
        return np.ascontiguousarray(X, dtype=np.float32)

    def plan(self, n_rows: int) -> list | None:
        """The paper's training phases for n_rows training records (list of models.budget.Phase); None = undeclared."""
        return None

    def run_plan(self, X: np.ndarray, trainer: Any) -> None:
        """Train every phase of `plan(len(X))` in order with the shared trainer."""
        for ph in self.plan(len(X)):
            trainer.run(self, X, total_steps=ph.total_steps, batch_size=ph.batch_size, keys=ph.keys, phase=ph.name)

    def init_modules(self, n_features: int) -> None:
        """Build fresh modules (on CPU; the trainer moves them) and the EMA copy if the method has one."""
        self.modules_ = self.build(n_features)
        self.ema_ = _copy_frozen(self.modules_) if self.ema_decay else None
        self.device_ = torch.device("cpu")

    def init_training(self, n_features: int, seed: int = 0) -> None:
        """Fresh modules (initialised from `seed`), EMA copy and optimizers (`optimizers_`), ready for Trainer.run."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.init_modules(n_features)
        self.optimizers_ = self.optimizers()
        self.n_ema_ = 0

    def sampling_modules(self) -> nn.ModuleDict:
        return self.ema_ if self.ema_ is not None else self.modules_

    @property
    def n_params(self) -> int:
        if not hasattr(self, "modules_"):
            return 0
        return sum(p.numel() for p in self.modules_.parameters() if p.requires_grad)

    def to(self, device: torch.device) -> "TorchSynthesizer":
        self.modules_.to(device)
        if self.ema_ is not None:
            self.ema_.to(device)
        self.device_ = torch.device(device)
        return self

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"modules.{k}": v.detach().cpu() for k, v in self.modules_.state_dict().items()}
        if self.ema_ is not None:
            state.update({f"ema.{k}": v.detach().cpu() for k, v in self.ema_.state_dict().items()})
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors in place (keeping Parameter identity, so optimizers stay valid); builds modules if absent."""
        if not hasattr(self, "modules_"):
            self.init_modules(self.n_features_)
        mods = {k[len("modules."):]: v for k, v in state.items() if k.startswith("modules.")}
        ema = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
        try:
            self.modules_.load_state_dict(mods)
            if self.ema_ is not None:
                self.ema_.load_state_dict(ema or mods)
        except RuntimeError as e:
            raise ValueError(f"{self.name}: saved state does not fit this model's shapes "
                             f"(n_features={self.n_features_}): {str(e).splitlines()[0]}") from None
        for m in (self.modules_, self.ema_):
            if m is not None:
                m.eval()


def one_sentence(e: BaseException) -> str:
    """The first line of an exception's message (KeyError without its quotes)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def read_tensors(path: Path, advice: str) -> Any:
    """torch.load with the safe loader (tensors and plain containers only; a pickle payload never runs); anything
    unreadable is one sentence naming the file and `advice`, never torch's own text or a traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated zip, foreign pickle, not a torch file
        raise ValueError(f"{path} is unreadable (truncated, corrupt, or holding more than tensors); {advice}") from None


def _copy_frozen(modules: nn.ModuleDict) -> nn.ModuleDict:
    import copy

    ema = copy.deepcopy(modules)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if hasattr(v, "items"):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, Sequence) and not isinstance(v, (str, bytes)):  # list, or OmegaConf's ListConfig
        return [_jsonable(x) for x in v]
    return v
