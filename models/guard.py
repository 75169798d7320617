"""The divergence guard: a NaN, infinite or runaway loss or weight stops training, never stepped on or checkpointed."""
from __future__ import annotations

import math
from typing import Iterable

import torch

# Divergence limits (docs/guide.md "Divergence"): a loss beyond MAX_ABS_LOSS or a parameter beyond MAX_ABS_WEIGHT stops
# training like a NaN loss does. The loss limit is far above the largest healthy summed loss (the VAE's batch-summed
# BCE is about batch x width x ln 2, 6.3e5 at 512 x 1,782); weights of a healthy network stay within a few units.
MAX_ABS_LOSS = 1e9
MAX_ABS_WEIGHT = 1e6
class TrainingDiverged(RuntimeError):
    """The loss became NaN, infinite or runaway, or a weight ran away; the last good checkpoint is kept."""


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
    if bad.device.type == "cpu":
        if bool(bad):
            for p in params:
                p.grad = None
    elif fused_skip and all(g.get("fused") for g in opt.param_groups):
        opt.found_inf = bad.to(torch.float32)
    else:
        zero_grads_where(params, bad)


def zero_grads_where(params: list[torch.Tensor], bad: torch.Tensor) -> None:
    """Zero every gradient where the 0-d bool `bad` holds, on its device (a NaN gradient becomes 0 too)."""
    for p in params:
        if p.grad is not None:
            p.grad.masked_fill_(bad, 0.0)


def max_abs(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, float]]:
    """(name, max |value|) of each tensor, read from the device in one synchronisation (0 for empty tensors)."""
    named = list(named)
    if not named:
        return []
    tops = torch.stack([t.detach().abs().amax().float() if t.numel() else t.new_zeros((), dtype=torch.float32)
                        for _, t in named]).cpu().tolist()
    return [(n, v) for (n, _), v in zip(named, tops)]
