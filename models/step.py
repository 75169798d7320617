"""One training step's machinery: the divergence guard (immediate or deferred), compiled forward+backward, fused Adam, foreach EMA."""
from __future__ import annotations

import math
import warnings
from typing import Iterable

import torch
from torch import nn

from .base import TorchSynthesizer

# Divergence limits (README "Divergence"): a loss beyond MAX_ABS_LOSS or a parameter beyond MAX_ABS_WEIGHT stops
# training like a NaN loss does. The loss limit is far above the largest healthy summed loss (the VAE's batch-summed
# BCE is about batch x width x ln 2, 6.3e5 at 512 x 1,782); weights of a healthy network stay within a few units.
MAX_ABS_LOSS = 1e9
MAX_ABS_WEIGHT = 1e6
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: bf16 autocast on CUDA, fp32 elsewhere
COMPILE_BACKEND = "inductor"  # torch.compile's backend for the compiled step


class TrainingDiverged(RuntimeError):
    """The loss became NaN, infinite or runaway, or a weight ran away; the last good checkpoint is kept."""


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32, bf16 or fp16 for this device; `auto` is bf16 on CUDA and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; valid choices: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision={precision} needs CUDA (autocast opt-in); this run is on {device.type}, use "
                         "fp32 or auto")
    return precision


def resolve_compile(compile: bool | str, device: torch.device) -> bool:
    """Whether to torch.compile the step: true, false, or `auto` (on CUDA only)."""
    if not (compile is True or compile is False or compile == "auto"):
        raise ValueError(f"unknown trainer.compile {compile!r}; valid choices: true, false, auto")
    return device.type == "cuda" if compile == "auto" else bool(compile)


def loss_problem(model: str, key: str, value: float, step: int, phase: str, limit: float | None) -> str | None:
    """The start of a TrainingDiverged message for a NaN/inf or runaway loss value, or None for a healthy one."""
    if not math.isfinite(value):
        return f"{model}: the '{key}' loss became {value} at step {step} of phase '{phase}'; training stopped"
    if limit is not None and abs(value) > limit:
        return (f"{model}: the '{key}' loss ran away to {value:.3g} (limit {limit:g}) at step {step} of phase "
                f"'{phase}'; training stopped (try a smaller model.lr)")
    return None


def weight_problem(model: str, named: Iterable[tuple[str, torch.Tensor]], limit: float | None, step: int,
                   phase: str) -> str | None:
    """The start of a TrainingDiverged message if a parameter is non-finite or beyond `limit` (one host read)."""
    if limit is None:
        return None
    for name, top in max_abs(named):
        if not math.isfinite(top) or top > limit:
            return (f"{model}: the weights ran away (max |w| {top:.4g} in '{name}', limit {limit:g}) by step {step} "
                    f"of phase '{phase}'; training stopped (try a smaller model.lr)")
    return None


class LossGuard:
    """Stops training at the first NaN/inf or runaway loss without ever stepping on it or checkpointing after it.

    Immediate (the fp32 default): each loss is read on the host before its optimiser step (`observe` returns the
    float and `problem` is set at once). Deferred (trainer.fast): nothing in the step waits for the device. Each
    loss's bad flag is computed on the device and its update skipped there (skip_update: fused Adam(W) takes it as
    `found_inf`, the mechanism GradScaler uses, and leaves weights, moments and step count untouched; other
    optimisers get its gradients zeroed), so nothing derived from a bad loss reaches the weights. The losses stay
    on the device until `flush()`, which the trainer calls before every log row, weight check, checkpoint, curve
    evaluation and the end of a phase: one host read of all of them, and `problem` names the first bad one.
    """

    def __init__(self, model: str, limit: float | None, deferred: bool) -> None:
        self.model, self.limit, self.deferred = model, limit, deferred
        self.pending: list[tuple[int, str, str, torch.Tensor]] = []
        self.problem: str | None = None

    def observe(self, loss: torch.Tensor, opt: torch.optim.Optimizer, step: int, key: str, phase: str,
                fused_skip: bool = True) -> float | torch.Tensor:
        """Check (immediate) or hold and guard (deferred) one loss before `opt` steps; returns its value."""
        value = loss.detach()
        if not self.deferred:
            v = float(value)
            self.problem = self.problem or loss_problem(self.model, key, v, step, phase, self.limit)
            return v
        value = value.float()
        # NaN compares false, so one comparison flags NaN, inf and runaway values alike
        bad = ~torch.isfinite(value) if self.limit is None else ~(value.abs() <= self.limit)
        skip_update(opt, bad, fused_skip)
        self.pending.append((step, key, phase, value))
        return value

    def flush(self) -> bool:
        """Read the held losses (one device synchronisation); True if one was bad (then `problem` names it)."""
        if not self.pending:
            return self.problem is not None
        values = torch.stack([v for *_, v in self.pending]).cpu().tolist()
        for (step, key, phase, _), v in zip(self.pending, values):
            self.problem = self.problem or loss_problem(self.model, key, v, step, phase, self.limit)
        self.pending.clear()
        return self.problem is not None


def skip_update(opt: torch.optim.Optimizer, bad: torch.Tensor, fused_skip: bool = True) -> None:
    """Make `opt`'s coming step ignore this loss where `bad` (a 0-d bool) holds. On a GPU without a host read:
    fused Adam(W) gets it as `found_inf` and skips the whole update in its kernel; other optimisers get the loss's
    gradients zeroed on the device. On a CPU, where reading it waits for nothing, the step is skipped outright
    (no gradients: the optimiser leaves those weights and its state alone)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if fused_skip and all(g.get("fused") for g in opt.param_groups):
        opt.found_inf = bad.to(torch.float32)
    elif bad.device.type == "cpu":
        if bool(bad):
            for p in params:
                p.grad = None
    else:
        zero_grads_where(params, bad)


def zero_grads_where(params: list[torch.Tensor], bad: torch.Tensor) -> None:
    """Zero every gradient where the 0-d bool `bad` holds, on its device (a NaN gradient becomes 0 too)."""
    for p in params:
        if p.grad is not None:
            p.grad.masked_fill_(bad, 0.0)


def use_fused(opts: dict[str, torch.optim.Optimizer], device: torch.device) -> None:
    """Adam and AdamW step with their fused kernel on CUDA (one launch per step) and plainly elsewhere; state
    loaded from a checkpoint is moved to where that kernel expects it (the step count on the parameter's device)."""
    for opt in opts.values():
        clear_skips(opt)
        if not isinstance(opt, torch.optim.Adam):  # AdamW included; RMSprop and others keep their own kernels
            continue
        params = [p for g in opt.param_groups for p in g["params"]]
        fused = device.type == "cuda" and all(p.is_cuda and p.is_floating_point() for p in params)
        for g in [*opt.param_groups, opt.defaults]:
            g["fused"] = fused or None
            if fused:
                g["foreach"] = False
        opt._step_supports_amp_scaling = fused
        for p, state in opt.state.items():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device if fused else "cpu", dtype=torch.float32)


def clear_skips(opt: torch.optim.Optimizer) -> None:
    """Forget the last deferred skip flag, so a later plain step of this optimiser is never skipped by it."""
    opt.__dict__.pop("found_inf", None)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model for every parameter in one fused foreach lerp (the same arithmetic as a
    per-parameter lerp_), and the buffers copied."""
    e = list(ema.parameters())
    if e:
        torch._foreach_lerp_(e, [p.detach() for p in model.parameters()], 1 - decay)
    for a, b in zip(ema.buffers(), model.buffers()):
        a.copy_(b)


def max_abs(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, float]]:
    """(name, max |value|) of each tensor, read from the device in one synchronisation (0 for empty tensors)."""
    named = list(named)
    if not named:
        return []
    tops = torch.stack([t.detach().abs().amax().float() if t.numel() else t.new_zeros((), dtype=torch.float32)
                        for _, t in named]).cpu().tolist()
    return [(n, v) for (n, _), v in zip(named, tops)]


def to_device(t: torch.Tensor, device: torch.device, asynchronous: bool) -> torch.Tensor:
    """Copy a host tensor to `device`; asynchronous on CUDA goes through pinned memory, so the host does not wait."""
    if asynchronous and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class ForwardBackward:
    """The forward and backward pass of one loss key: `synth.loss(x, key)` under autocast, backward (scaled for
    fp16), the detached loss returned. With compile, the whole pass goes through torch.compile (the forward graph
    and its AOT-compiled backward); if compiling fails, one warning, and the key runs eagerly from then on, its
    pass replayed from the same random state."""

    def __init__(self, synth: TorchSynthesizer, key: str, scaler: torch.amp.GradScaler, dtype: torch.dtype | None,
                 device: torch.device, compile: bool) -> None:
        self.synth, self.key, self.scaler, self.dtype, self.device = synth, key, scaler, dtype, device
        self.compiled = torch.compile(self._eager, backend=COMPILE_BACKEND) if compile else None

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.synth.loss(x, self.key)
        self.scaler.scale(loss).backward()
        return loss.detach().clone()  # a copy: compiled graphs may reuse their output memory at the next call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self._eager(x)
        cuda = self.device.type == "cuda"
        state = torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None
        try:
            return self.compiled(x)
        except Exception as e:  # a backend that cannot build here (no compiler, no triton, an unsupported op)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"{self.synth.name}: torch.compile failed for the '{self.key}' step ({type(e).__name__}: "
                          f"{first}); running it eagerly", RuntimeWarning, stacklevel=2)
            self.compiled = None
            torch.set_rng_state(state[0])
            if cuda:
                torch.cuda.set_rng_state(state[1], self.device)
            for p in self.synth.modules_.parameters():
                p.grad = None
            return self._eager(x)
