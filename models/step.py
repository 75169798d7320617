"""One optimiser step of the shared Trainer: plain, fast (no host reads) or private (DP-SGD), and its machinery."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from torch import nn

from .base import TorchSynthesizer
from .dp import private_step
from .guard import LossGuard, TrainingDiverged, loss_problem

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: bf16 autocast on CUDA, fp32 elsewhere
COMPILE_BACKEND = "inductor"  # torch.compile's backend for the compiled step
FUSED_DEVICES = ("cuda", "cpu")  # where Adam(W) has a fused kernel


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


def use_fused(opts: dict[str, torch.optim.Optimizer], device: torch.device) -> None:
    """Adam and AdamW step with their fused kernel on CUDA and CPU: one pass over each weight instead of one per
    operation of the for-loop update (the same update up to float rounding; on a CPU about a quarter of the CinC
    network's step). State loaded from a checkpoint is moved to where that kernel expects it (the step count, as
    float32, on the parameter's device)."""
    for opt in opts.values():
        clear_skips(opt)
        if not isinstance(opt, torch.optim.Adam):  # AdamW included; RMSprop and others keep their own kernels
            continue
        params = [p for g in opt.param_groups for p in g["params"]]
        fused = device.type in FUSED_DEVICES and all(p.device.type == device.type and p.is_floating_point()
                                                     for p in params)
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

    def _eager(self, x: torch.Tensor, forward: Callable | None = None, scale: float = 1.0) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = forward(x, self.key) if forward is not None else self.synth.loss(x, self.key)
        self.scaler.scale(loss * scale if scale != 1.0 else loss).backward()
        return loss.detach().clone()  # a copy: compiled graphs may reuse their output memory at the next call

    def __call__(self, x: torch.Tensor, forward: Callable | None = None, scale: float = 1.0) -> torch.Tensor:
        """Forward and backward of `key` on x (through `forward`, e.g. a DDP wrapper, with the loss scaled by
        `scale` for the backward only); the detached loss."""
        if self.compiled is None or forward is not None:
            return self._eager(x, forward, scale)
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


def step_seed(seed: int, phase: str, step: int) -> int:
    """Seed of one step's randomness: depends only on (seed, phase, step), so a resumed run replays exactly."""
    return (seed * 1_000_003 + sum(map(ord, phase)) * 7_919 + step) % (2**63 - 1)


class Step:
    """One optimiser step (docs/contracts.md §4): per loss key (keys may repeat, e.g. ["d", "d", "g"]), the next
    batch of a seeded per-epoch permutation (drop_last=False, as in the official loaders; medGAN's two discriminator
    updates per step each see their own batch), forward and backward under autocast, the divergence guard, gradient
    clipping and that key's optimiser step. `trainer.fast` defers the guard's host reads (models/guard.py). Under
    torchrun each rank computes its rows of the batch through DistributedDataParallel (models/distributed.py)."""

    def __init__(self, trainer: Any, synth: TorchSynthesizer, Xd: torch.Tensor, keys: list[str], batch_size: int,
                 phase: str) -> None:
        self.synth, self.Xd, self.keys, self.phase = synth, Xd, keys, phase
        self.seed, self.device, self.fast = trainer.seed, trainer.device, trainer.fast
        self.grad_clip, self.ddp, self.last_good = trainer.grad_clip, trainer.ddp, trainer.last_good
        self.batch_size = min(batch_size, len(Xd))
        self.per_epoch = math.ceil(len(Xd) / self.batch_size)
        self.scaler = torch.amp.GradScaler("cuda", enabled=trainer.precision == "fp16")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trainer.precision)
        self.passes = {k: ForwardBackward(synth, k, self.scaler, dtype, self.device, trainer.compile)
                       for k in dict.fromkeys(keys)}
        self.guard = LossGuard(synth.name, trainer.max_abs_loss, deferred=trainer.fast)
        self.perm, self.perm_epoch = None, -1

    def __call__(self, step: int, scale: float) -> dict[str, float | torch.Tensor]:
        """Step `step` at lr x `scale`: each key's update; the summed loss per key."""
        losses: dict[str, float | torch.Tensor] = {}
        for i, key in enumerate(self.keys):
            losses[key] = losses.get(key, 0.0) + self.update(key, i, step, scale)
        if self.ddp is not None:
            self.ddp.broadcast_buffers(self.synth.modules_)  # batch-norm statistics: rank 0's
        return losses

    def batch(self, call: int) -> torch.Tensor:
        """Row indices of loss call `call` of the phase: a slice of its epoch's seeded permutation."""
        epoch, j = divmod(call, self.per_epoch)
        if epoch != self.perm_epoch:
            g = torch.Generator().manual_seed(step_seed(self.seed, self.phase + "/perm", epoch))
            self.perm, self.perm_epoch = to_device(torch.randperm(len(self.Xd), generator=g), self.device,
                                                   self.fast), epoch
        return self.perm[j * self.batch_size:(j + 1) * self.batch_size]

    def update(self, key: str, i: int, step: int, scale: float) -> float | torch.Tensor:
        """The i-th loss call of `step`: batch, forward + backward, guard, clip, `key`'s optimiser step."""
        idx = self.batch(step * len(self.keys) + i)
        opt = self.synth.optimizers_[key]
        params = [p for gr in opt.param_groups for p in gr["params"]]
        for gr in opt.param_groups:
            gr["lr"] = gr["initial_lr"] * scale
        opt.zero_grad(set_to_none=True)
        if self.ddp is None:
            loss = self.passes[key](self.Xd[idx])
        else:  # this rank's rows through DDP: the gradients and loss of the whole batch (models/distributed.py)
            loss = self.ddp.forward_backward(self.passes[key], self.Xd, idx)
        # the guard reads the loss now (fp32 default) or skips a bad one's update on the device and reads it at the
        # next check (fast): never a step on a bad loss either way
        value = self.guard.observe(loss, opt, step, key, self.phase, not self.scaler.is_enabled())
        if self.guard.problem is not None:
            raise TrainingDiverged(f"{self.guard.problem}, {self.last_good()}")
        if self.grad_clip:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        return value

    def close(self) -> None:
        for o in self.synth.optimizers_.values():
            clear_skips(o)


class PrivateStep(Step):
    """A step of trainer.dp (models/dp.py): each loss key that reads records (`private_keys`) takes a DP-SGD update
    on a Poisson batch seeded by (seed, phase, step, call) at constant lr, as the official DP path; others a plain one."""

    def __init__(self, trainer: Any, synth: TorchSynthesizer, Xd: torch.Tensor, keys: list[str], batch_size: int,
                 phase: str, private: set[str]) -> None:
        super().__init__(trainer, synth, Xd, keys, batch_size, phase)
        self.private, self.trainer = private, trainer

    def update(self, key: str, i: int, step: int, scale: float) -> float | torch.Tensor:
        if key not in self.private:
            return super().update(key, i, step, scale)
        t = self.trainer
        g = torch.Generator().manual_seed(step_seed(self.seed, f"{self.phase}/dp/{i}", step))
        value = private_step(self.synth, key, self.Xd, self.batch_size, scale, t.dp, t.dp_sigma_,
                             g, t.dp_paths_)
        problem = loss_problem(self.synth.name, key, value, step, self.phase, None)  # NaN or inf
        if problem is not None:
            raise TrainingDiverged(f"{problem}, {self.last_good()}")
        return value
