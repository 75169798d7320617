"""The run configuration's schema (typed dataclasses) and validate(): every section checked before any work."""
import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import ehrbench.data as data_pkg
from ehrbench.metrics.registry import get_metric

from . import dp
from .base import SYNTHESIZERS, TorchSynthesizer, get_synthesizer, one_sentence
from .distributed import world_size
from .options import check_options
from .rundir import RESERVED_DATA_KEYS
from .trainer import check_trainer

NAME = r"[\w.+-]+"  # a tag or model label: a folder name


def must(text: str, **kw: Any) -> Any:
    """A field whose bad value is reported as '<key> must be <text>, got <value>'."""
    return field(metadata={"must": text}, **kw)


@dataclass
class CurveConfig:
    """Quality-vs-compute curves: sample and score during training at shares of the run's training FLOPs."""
    eval_at: Optional[List[float]] = must("null or a list of training-budget shares in (0, 1], e.g. [0.1, 0.25, "
                                          "0.5, 1.0]", default=None)
    n_samples: int = must("a positive integer", default=2000)
    metrics: Optional[Dict[str, Any]] = must("a mapping of metric names to their options", default=None)


@dataclass
class ExportConfig:
    dir: Optional[str] = must("a folder or null", default=None)
    format: str = must(f"one of {', '.join(data_pkg.export.FORMATS)}", default="csv")


@dataclass
class PathsConfig:
    runs: str = must("a folder", default="runs")


@dataclass
class RunConfig:
    """benchmarks/config.yaml; data, model, trainer and metrics are checked against their loader's, generator's,
    Trainer's and metric's signatures (models/options.py)."""
    data: Dict[str, Any] = must("a mapping with the dataset's name and options", default_factory=dict)
    model: Dict[str, Any] = must("a mapping with the generator's name and options", default_factory=dict)
    trainer: Dict[str, Any] = must("a mapping of Trainer options", default_factory=dict)
    metrics: Optional[Dict[str, Any]] = must("a mapping of metric names to their options", default=None)
    seed: int = must("an integer", default=0)
    n_samples: Optional[int] = must("a positive integer or null", default=None)
    canaries: int = must("0 (no audit) or an integer of at least 2", default=0)
    rerun: bool = must("true or false", default=False)
    split_from_seed: bool = must("true or false (true: the loader's split_seed is the run's seed)", default=False)
    tag: str = must("a non-empty name of letters, digits, '.', '+', '-' or '_' (in a YAML file, quote one that YAML "
                    "reads as a number or boolean: tag: 'inf')", default="default")
    resample_from: Optional[str] = must("a run directory (a string), without torchrun or curve.eval_at (it trains "
                                        "nothing)", default=None)
    paths: PathsConfig = must("a mapping", default_factory=PathsConfig)
    export: ExportConfig = must("a mapping", default_factory=ExportConfig)
    curve: CurveConfig = must("a mapping", default_factory=CurveConfig)


def _field(key: str) -> dataclasses.Field:
    """The schema field of a dotted key such as 'curve.eval_at'; one sentence if there is none."""
    cls: Any = RunConfig
    for part in key.split("."):
        fields = {x.name: x for x in dataclasses.fields(cls)} if cls else {}
        if part not in fields:
            raise ValueError(f"the configuration has no key '{key}'; valid choices: {', '.join(fields) or 'none'}")
        cls = fields[part].type if dataclasses.is_dataclass(fields[part].type) else None
    return fields[part]


def _bad(key: str, value: Any) -> ValueError:
    return ValueError(f"{key} must be {_field(key).metadata['must']}, got {value!r}")


def check_schema(config: dict) -> None:
    """Names and types of the top-level keys (OmegaConf against RunConfig), then their values."""
    for k in config:
        _field(k)
    try:
        OmegaConf.merge(OmegaConf.structured(RunConfig), config)
    except OmegaConfBaseException as e:
        key = re.sub(r"\[\d+\]$", "", str(e.full_key or e.key))
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        raise _bad(key, value) from None
    n, c, curve = config.get("n_samples"), config.get("canaries", 0), config.get("curve") or {}
    if n is not None and n < 1:
        raise _bad("n_samples", n)
    if c == 1 or c < 0:
        raise _bad("canaries", c)
    if not isinstance(config.get("tag"), str) or not re.fullmatch(NAME, config["tag"]):
        raise _bad("tag", config.get("tag"))
    eval_at = curve.get("eval_at")
    if eval_at is not None and (not eval_at or not all(0 < q <= 1 for q in eval_at)):
        raise _bad("curve.eval_at", eval_at)
    if eval_at and curve.get("n_samples", 1) < 1:
        raise _bad("curve.n_samples", curve.get("n_samples"))


def check_metric_map(metrics: dict, where: str) -> None:
    """Every name registered, every option a keyword of the metric (one sentence otherwise)."""
    for name, kw in metrics.items():
        try:
            spec = get_metric(name)
        except KeyError as e:
            raise ValueError(one_sentence(e)) from None
        if kw is not None and not isinstance(kw, dict):
            raise ValueError(f"{where}.{name} must be a mapping of options or {{}}, got {kw!r}")
        check_options(f"metric '{name}'", f"{where}.{name}", spec.fn, kw or {}, skip=("data", "synth", "seed"))


def validate(cfg: DictConfig) -> dict:
    """Check the whole configuration (schema, then names and options of data, model, trainer, metrics) before any
    work; returns it resolved, as given. Each problem is a ValueError of one sentence."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ValueError(f"the configuration does not resolve: {one_sentence(e)}") from None
    check_schema(config)
    dcfg, mcfg, tcfg = (config.get(k) or {} for k in ("data", "model", "trainer"))
    dname, mname = dcfg.get("name"), mcfg.get("name")
    if dname not in data_pkg.DATASETS:
        raise ValueError(f"unknown dataset {dname!r}; valid choices: {', '.join(sorted(data_pkg.DATASETS))}")
    check_options(f"dataset '{dname}'", "data", data_pkg.DATASETS[dname],
                  {k: v for k, v in dcfg.items() if k not in RESERVED_DATA_KEYS})
    if config.get("split_from_seed") and "split_seed" not in inspect.signature(data_pkg.DATASETS[dname]).parameters:
        raise ValueError(f"split_from_seed=true sets the loader's split_seed, which dataset '{dname}' does not take; "
                         "use split_from_seed=false")
    try:
        cls = get_synthesizer(str(mname))
    except KeyError as e:
        raise ValueError(one_sentence(e)) from None
    # model.label: a display name (the model column and the run directory) that any model may carry
    check_options(f"model '{mname}'", "model", cls.__init__, {k: v for k, v in mcfg.items() if k not in ("name", "label")})
    missing = getattr(cls, "unavailable", lambda: None)()  # an optional dependency (mst: the dp extra)
    if missing:
        raise ValueError(missing)
    label = mcfg.get("label")
    if label is not None and (not isinstance(label, str) or not re.fullmatch(NAME, label)):
        raise ValueError(f"model.label must be a name of letters, digits, '.', '+', '-' or '_', got {label!r}")
    if label is not None and label != mname and label in SYNTHESIZERS:
        raise ValueError(f"model.label {label!r} is the name of a registered generator; give the model another "
                         "display name")
    curve = config.get("curve") or {}
    if config.get("resample_from") is not None and (world_size() > 1 or curve.get("eval_at")):
        raise _bad("resample_from", config["resample_from"])
    export = config.get("export") or {}
    if export.get("dir") is not None and export.get("format") not in data_pkg.export.FORMATS:
        raise ValueError(f"unknown export.format {export.get('format')!r}; valid choices: "
                         f"{', '.join(data_pkg.export.FORMATS)}")
    check_trainer(tcfg)
    precision = tcfg.get("precision", "fp32")
    if precision == "auto":  # as the trainer resolves it: bf16 autocast on CUDA, fp32 elsewhere
        precision = "bf16" if tcfg.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available() else "fp32"
    if dp.dp_config(tcfg.get("dp"), precision) is not None and not (
            issubclass(cls, TorchSynthesizer) or getattr(cls, "supports_dp", False)):
        raise dp.not_private_error(mname)
    if curve.get("eval_at") or curve.get("metrics") is not None:
        if not curve.get("metrics"):
            raise _bad("curve.metrics", curve.get("metrics"))
        check_metric_map(curve["metrics"], "curve.metrics")
    check_metric_map(config.get("metrics") or {}, "metrics")
    return config
