"""What the Trainer does after each step: the log row and progress bar, curve points, checkpoints."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ehrbench.data.cache import write_failure

from .device import peak_memory_mb

# every callback: callback(done, losses) after optimiser step `done` (1-based) of the phase, close() at its end; a
# callback that reads the model first calls `check(done)`, the divergence check (once per step, models/guard.py)


class StatsLog:
    """Every `log_every` steps and at the phase's end: a train_stats.jsonl row (losses, lr, seconds per step, peak
    memory; only the process that writes) and the progress bar's postfix."""

    def __init__(self, path: Path | None, name: str, phase: str, opts: dict, keys: list[str], steps: int, start: int,
                 log_every: int, progress: str | bool, device: torch.device, check: Callable[[int], None]) -> None:
        self.path, self.phase, self.opts, self.keys, self.steps = path, phase, opts, list(dict.fromkeys(keys)), steps
        self.log_every, self.device, self.check = log_every, device, check
        show = sys.stderr.isatty() if progress == "auto" else bool(progress)
        self.bar = tqdm(total=steps, initial=start, desc=f"{name}:{phase}", disable=not show, dynamic_ncols=True)
        # no terminal (a log file, a batch job): a plain line at every tenth of the phase instead of the bar
        self.lines = progress == "auto" and not show and path is not None
        self.desc, self.next_line = f"{name}:{phase}", (start * 10 // max(steps, 1) + 1) * steps / 10
        self.f = open(path, "a") if path is not None else None
        self.t_last, self.step_last = time.perf_counter(), start

    def __call__(self, done: int, losses: dict) -> None:
        self.bar.update(1)
        if done % self.log_every and done != self.steps:
            return
        self.check(done)
        losses = {k: float(v) for k, v in losses.items()}
        now = time.perf_counter()
        row = {"phase": self.phase, "step": done, "loss": losses,
               "lr": {k: self.opts[k].param_groups[0]["lr"] for k in self.keys},
               "seconds_per_step": (now - self.t_last) / max(1, done - self.step_last),
               "memory_mb": round(peak_memory_mb(self.device), 1)}
        self.t_last, self.step_last = now, done
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
        if self.lines and done >= self.next_line:
            self.next_line = (done * 10 // self.steps + 1) * self.steps / 10
            print(f"{self.desc} step {done:,}/{self.steps:,} ({100 * done / self.steps:.0f} %), "
                  + ", ".join(f"loss {k} {v:.4g}" for k, v in losses.items())
                  + f", {1 / max(row['seconds_per_step'], 1e-9):.3g} steps/s", flush=True)
        if self.f is not None:
            try:
                self.f.write(json.dumps(row) + "\n")
                self.f.flush()
            except OSError as e:
                raise (write_failure(self.path, e) or e) from None

    def close(self) -> None:
        self.bar.close()
        if self.f is not None:
            with contextlib.suppress(OSError):  # a failed write was reported above; its buffer cannot be kept
                self.f.close()


class Checkpoints:
    """Every `every` steps before the phase's end: the divergence check, then checkpoint.pt (models/checkpoint.py);
    the trainer saves the end of the phase itself."""

    def __init__(self, every: int, steps: int, save: Callable[[int], None], check: Callable[[int], None]) -> None:
        self.every, self.steps, self.save, self.check = every, steps, save, check

    def __call__(self, done: int, losses: dict) -> None:
        if done % self.every == 0 and done < self.steps:
            self.check(done)
            self.save(done)

    def close(self) -> None:
        pass


class CurvePoints:
    """Quality-vs-compute curves: `on_eval(synth, info)` once the training FLOPs reach each share in `eval_at` of the
    run's total (run_benchmark.py samples and scores there); the training randomness is untouched, and the seconds
    spent are kept apart (`seconds`) so that the trainer leaves them out of the training time."""

    def __init__(self, trainer: Any, synth: Any, phase: str, train_seconds: Callable[[], float],
                 check: Callable[[int], None]) -> None:
        self.trainer, self.synth, self.phase, self.train_seconds, self.check = trainer, synth, phase, train_seconds, check
        self.seconds = 0.0

    def __call__(self, done: int, losses: dict) -> None:
        t = self.trainer
        if t.on_eval is None or not t.eval_at:
            return
        seconds, t0 = self.train_seconds() - self.seconds, time.perf_counter()
        flops, total = t.flops_so_far(self.phase, done), t.total_flops()
        for q in sorted(set(t.eval_at) - t.evals_done_):
            if flops >= q * total * (1 - 1e-12):
                self.check(done)
                t.evals_done_.add(q)
                rng = torch.random.get_rng_state()
                t.on_eval(self.synth, {"fraction": q, "phase": self.phase, "step": done, "train_flops": flops,
                                       "train_seconds": seconds})
                torch.random.set_rng_state(rng)
                self.synth.modules_.train()
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        pass
