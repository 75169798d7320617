"""The shared training harness: one plain loop (Step, EMA, callbacks), the budget, resume from checkpoints."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .base import SYNTHESIZERS, TorchSynthesizer, one_sentence
from .budget import Phase, check_budget, ema_decay_product, phase_steps, plan_flops, reference_flops, step_flops
from .callbacks import Checkpoints, CurvePoints, StatsLog
from .checkpoint import last_good, load_checkpoint, restore_weights, roll_back, save_checkpoint, truncate_stats
from .device import resolve_device
from .distributed import DataParallel, local_device, setup, world_size
from .dp import dp_config, plan_privacy, privacy_report, private_keys
from .guard import MAX_ABS_LOSS, MAX_ABS_WEIGHT, LossGuard, TrainingDiverged, weight_problem
from .options import check_options
from .step import (PRECISIONS, PrivateStep, Step, resolve_compile, resolve_precision, step_seed, update_ema,
                   use_fused)


def check_trainer(options: dict) -> None:
    """The trainer options' names, types, ranges and choices, without building anything (one sentence on the first
    bad one): a configuration is checked with it before any work, and Trainer() checks its own arguments."""
    check_options("trainer", "trainer", Trainer.__init__, options, skip=("seed", "workdir"))
    get = options.get
    budget = get("budget") or ("steps" if get("max_steps") is not None else "paper")
    check_budget(budget, get("fraction"), get("flops"), get("max_steps"), get("reference"), get("reference_steps"))
    if budget == "compute" and get("flops") is None and get("reference") not in SYNTHESIZERS:
        raise ValueError(f"unknown trainer.reference {get('reference')!r}; valid choices: {', '.join(sorted(SYNTHESIZERS))}")
    if get("precision", "fp32") not in PRECISIONS:
        raise ValueError(f"unknown trainer.precision {get('precision')!r}; valid choices: {', '.join(PRECISIONS)}")
    resolve_compile(get("compile", False), torch.device("cpu"))
    if get("progress", "auto") not in ("auto", True, False):
        raise ValueError(f"trainer.progress must be auto, true or false, got {get('progress')!r}")
    try:
        resolve_device(str(get("device", "auto")))
    except RuntimeError as e:
        raise ValueError(one_sentence(e)) from None


class Trainer:
    """Runs TorchSynthesizer training phases (docs/contracts.md §3).

    Budget (models/budget.py, one rule for every generator and phase): `paper` runs each phase's paper steps;
    `fraction` runs round(f x paper steps) of every phase; `compute` gives every generator the same training FLOPs
    (`flops`, or the FLOPs of `reference_steps` paper steps of `reference`), spread over its phases in the paper's
    proportions (f = F / its paper FLOPs, from the method's `plan()`); `steps` caps each phase at `max_steps`.
    A shorter run is a miniature of the paper schedule in paper time: lr_scale is asked at the paper-time step
    `step * total_steps / steps`, and each EMA update applies the decay of the paper updates it stands for
    (ema_decay_product: the official warm-up, first decay 2/11, and the 0.999 horizon, in paper time).
    `budget_report()` gives the mode, the steps and FLOPs per phase and the fraction of the paper schedule.

    `fast` (trainer=fast, models/guard.py): no host synchronisation inside a step (losses are checked on the device
    and read at every log row and checkpoint, a bad loss's update skipped on the device). Adam(W) takes its fused
    kernel in every profile (models/step.py:use_fused).
    `precision: auto` is bf16 autocast on CUDA, fp32 elsewhere; `compile: auto` compiles the step on CUDA only.

    Under torchrun (WORLD_SIZE > 1, models/distributed.py) every rank draws the same global batch and computes its
    own rows of it through torch's DistributedDataParallel, whose averaged gradient is the single-process gradient
    of the global batch's loss; every rank takes the same optimiser step, with its own random draws; only rank 0
    writes checkpoints and train_stats.jsonl.
    """

    def __init__(self, device: str = "auto", precision: str = "fp32", compile: bool | str = False,
                 max_steps: int | None = None, grad_clip: float | None = None, checkpoint_every: int = 500,
                 log_every: int = 50, progress: str | bool = "auto", seed: int = 0,
                 workdir: str | os.PathLike | None = None, max_abs_loss: float | None = MAX_ABS_LOSS,
                 max_abs_weight: float | None = MAX_ABS_WEIGHT, budget: str | None = None,
                 fraction: float | None = None, flops: float | None = None, reference: str | None = None,
                 reference_steps: int | None = None, dp: dict | None = None, fast: bool = False) -> None:
        check_trainer({k: v for k, v in locals().items() if k not in ("self", "seed", "workdir")})
        self.device = local_device(resolve_device(device))  # cuda:LOCAL_RANK under torchrun
        precision, compile = resolve_precision(precision, self.device), resolve_compile(compile, self.device)
        budget = budget if budget is not None else ("steps" if max_steps is not None else "paper")
        self.dp = dp_config(dp, precision)  # None: not private (the code path below is then unchanged)
        if world_size() > 1 and self.dp is not None:
            raise ValueError("trainer.dp cannot run under torchrun (WORLD_SIZE > 1): DP-SGD's Poisson batches and "
                             "per-record noise are not split across processes; run it in one process")
        # under torchrun: join the process group (waits for every rank)
        self.ddp: DataParallel | None = DataParallel() if setup() > 1 else None
        if self.ddp is not None and compile:
            warnings.warn("trainer.compile is off under torchrun: the step runs eagerly through "
                          "DistributedDataParallel (models/distributed.py)", RuntimeWarning, stacklevel=2)
            compile = False
        self.dp_sigma_: float | None = None
        self.dp_history_: list[tuple[float, int]] = []
        self.dp_paths_: dict[str, str] = {}  # loss key -> the per-record path its DP steps took (ghost, vmap, loop)
        self.dp_external_: dict | None = None
        self.budget, self.fraction, self.flops = budget, fraction, flops
        self.reference, self.reference_steps = reference, reference_steps
        self.phases_: dict[str, dict] = {}  # per phase: paper_steps, steps, flops_per_step (budget_report)
        self.fraction_: float | None = fraction if budget == "fraction" else None
        # quality-vs-compute curves: on_eval(synth, info) is called once the training FLOPs reach each share in
        # eval_at of the run's total (run_benchmark.py samples and scores there); training randomness is untouched
        self.eval_at: list[float] = []
        self.on_eval = None
        self.evals_done_: set[float] = set()
        self.precision, self.compile, self.max_steps, self.fast = precision, compile, max_steps, fast
        self.grad_clip, self.checkpoint_every, self.log_every = grad_clip, checkpoint_every, max(1, log_every)
        self.progress, self.seed = progress, seed
        self.max_abs_loss, self.max_abs_weight = max_abs_loss, max_abs_weight
        self.workdir = Path(workdir) if workdir is not None else None
        self.steps_done = 0  # optimiser steps and training seconds of the run, an interrupted process's included
        self.train_seconds = 0.0
        self.resumed_seconds_ = 0.0  # of those, the seconds an earlier process trained before this one resumed

    # ---- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.workdir / "checkpoint.pt" if self.workdir is not None else None

    @property
    def stats_path(self) -> Path | None:
        return self.workdir / "train_stats.jsonl" if self.workdir is not None else None

    @property
    def writes(self) -> bool:
        """Whether this process writes files: always, except torchrun ranks above 0."""
        return self.ddp is None or self.ddp.rank == 0

    def _save(self, synth: TorchSynthesizer, phase: str, step: int, completed: list[str], seconds: float,
              steps_done: int) -> None:
        if self.checkpoint_path is not None and self.writes:
            save_checkpoint(self.checkpoint_path, synth, synth.optimizers_, phase, step, completed,
                            {"train_seconds": seconds, "steps_done": steps_done})

    def last_good(self) -> str:
        return last_good(self.checkpoint_path)

    def _checker(self, synth: TorchSynthesizer, guard: LossGuard, phase: str) -> Callable[[int], None]:
        """The divergence check before any log row, checkpoint or evaluation (once per step): TrainingDiverged if a
        loss so far was bad or the weights ran away. A deferred guard reads the held losses here, and the model is
        rolled back to the last checkpoint."""
        checked = [-1]

        def check(done: int) -> None:
            if checked[0] == done:
                return
            checked[0] = done
            problem = guard.problem if guard.flush() else weight_problem(
                synth.name, synth.modules_.named_parameters(), self.max_abs_weight, done, phase)
            if problem is None:
                return
            if not guard.deferred:
                raise TrainingDiverged(f"{problem}, {self.last_good()}")
            raise TrainingDiverged(f"{problem} (found at the check after step {done}), "
                                   f"{roll_back(self.checkpoint_path, synth, self.device)}")
        return check

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, synth: TorchSynthesizer, X: np.ndarray | torch.Tensor, *, total_steps: int, batch_size: int,
            keys: Sequence[str] | None = None, phase: str = "train") -> TorchSynthesizer:
        """Train `synth` for one phase of `total_steps` paper steps under the budget: per step, the `Step` chosen
        at construction (models/step.py), EMA in paper time, then the callbacks (log row, curve points,
        checkpoint); resumes from the last checkpoint and returns at once if the phase was completed."""
        keys = self._keys(synth, keys, total_steps, batch_size)
        Xd = self._prepare(synth, X)
        steps = self._resolve_budget(synth, Xd, Phase(phase, total_steps, batch_size, tuple(keys)))
        start, completed = self._resume(synth, phase)
        if phase in completed:
            synth.modules_.eval()
            return synth
        private = set(private_keys(synth, keys)) if self.dp is not None else set()
        step_fn = PrivateStep(self, synth, Xd, keys, batch_size, phase, private) if private else \
            Step(self, synth, Xd, keys, batch_size, phase)
        check = self._checker(synth, step_fn.guard, phase)
        t0, before, done_before = time.perf_counter(), self.train_seconds, self.steps_done
        curve = CurvePoints(self, synth, phase, lambda: before + time.perf_counter() - t0, check)
        save = lambda done: self._save(synth, phase, done, completed,  # noqa: E731
                                       before + time.perf_counter() - t0 - curve.seconds, done_before + done - start)
        callbacks = [StatsLog(self.stats_path if self.writes else None, synth.name, phase, synth.optimizers_, keys,
                              steps, start, self.log_every, self.progress, self.device, check), curve,
                     Checkpoints(self.checkpoint_every, steps, save, check)]
        self.evals_done_ |= {q for q in self.eval_at if self.flops_so_far(phase, start) >= q * self.total_flops()}
        try:
            for step in range(start, steps):
                torch.manual_seed(step_seed(self.seed, self._stream(phase), step))
                # the official DP path has no lr schedule (constant lr)
                scale = 1.0 if self.dp is not None else synth.lr_scale(int(step * total_steps / steps), total_steps)
                losses = step_fn(step, scale)
                if synth.ema_ is not None:
                    self._update_ema(synth, total_steps / steps)
                for callback in callbacks:
                    callback(step + 1, losses)
            self.steps_done += steps - start
            self.train_seconds += time.perf_counter() - t0 - curve.seconds
            self._save(synth, phase, steps, completed + [phase], self.train_seconds, self.steps_done)
        finally:
            step_fn.close()
            for callback in callbacks:
                callback.close()
        synth.modules_.eval()
        return synth

    def _stream(self, phase: str) -> str:
        """The name of this process's random stream: the phase, and under torchrun each rank above 0 its own."""
        return phase if self.ddp is None or self.ddp.rank == 0 else f"{phase}/rank{self.ddp.rank}"

    def _keys(self, synth: TorchSynthesizer, keys: Sequence[str] | None, total_steps: int,
              batch_size: int) -> list[str]:
        """The phase's loss keys (default: one call per optimizer), checked against the model's optimizers."""
        if not hasattr(synth, "optimizers_"):
            raise RuntimeError(f"{synth.name}: call init_training(n_features) before Trainer.run")
        keys = list(keys) if keys is not None else list(synth.optimizers_)
        unknown = [k for k in keys if k not in synth.optimizers_]
        if unknown:
            raise KeyError(f"{synth.name}: no optimizer '{unknown[0]}'; valid choices: {', '.join(synth.optimizers_)}")
        if batch_size < 1 or total_steps < 1:
            raise ValueError(f"{synth.name}: batch_size and the step count must be positive, got {batch_size} and "
                             f"{total_steps}")
        return keys

    def _prepare(self, synth: TorchSynthesizer, X: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The model and the whole training matrix on the device; each optimizer's base lr kept as initial_lr."""
        if self.device.type == "cpu":
            # denormal floats (e.g. in a saturated GAN's gradients or Adam state) slow CPU arithmetic many times
            # over; flushing them to zero keeps runs deterministic. Process-wide, like torch's other numeric switches.
            torch.set_flush_denormal(True)
        synth.to(self.device)
        for o in synth.optimizers_.values():
            for g in o.param_groups:
                g.setdefault("initial_lr", g["lr"])
        return torch.as_tensor(X, dtype=torch.float32).to(self.device)

    def _resume(self, synth: TorchSynthesizer, phase: str) -> tuple[int, list[str]]:
        """Load the last checkpoint (if any): the first step to run and the phases already completed; the model in
        training mode on the device (under torchrun: rank 0's weights on every rank)."""
        start, completed, opts = 0, [], synth.optimizers_
        if self.ddp is not None:
            self.ddp.barrier()  # rank 0's last checkpoint is on disk before any rank reads it
        ckpt = load_checkpoint(self.checkpoint_path, synth)
        if ckpt is not None:
            restore_weights(synth, ckpt, self.device)
            completed = list(ckpt["completed"])
            clock = ckpt.get("clock") or {}
            if not self.steps_done and not self.train_seconds:  # an earlier process's training: counted once
                self.resumed_seconds_ = float(clock.get("train_seconds", 0.0))
            self.train_seconds = float(clock.get("train_seconds", self.train_seconds))
            self.steps_done = int(clock.get("steps_done", self.steps_done))
            if phase in completed:
                return start, completed
            if ckpt["phase"] == phase:
                for k, o in opts.items():
                    o.load_state_dict(ckpt["optimizers"][k])
                start = ckpt["step"]
                if self.writes:
                    truncate_stats(self.stats_path, phase, start)
        use_fused(opts, self.device)  # after loading: a checkpoint's optimiser state says how it was saved
        synth.to(self.device)
        synth.modules_.train()
        if self.ddp is not None:
            self.ddp.wrap(synth)  # every rank starts from rank 0's weights
        synth.compile_sampler = self.compile  # a runtime switch for samplers that compile (EHRDiff), never saved
        if self.workdir is not None and self.writes:
            self.workdir.mkdir(parents=True, exist_ok=True)
        return start, completed

    # ---- differential privacy (models/dp.py) -------------------------------------------------------
    def dp_report(self) -> dict:
        """epsilon spent by the DP steps taken (the accountant's value) and the DP settings; None when not private."""
        if self.dp_external_ is not None:  # a non-torch DP generator accounted for itself (record_privacy)
            return self.dp_external_
        return privacy_report(self.dp, self.dp_sigma_, self.dp_history_, self.dp_paths_)

    def record_privacy(self, epsilon: float, **details: Any) -> None:
        """For generators trained without Trainer.run (e.g. dp_independent): the epsilon they spent."""
        self.dp_external_ = {"epsilon": float(epsilon), "dp": details}

    @staticmethod
    def _update_ema(synth: TorchSynthesizer, stride: float = 1.0) -> None:
        """EMA in paper time: the n-th update (n = 1, 2, ...) of a run whose optimiser steps each stand for `stride`
        paper steps applies the decay of paper updates ((n-1) stride, n stride] (ema_decay_product); at stride 1 it
        is the official min(ema_decay, (1 + n) / (10 + n)), first decay 2/11. One foreach lerp (models/step.py)."""
        n = getattr(synth, "n_ema_", 0)
        update_ema(synth.ema_, synth.modules_, ema_decay_product(n * stride, (n + 1) * stride, synth.ema_decay))
        synth.n_ema_ = n + 1

    # ---- budget ----------------------------------------------------------------------------------
    def _resolve_budget(self, synth: TorchSynthesizer, Xd: torch.Tensor, phase: Phase) -> int:
        """This phase's optimiser steps under the budget. On the first phase of a method with a `plan()`, every
        phase is measured (FLOPs per step) and checked at once, so a budget too small for a later phase fails
        before any training; compute mode sets the method's fraction here."""
        if phase.name not in self.phases_:
            plan = synth.plan(len(Xd)) if hasattr(synth, "plan") else None
            phases = plan if plan and any(p.name == phase.name for p in plan) else [phase]
            phases = [p if p.name != phase.name else phase for p in phases]
            flops = [step_flops(synth, Xd, p) for p in phases]
            if self.budget == "compute" and self.fraction_ is None:
                if plan is None:
                    raise ValueError(f"{synth.name}: trainer.budget=compute needs the method's phases up front "
                                     "(TorchSynthesizer.plan), which this generator does not declare")
                target = self.flops if self.flops is not None else reference_flops(
                    self.reference, self.reference_steps, Xd, self.seed, own=(synth, phases, flops))
                self.fraction_ = target / plan_flops(phases, flops)
            for p, c in zip(phases, flops):
                steps = phase_steps(self.budget, self.fraction_, self.max_steps, p, synth.name)
                self.phases_[p.name] = {"paper_steps": p.total_steps, "steps": steps, "flops_per_step": c}
            if self.dp is not None:
                self.dp_history_, self.dp_sigma_ = plan_privacy(synth, self.dp, len(Xd), phases, self.phases_)
        return self.phases_[phase.name]["steps"]

    def flops_so_far(self, phase: str, done: int) -> float:
        names = list(self.phases_)
        before = names[: names.index(phase)] if phase in names else []
        return sum(self.phases_[p]["steps"] * self.phases_[p]["flops_per_step"] for p in before) + \
            done * self.phases_.get(phase, {}).get("flops_per_step", 0)

    def total_flops(self) -> float:
        return sum(p["steps"] * p["flops_per_step"] for p in self.phases_.values())

    def budget_report(self) -> dict:
        """The budget as run: mode, steps and FLOPs per phase, training FLOPs and the share of the paper's."""
        train = sum(p["steps"] * p["flops_per_step"] for p in self.phases_.values())
        paper = sum(p["paper_steps"] * p["flops_per_step"] for p in self.phases_.values())
        return {"budget": self.budget, "budget_fraction": self.fraction_, "budget_flops": self.flops,
                "budget_reference": f"{self.reference_steps} x {self.reference}" if self.budget == "compute"
                and self.flops is None else None, "max_steps": self.max_steps, "phases": self.phases_,
                "train_flops": float(train), "paper_flops": float(paper),
                "fraction_of_paper": train / paper if paper else None, **self.dp_report()}

    @property
    def steps_per_second(self) -> float:
        return self.steps_done / self.train_seconds if self.train_seconds > 0 else float("nan")
