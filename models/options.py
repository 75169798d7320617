"""Typed options: a structured config built from a signature checks names and types, RANGES checks values."""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import re
import types
import typing
from typing import Any, Callable, Dict, List, Optional, Union

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# The range of every numeric option of the built-in generators, the trainer, the metrics and the loaders, by name:
# (low, low included, high, high included). A list-valued option (layer widths) holds numbers in the range; None
# (where an option allows it) is not checked.
POSITIVE, AT_LEAST_0, AT_LEAST_1, AT_LEAST_2 = (0, False, None, False), (0, True, None, False), (1, True, None, False), (2, True, None, False)
UNIT_OPEN, UNIT = (0, True, 1, False), (0, True, 1, True)
RANGES: dict[str, tuple] = {
    **dict.fromkeys(["batch_size", "sample_batch_size", "pretrain_batch_size", "epochs", "num_steps", "num_timesteps",
                     "steps", "d_updates", "iters", "z_dim", "latent_dim", "hidden_dim", "embedding_dim", "noise_dim",
                     "time_dim", "class_dim", "dim_t", "n_channels_base", "unit_dims", "generator_dims",
                     "discriminator_dims", "critic_dims", "d_layers", "compress_dims", "decompress_dims", "k",
                     "known", "max_iter", "n_estimators", "n_train", "top_k", "n_codes", "min_count", "max_steps",
                     "checkpoint_every", "log_every", "reference_steps", "bins", "warmup_d_updates"], AT_LEAST_1),
    **dict.fromkeys(["warmup_steps", "pretrain_epochs", "burn_in_batches"], AT_LEAST_0),
    **dict.fromkeys(["n", "folds", "learned_sinusoidal_dim", "n_null"], AT_LEAST_2),
    "n_patients": (3, True, None, False),
    **dict.fromkeys(["lr", "lr_d", "lr_g", "decoder_lr", "sigma_data", "sigma_min", "sigma_max", "rho", "rms_eps",
                     "bn_eps", "clip_value", "p_std", "hours", "C", "grad_clip", "max_abs_loss", "max_abs_weight",
                     "flops", "fraction"], POSITIVE),
    **dict.fromkeys(["weight_decay", "l2", "gp_weight", "guidance_scale"], AT_LEAST_0),
    **dict.fromkeys(["ema_decay", "bn_decay", "beta1", "beta2", "dropout", "label_dropout", "rms_rho",
                     "warmup_fraction"], UNIT_OPEN),
    **dict.fromkeys(["label_prevalence", "split"], UNIT),
}
PRIMITIVES = (int, float, bool, str)


def in_range(value: Any, rule: tuple) -> bool:
    lo, lo_in, hi, hi_in = rule
    if isinstance(value, (list, tuple)):
        return all(in_range(v, rule) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True  # a type error, reported by the schema
    return (value > lo or (lo_in and value == lo)) and (hi is None or value < hi or (hi_in and value == hi))


def describe_range(rule: tuple) -> str:
    lo, lo_in, hi, hi_in = rule
    if hi is None:
        return f"{'>=' if lo_in else '>'} {lo}"
    return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def config_type(tp: Any) -> Any:
    """The structured-config type OmegaConf checks for a Python annotation; Any where it has none (Path, a class,
    a union of unlike types): such an option is passed through unchecked."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in PRIMITIVES:
        return tp
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = float if set(rest) == {int, float} else config_type(rest[0]) if len(rest) == 1 else Any
        return inner if inner is Any or len(rest) == len(args) else Optional[inner]
    if tp in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        elem = config_type(args[0]) if args and args[0] is not Ellipsis else Any
        return List[elem if elem in PRIMITIVES else Any]
    if tp is dict or origin in (dict, collections.abc.Mapping):
        return Dict[str, Any]
    return Any


@functools.lru_cache(maxsize=None)
def schema(fn: Callable, skip: tuple[str, ...] = ()) -> tuple[Any, dict[str, inspect.Parameter], bool]:
    """The structured config of fn's keyword options (a dataclass, every field MISSING), its parameters by name and
    whether it takes **kwargs."""
    sig = inspect.signature(fn)
    params = {k: p for k, p in sig.parameters.items() if k not in ("self", *skip)
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 (an annotation that does not resolve, e.g. under TYPE_CHECKING: unchecked)
        hints = {}
    fields = [(k, config_type(hints.get(k, Any)), dataclasses.field(default=MISSING)) for k in params]
    cls = dataclasses.make_dataclass(f"{getattr(fn, '__qualname__', 'fn').replace('.', '_')}_options", fields)
    return cls, params, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def check_options(where: str, prefix: str, fn: Callable, options: dict, skip: tuple[str, ...] = ()) -> None:
    """Every option must be a parameter of fn (unless it takes **kwargs), have its annotation's type (checked by
    OmegaConf against schema(fn)) and lie in its RANGES entry; otherwise one sentence naming the first bad one."""
    cls, params, open_ended = schema(fn, tuple(skip))
    for k in options:
        if k not in params and not open_ended:
            raise ValueError(f"{where} has no option '{k}'; valid choices: {', '.join(params) or 'none'}")
    known = {k: v for k, v in options.items() if k in params}
    try:
        OmegaConf.merge(OmegaConf.structured(cls), known)
    except OmegaConfBaseException as e:
        k = re.split(r"[.\[]", str(e.full_key or e.key))[0]
        ann = params[k].annotation
        ann = ann if isinstance(ann, str) else inspect.formatannotation(ann)
        raise ValueError(f"{prefix}.{k} must be {ann}, got {known.get(k)!r}") from None
    for k, v in known.items():
        if k in RANGES and v is not None and not in_range(v, RANGES[k]):
            each = "each entry " if isinstance(v, (list, tuple)) else ""
            raise ValueError(f"{prefix}.{k} must be {each}{describe_range(RANGES[k])}, got {list(v) if each else v!r}")
