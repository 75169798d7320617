"""Training budgets: one rule for every generator and phase (paper, fraction, compute, steps), EMA in paper time, FLOPs."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

# paper: every phase runs its paper steps. fraction: every phase of every method runs round(f x its paper steps).
# compute: every generator gets the same training FLOPs F (measured per step with torch's FlopCounterMode), spread
# over its phases in the paper's proportions, i.e. fraction f = F / (its paper FLOPs). steps: each phase capped at
# max_steps (for tests and debugging; not a fair comparison, since methods with long schedules are cut harder).
MODES = ("paper", "fraction", "compute", "steps")


@dataclass(frozen=True)
class Phase:
    """One training phase of a method at its paper settings: optimiser steps, batch size and loss keys per step."""

    name: str
    total_steps: int
    batch_size: int
    keys: tuple[str, ...] | None = None


def check_budget(budget: str, fraction: float | None, flops: float | None, max_steps: int | None,
                 reference: str | None, reference_steps: int | None) -> None:
    """One-sentence errors for a budget that cannot work, before anything is trained."""
    if budget not in MODES:
        raise ValueError(f"unknown trainer.budget {budget!r}; valid choices: {', '.join(MODES)}")
    if budget == "fraction" and not (isinstance(fraction, (int, float)) and fraction > 0):
        raise ValueError(f"trainer.budget=fraction needs trainer.fraction > 0 (1.0 = the paper schedule), got {fraction}")
    if budget == "compute":
        if flops is None and not (reference and isinstance(reference_steps, int) and reference_steps > 0):
            raise ValueError("trainer.budget=compute needs trainer.flops (training FLOPs per generator) or "
                             f"trainer.reference and a positive trainer.reference_steps, got flops={flops}, "
                             f"reference={reference}, reference_steps={reference_steps}")
        if flops is not None and not flops > 0:
            raise ValueError(f"trainer.flops must be positive, got {flops}")
    if budget == "steps" and not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"trainer.budget=steps needs a positive integer trainer.max_steps, got {max_steps}")
    if budget != "steps" and max_steps is not None:
        raise ValueError(f"trainer.max_steps={max_steps} only applies with trainer.budget=steps (this run has "
                         f"budget={budget}); set one of them")


def phase_steps(budget: str, fraction: float | None, max_steps: int | None, phase: Phase, model: str) -> int:
    """Optimiser steps of one phase under the budget; fewer than one step is an error naming the numbers."""
    if budget == "paper":
        return phase.total_steps
    if budget == "steps":
        return min(phase.total_steps, max_steps)
    steps = round(fraction * phase.total_steps)
    if steps < 1:
        share = "trainer.fraction" if budget == "fraction" else "its share of trainer.flops"
        raise ValueError(f"{model}: the budget gives phase '{phase.name}' {fraction:.3g} x {phase.total_steps:,} paper "
                         f"steps = {fraction * phase.total_steps:.3g} steps, fewer than one (budget={budget}, "
                         f"{fraction:.3g} = {share}); raise the budget")
    return steps


def step_flops(synth: Any, X: torch.Tensor, phase: Phase) -> int:
    """Training FLOPs of one optimiser step of `phase` (every loss call of the step, forward and backward), counted
    by torch.utils.flop_counter.FlopCounterMode on a deep copy of the model (matrix products and convolutions;
    elementwise work and the optimiser update are not counted). A key the step calls k times (CorGAN's 100 critic
    updates) is counted once and weighed k: its FLOPs depend on shapes only. The copy takes the model's
    `paper_form`, so an equal but cheaper form (TabDDPM's folded network) does not buy more steps."""
    clone = copy.deepcopy(synth)
    for name, value in getattr(synth, "paper_form", {}).items():
        setattr(clone, name, value)
    clone.modules_.train()
    keys = list(phase.keys) if phase.keys is not None else list(clone.optimizers_)
    x = X[: min(phase.batch_size, len(X))]
    state = torch.random.get_rng_state()
    total = 0
    try:
        for key in dict.fromkeys(keys):
            counter = FlopCounterMode(display=False)
            counter.mod_tracker = _GlobalOnly()
            with counter:  # the class's loss: an instance-level patch (a test's fault injection) is not measured
                type(clone).loss(clone, x, key).backward()
            total += keys.count(key) * counter.get_total_flops()
    finally:
        torch.random.set_rng_state(state)  # measuring leaves the training randomness untouched
    return int(total)


def sample_flops(synth: Any, n: int = 100, seed: int = 0) -> float | None:
    """Sampling FLOPs per 1,000 records: FlopCounterMode over `sample(n)` (the matrix products of every network
    evaluation, as step_flops counts), times 1000 / n; sampling is batched, so its FLOPs grow linearly with the
    records drawn. None for a generator without torch modules (its numpy work is not counted)."""
    if not hasattr(synth, "modules_"):
        return None
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with torch.random.fork_rng(devices=[]), counter:
        synth.sample(n, seed=seed)
    return counter.get_total_flops() * 1000.0 / n


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, so every FLOP counts as "Global": the tracker's backward
    hooks fail inside torch.autograd.grad (EMR-WGAN's gradient penalty), and the per-module split is not needed."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False


def reference_flops(reference: str, reference_steps: int, X: torch.Tensor, seed: int,
                    own: tuple[Any, Sequence[Phase], Sequence[int]] | None = None) -> float:
    """FLOPs of `reference_steps` average paper steps of the named generator (paper defaults) on this data: the
    equal-compute budget that keeps one method's cost fixed (e.g. 2,000 EHRDiff steps for `make run`). `own` is
    (model, its phases, their FLOPs per step) of the model being trained: when it is the reference at paper
    defaults, its measured FLOPs are used and no second model is built."""
    from .base import build_synthesizer

    ref = build_synthesizer(reference)
    if own is not None and type(own[0]) is type(ref) and own[0].get_params() == ref.get_params():
        phases, flops = own[1], own[2]
    else:
        if not hasattr(ref, "plan"):
            raise ValueError(f"trainer.reference={reference} is not a trained (torch) generator, so it has no FLOPs")
        ref.init_training(X.shape[1], seed)
        phases = ref.plan(len(X))
        flops = [step_flops(ref, X, p) for p in phases]
    return reference_steps * plan_flops(phases, flops) / sum(p.total_steps for p in phases)


def ema_decay_product(a: float, b: float, cap: float) -> float:
    """prod over paper-time updates j in (a, b] of min(cap, (1 + j) / (10 + j)): the EMA decay of one compressed
    step that stands for the paper updates a+1 .. b (official ema.py: the n-th update uses (1 + n) / (10 + n), so
    the first decay is 2/11). The warm-up part is a ratio of Gamma functions, prod (1+j)/(10+j) =
    G(b+2) G(a+11) / (G(a+2) G(b+11)), exact at integers and smooth between them; past j* = (10 cap - 1) / (1 - cap)
    the cap applies. With a = n - 1, b = n it is the official per-update decay."""
    j_star = math.inf if cap >= 1 else max(0.0, (10 * cap - 1) / (1 - cap))
    log = 0.0
    hi = min(b, j_star)
    if hi > a:
        log += math.lgamma(hi + 2) - math.lgamma(a + 2) + math.lgamma(a + 11) - math.lgamma(hi + 11)
    if b > max(a, j_star):
        log += (b - max(a, j_star)) * math.log(cap)
    return math.exp(log)


def plan_flops(phases: Sequence[Phase], flops: Sequence[int]) -> float:
    """Paper training FLOPs of a method: sum over phases of paper steps x FLOPs per step."""
    return float(np.dot([p.total_steps for p in phases], flops))
