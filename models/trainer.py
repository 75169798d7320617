"""The shared training harness: device, on-device seeded batches, precision, EMA, lr schedule, NaN guard, checkpoints."""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .base import TorchSynthesizer

DEVICES = ("auto", "cpu", "cuda", "mps")
CHECKPOINT_KEYS = {"name", "params", "n_features", "phase", "step", "completed", "n_ema", "state", "optimizers"}
PRECISIONS = ("fp32", "bf16", "fp16")


# Divergence limits (README "Divergence"): a loss beyond MAX_ABS_LOSS or a parameter beyond MAX_ABS_WEIGHT stops
# training like a NaN loss does. The loss limit is far above the largest healthy summed loss (the VAE's batch-summed
# BCE is about batch x width x ln 2, 6.3e5 at 512 x 1,782); weights of a healthy network stay within a few units.
MAX_ABS_LOSS = 1e9
MAX_ABS_WEIGHT = 1e6


class TrainingDiverged(RuntimeError):
    """The loss became NaN, infinite or runaway, or a weight ran away; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda > mps > cpu; a requested device that is missing is an error."""
    if name not in DEVICES:
        raise ValueError(f"unknown device '{name}'; valid choices: {', '.join(DEVICES)}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda was requested but CUDA is not available here; use device=auto or cpu")
    if name == "mps" and not has_mps:
        raise RuntimeError("trainer.device=mps was requested but MPS is not available here; use device=auto or cpu")
    return torch.device(name)


def reset_peak_memory() -> str:
    """Start a new peak-memory window (one run), so a worker process reused across sweep cells (joblib) does not
    carry an earlier cell's peak into the next one. Resets CUDA's peak statistics and, on Linux, the peak resident
    set size (VmHWM, by writing 5 to /proc/self/clear_refs). Returns the scope peak_memory_mb then covers: "run",
    or "process" where the host peak cannot be reset (macOS, restricted /proc)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "run"
    except OSError:
        return "process"


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the peak resident set size since the last reset_peak_memory()
    (Linux VmHWM; elsewhere the process's lifetime peak from getrusage)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # macOS reports bytes, Linux KiB


def _step_seed(seed: int, phase: str, step: int) -> int:
    """Seed of one step's randomness: depends only on (seed, phase, step), so a resumed run replays exactly."""
    return (seed * 1_000_003 + sum(map(ord, phase)) * 7_919 + step) % (2**63 - 1)


class Trainer:
    """Runs TorchSynthesizer training phases (DESIGN.md §3).

    Schedule: the method gives its paper step count (`total_steps`); `max_steps` (trainer config) caps it for
    short CPU runs. A capped run compresses the method's lr schedule onto the shorter run: lr_scale is asked
    at the paper-time step `step * total_steps / steps`, so warm-up and cosine decay keep their shape
    (documented deviation from running the first max_steps of the paper schedule, which would never leave
    warm-up).
    """

    def __init__(self, device: str = "auto", precision: str = "fp32", compile: bool = False,
                 max_steps: int | None = None, grad_clip: float | None = None, checkpoint_every: int = 500,
                 log_every: int = 50, progress: str | bool = "auto", seed: int = 0,
                 workdir: str | os.PathLike | None = None, max_abs_loss: float | None = MAX_ABS_LOSS,
                 max_abs_weight: float | None = MAX_ABS_WEIGHT) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}'; valid choices: {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision={precision} needs CUDA (autocast opt-in); this run is on {self.device.type}, use fp32")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"trainer.max_steps must be a positive integer or null, got {max_steps}")
        self.precision, self.compile, self.max_steps = precision, compile, max_steps
        self.grad_clip, self.checkpoint_every, self.log_every = grad_clip, checkpoint_every, max(1, log_every)
        self.progress, self.seed = progress, seed
        self.max_abs_loss, self.max_abs_weight = max_abs_loss, max_abs_weight
        self.workdir = Path(workdir) if workdir is not None else None
        self.steps_done = 0
        self.train_seconds = 0.0

    # ---- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.workdir / "checkpoint.pt" if self.workdir is not None else None

    @property
    def stats_path(self) -> Path | None:
        return self.workdir / "train_stats.jsonl" if self.workdir is not None else None

    def _save(self, synth: TorchSynthesizer, opts: dict, phase: str, step: int, completed: list[str]) -> None:
        if self.checkpoint_path is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        ckpt = {"name": synth.name, "params": synth.get_params(), "n_features": synth.n_features_,
                "phase": phase, "step": step, "completed": completed, "n_ema": getattr(synth, "n_ema_", 0),
                "state": synth.state_tensors(), "optimizers": {k: o.state_dict() for k, o in opts.items()}}
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: a crash leaves the previous checkpoint intact

    def _load(self, synth: TorchSynthesizer) -> dict | None:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return None
        try:
            ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
            if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
                raise ValueError("not an ehrbench trainer checkpoint")
        except Exception as e:  # truncated zip, foreign pickle, wrong content: never torch's text or traceback
            reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: truncated, corrupt or not a torch file"
            raise ValueError(f"{self.checkpoint_path} is unreadable ({reason}); delete it, or pass rerun=true to "
                             "run_benchmark.py, to start this run over") from None
        if ckpt["name"] != synth.name or ckpt["n_features"] != synth.n_features_:
            raise ValueError(f"{self.checkpoint_path} belongs to model '{ckpt['name']}' with {ckpt['n_features']} "
                             f"features, not '{synth.name}' with {synth.n_features_}; delete it or use another run dir")
        if ckpt["params"] != synth.get_params():
            diff = sorted(k for k in ckpt["params"] if ckpt["params"][k] != synth.get_params().get(k))
            raise ValueError(f"{self.checkpoint_path} was trained with other hyperparameters ({', '.join(diff)}); "
                             "delete it or use another run dir")
        return ckpt

    def _last_good(self) -> str:
        """The end of a divergence message: the last good checkpoint if one exists, else that there is none."""
        p = self.checkpoint_path
        if p is not None and p.exists():
            return f"the last good checkpoint is {p}"
        return "no checkpoint had been written yet"

    @torch.no_grad()
    def _check_weights(self, synth: TorchSynthesizer, phase: str, step: int) -> None:
        """TrainingDiverged if any parameter holds a non-finite value or one beyond max_abs_weight."""
        if self.max_abs_weight is None:
            return
        for name, p in synth.modules_.named_parameters():
            top = float(p.detach().abs().max()) if p.numel() else 0.0
            if not math.isfinite(top) or top > self.max_abs_weight:
                raise TrainingDiverged(f"{synth.name}: the weights ran away (max |w| {top:.4g} in '{name}', limit "
                                       f"{self.max_abs_weight:g}) by step {step} of phase '{phase}'; training "
                                       f"stopped (try a smaller model.lr), {self._last_good()}")

    def _truncate_stats(self, phase: str, step: int) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be replayed)."""
        if self.stats_path is None or not self.stats_path.exists():
            return
        rows = [json.loads(l) for l in self.stats_path.read_text().splitlines() if l.strip()]
        keep = [r for r in rows if not (r["phase"] == phase and r["step"] > step)]
        self.stats_path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, synth: TorchSynthesizer, X: np.ndarray | torch.Tensor, *, total_steps: int, batch_size: int,
            keys: Sequence[str] | None = None, phase: str = "train") -> TorchSynthesizer:
        """Train `synth` for one phase of `total_steps` (capped by max_steps): per step and per key (keys may repeat,
        e.g. ["d", "d", "g"]), the next seeded batch, `loss(x, key)`, backward and that key's optimizer step."""
        if not hasattr(synth, "optimizers_"):
            raise RuntimeError(f"{synth.name}: call init_training(n_features) before Trainer.run")
        opts = synth.optimizers_
        keys = list(keys) if keys is not None else list(opts)
        unknown = [k for k in keys if k not in opts]
        if unknown:
            raise KeyError(f"{synth.name}: no optimizer '{unknown[0]}'; valid choices: {', '.join(opts)}")
        if batch_size < 1 or total_steps < 1:
            raise ValueError(f"{synth.name}: batch_size and the step count must be positive, got {batch_size} and {total_steps}")
        steps = min(total_steps, self.max_steps) if self.max_steps else total_steps
        for o in opts.values():
            for g in o.param_groups:
                g.setdefault("initial_lr", g["lr"])

        start, completed = 0, []
        ckpt = self._load(synth)
        if ckpt is not None:
            synth.load_state_tensors(ckpt["state"])
            synth.to(self.device)
            synth.n_ema_ = ckpt["n_ema"]
            completed = list(ckpt["completed"])
            if phase in completed:
                synth.modules_.eval()
                return synth
            if ckpt["phase"] == phase:
                for k, o in opts.items():
                    o.load_state_dict(ckpt["optimizers"][k])
                start = ckpt["step"]
                self._truncate_stats(phase, start)
        synth.to(self.device)
        synth.modules_.train()
        Xd = torch.as_tensor(X, dtype=torch.float32).to(self.device)  # the whole matrix lives on the device
        n = len(Xd)
        batch_size = min(batch_size, n)
        per_epoch = math.ceil(n / batch_size)  # drop_last=False, as in the official loaders
        loss_fns = {k: synth.loss for k in keys}
        if self.compile:
            loss_fns = {k: torch.compile(synth.loss) for k in keys}
        scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        show = sys.stderr.isatty() if self.progress == "auto" else bool(self.progress)
        bar = tqdm(total=steps, initial=start, desc=f"{synth.name}:{phase}", disable=not show, dynamic_ncols=True)
        perm, perm_epoch = None, -1
        t_last, step_last = time.perf_counter(), start
        t_phase = time.perf_counter()
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
        log_f = open(self.stats_path, "a") if self.stats_path is not None else None
        try:
            for step in range(start, steps):
                torch.manual_seed(_step_seed(self.seed, phase, step))
                scale = synth.lr_scale(int(step * total_steps / steps), total_steps)
                losses = {}
                for i, key in enumerate(keys):
                    # each loss call gets the next batch of a seeded per-epoch permutation (medGAN's two
                    # discriminator updates per step each see their own batch, as in the original code)
                    epoch, j = divmod(step * len(keys) + i, per_epoch)
                    if epoch != perm_epoch:
                        g = torch.Generator().manual_seed(_step_seed(self.seed, phase + "/perm", epoch))
                        perm, perm_epoch = torch.randperm(n, generator=g).to(self.device), epoch
                    x = Xd[perm[j * batch_size:(j + 1) * batch_size]]
                    opt = opts[key]
                    for gr in opt.param_groups:
                        gr["lr"] = gr["initial_lr"] * scale
                    with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                        loss = loss_fns[key](x, key)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingDiverged(f"{synth.name}: the '{key}' loss became {value} at step {step} of "
                                               f"phase '{phase}'; training stopped, {self._last_good()}")
                    if self.max_abs_loss is not None and abs(value) > self.max_abs_loss:
                        raise TrainingDiverged(f"{synth.name}: the '{key}' loss ran away to {value:.3g} (limit "
                                               f"{self.max_abs_loss:g}) at step {step} of phase '{phase}'; training "
                                               f"stopped (try a smaller model.lr), {self._last_good()}")
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if self.grad_clip:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_([p for gr in opt.param_groups for p in gr["params"]], self.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    losses[key] = losses.get(key, 0.0) + value
                if synth.ema_ is not None:
                    self._update_ema(synth)
                bar.update(1)
                done = step + 1
                if done % self.log_every == 0 or done == steps or done % self.checkpoint_every == 0:
                    self._check_weights(synth, phase, done)  # before any checkpoint: it only keeps good weights
                if done % self.log_every == 0 or done == steps:
                    now = time.perf_counter()
                    row = {"phase": phase, "step": done, "loss": losses,
                           "lr": {k: opts[k].param_groups[0]["lr"] for k in dict.fromkeys(keys)},
                           "seconds_per_step": (now - t_last) / max(1, done - step_last),
                           "memory_mb": round(peak_memory_mb(self.device), 1)}
                    t_last, step_last = now, done
                    bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
                    if log_f is not None:
                        log_f.write(json.dumps(row) + "\n")
                        log_f.flush()
                if done % self.checkpoint_every == 0 and done < steps:
                    self._save(synth, opts, phase, done, completed)
            self.steps_done += steps - start
            self.train_seconds += time.perf_counter() - t_phase
            self._save(synth, opts, phase, steps, completed + [phase])
        finally:
            bar.close()
            if log_f is not None:
                log_f.close()
        synth.modules_.eval()
        return synth

    @staticmethod
    @torch.no_grad()
    def _update_ema(synth: TorchSynthesizer) -> None:
        """EMA with warm-up: decay = min(ema_decay, (1 + n) / (10 + n)), n = number of updates so far."""
        n = getattr(synth, "n_ema_", 0)
        decay = min(synth.ema_decay, (1 + n) / (10 + n))
        for e, p in zip(synth.ema_.parameters(), synth.modules_.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(synth.ema_.buffers(), synth.modules_.buffers()):
            e.copy_(b)
        synth.n_ema_ = n + 1

    @property
    def steps_per_second(self) -> float:
        return self.steps_done / self.train_seconds if self.train_seconds > 0 else float("nan")
