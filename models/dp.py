"""Differential privacy for the shared Trainer: DP-SGD with noise multiplicity, accounted by opacus (RDP or PRV)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .ghost import GhostUnsupported, ghost_clipped_sum, ghost_refusal

ACCOUNTANTS = ("rdp", "prv")
PER_RECORD = ("auto", "vmap", "ghost")


@dataclass(frozen=True)
class DPConfig:
    """trainer.dp: the target (epsilon, delta), the clipping norm C, K noise draws per record, the accountant, and
    the physical sub-batch cap (records per per-record-gradient chunk, further capped by memory_mb), and how
    per-record gradients are clipped (per_record: auto = ghost clipping where it applies, else vmap)."""

    epsilon: float
    delta: float
    max_grad_norm: float = 1.0
    noise_multiplicity: int = 1
    accountant: str = "rdp"
    max_physical_batch: int = 256
    memory_mb: float = 2048.0
    per_record: str = "auto"


def dp_config(options: dict | None, precision: str = "fp32") -> DPConfig | None:
    """Validate trainer.dp (None = off); one sentence per problem, before anything is trained."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise ValueError(f"trainer.dp must be null or a mapping of options, got {options!r}")
    options = dict(options)
    valid = list(DPConfig.__dataclass_fields__)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"trainer.dp has no option '{unknown[0]}'; valid choices: {', '.join(valid)}")
    if "epsilon" not in options or "delta" not in options:
        raise ValueError("trainer.dp needs epsilon and delta, e.g. trainer.dp={epsilon:10,delta:1e-5}")
    cfg = DPConfig(**options)
    if not _positive(cfg.epsilon):
        raise ValueError(f"trainer.dp.epsilon must be a number > 0 (inf or trainer.dp=null: not private), "
                         f"got {cfg.epsilon!r}")
    if math.isinf(cfg.epsilon):
        return None  # epsilon = inf is the non-private run (the unchanged code path), e.g. in an epsilon sweep
    if not (_positive(cfg.delta) and cfg.delta < 1):
        raise ValueError(f"trainer.dp.delta must lie in (0, 1), got {cfg.delta!r}")
    if not _positive(cfg.max_grad_norm):
        raise ValueError(f"trainer.dp.max_grad_norm must be > 0, got {cfg.max_grad_norm!r}")
    for key in ("noise_multiplicity", "max_physical_batch"):
        if type(getattr(cfg, key)) is not int or getattr(cfg, key) < 1:
            raise ValueError(f"trainer.dp.{key} must be a positive integer, got {getattr(cfg, key)!r}")
    if cfg.accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown trainer.dp.accountant {cfg.accountant!r}; valid choices: {', '.join(ACCOUNTANTS)}")
    if cfg.per_record not in PER_RECORD:
        raise ValueError(f"unknown trainer.dp.per_record {cfg.per_record!r}; valid choices: {', '.join(PER_RECORD)}")
    if precision != "fp32":
        raise ValueError(f"trainer.dp needs precision fp32 (per-record clipping in {precision} loses the bound on "
                         "each record's gradient norm)")
    return cfg


def not_private_error(name: str) -> ValueError:
    return ValueError(f"model '{name}' trains nothing under trainer.dp (it is not private); run it without "
                      "trainer.dp, or with trainer.dp.epsilon=inf")


def refuse_private(name: str, trainer: Any) -> None:
    """fit() of a generator that trains nothing (the references): under an active trainer.dp, one sentence instead
    of a run that looks private and is not (run_benchmark.py refuses the same config before building the model)."""
    if getattr(trainer, "dp", None) is not None:
        raise not_private_error(name)


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def check_dp_data(cfg: DPConfig, n_rows: int, batch_size: int, model: str) -> None:
    """delta must be below 1/N (otherwise releasing a record outright would satisfy it), and the logical batch no
    larger than the data (a sampling rate above 1)."""
    if cfg.delta >= 1.0 / n_rows:
        raise ValueError(f"{model}: trainer.dp.delta {cfg.delta:g} is not below 1/N = {1.0 / n_rows:.3g} for "
                         f"{n_rows:,} training records; use a smaller delta (e.g. {10 ** math.floor(math.log10(0.1 / n_rows)):g})")
    if batch_size > n_rows:
        raise ValueError(f"{model}: the batch size {batch_size:,} is larger than the {n_rows:,} training records; DP "
                         "sampling needs batch <= N")


def epsilon_spent(sigma: float, history: list[tuple[float, int]], delta: float, accountant: str) -> float:
    """epsilon of Poisson-subsampled Gaussian steps: history = [(sample rate q, steps)], all at noise multiplier
    sigma, composed by opacus's accountant (rdp: opacus's default orders; prv: the PRV accountant)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(float(sigma), float(q), int(steps)) for q, steps in history if steps > 0]
    if not acc.history:
        return 0.0
    return float(acc.get_epsilon(delta=delta))


def calibrate_noise(cfg: DPConfig, history: list[tuple[float, int]], model: str) -> float:
    """The noise multiplier whose planned steps spend the target epsilon: epsilon(sigma) <= target and within 1 %
    of it (bisection on sigma; epsilon falls as sigma grows)."""
    target = cfg.epsilon
    lo, hi = 1e-3, 1.0
    while epsilon_spent(hi, history, cfg.delta, cfg.accountant) > target:
        hi *= 2
        if hi > 1e5:
            raise ValueError(f"{model}: no noise multiplier reaches epsilon {target:g} at delta {cfg.delta:g} in the "
                             f"planned steps ({', '.join(f'{s:,} at q={q:.3g}' for q, s in history)}); raise epsilon or "
                             "lower the steps or the batch")
    for _ in range(200):
        mid = (lo + hi) / 2
        eps = epsilon_spent(mid, history, cfg.delta, cfg.accountant)
        if eps > target:
            lo = mid
        else:
            hi = mid
            if eps >= 0.99 * target:
                break
    return hi


class _Loss(nn.Module):
    """synth.loss(x, key) as a module call, so that torch.func.functional_call can substitute the parameters."""

    def __init__(self, synth: Any) -> None:
        super().__init__()
        self.synth = synth
        self.m = synth.modules_

    def forward(self, x: torch.Tensor, key: str) -> torch.Tensor:
        return self.synth.loss(x, key)


def private_gradient(synth: Any, key: str, x: torch.Tensor, params: list[nn.Parameter], cfg: DPConfig, sigma: float,
                     expected_batch: float, noise: torch.Generator, paths: dict | None = None) -> torch.Tensor:
    """DP-SGD with noise multiplicity on a Poisson batch x; sets p.grad on `params` and returns the batch loss
    (`paths[key]` gets the per-record path that ran: ghost, vmap or loop).

    For each record r: g_r = grad of its K-copy loss L_r = loss(x_r repeated K times), divided by K for a loss that
    sums its rows (`row_reduction` "sum"), i.e. always the mean of the K per-draw gradients (the DPDM/EHRDiff
    opacus fork averages before clipping); clipped to g_r * min(1, C / ||g_r||) over all parameters at once (flat clipping); summed; Gaussian
    noise N(0, sigma^2 C^2) added per coordinate; divided by the expected batch size q N. Each record changes the
    sum by at most C (L2), so this is the subsampled Gaussian mechanism opacus accounts for; K only lowers the
    variance of g_r. Two ways to the clipped sum, in chunks of at most max_physical_batch records:

    - vmap: per-record gradients from torch.func (vmap of grad over records, each with its own random draws),
      also capped at memory_mb of gradients per chunk; `loop` (record by record) for losses that differentiate
      inside (dp_vmap = False).
    - ghost (models/ghost.py; Li et al. 2022, "Large language models can be strong differentially private
      learners", ICLR; Bu et al. 2023, "Differentially private optimization on large model at small cost",
      ICML): one batched forward and backward of the loss on the records repeated K times. For a loss that is a
      mean (sum) over rows of per-row terms, record r's gradient of L_r is B (1) times the sum of its rows'
      terms of the batched gradient, for a Linear weight s sum_j g_j a_j^T (g_j: the output gradient of row j,
      a_j: its input). Its norm comes from the Gram identity ||sum_j g_j a_j^T||^2 = sum_ij (a_i.a_j)(g_i.g_j)
      (LayerNorm and Embedding alike), the clipped sum from one matmul (c g)^T a. That is the same g_r, the same
      norm, the same clip factor and the same noise as vmap, so the same mechanism with the same sensitivity C;
      only the loss's random draws are drawn for the batch at once (the same distribution, other values).
    """
    wrapper = _Loss(synth)
    named = dict(wrapper.named_parameters())
    ids = {id(p) for p in params}
    ordered = [p for p in named.values() if id(p) in ids]
    path = per_record_path(synth, key, ordered, cfg.per_record)
    if path == "ghost":
        try:
            total, value = _ghost(synth, key, x, ordered, cfg)
        except GhostUnsupported as e:  # a run-time check failed: remembered, so later calls skip ghost
            if cfg.per_record == "ghost":
                raise ValueError(f"{synth.name}: trainer.dp.per_record=ghost cannot clip the '{key}' loss, because "
                                 f"{e}; use per_record auto or vmap") from None
            path = per_record_path(synth, key, ordered, "vmap")
    if path != "ghost":
        total, value = _vmap(synth, key, x, wrapper, named, ids, cfg)
    if paths is not None:
        paths[key] = path
    for t, p in zip(total, ordered):
        z = torch.randn(p.shape, generator=noise, dtype=torch.float32).to(p.device)
        p.grad = (t + sigma * cfg.max_grad_norm * z) / expected_batch
    return value


def per_record_path(synth: Any, key: str, params: list[nn.Parameter], mode: str) -> str:
    """ghost, vmap or loop for trainer.dp.per_record = mode (auto: ghost where ghost_refusal finds no reason)."""
    fallback = "vmap" if getattr(synth, "dp_vmap", True) else "loop"
    if mode == "vmap":
        return fallback
    reason = ghost_refusal(synth, key, params)
    if reason is None:
        return "ghost"
    if mode == "ghost":
        raise ValueError(f"{synth.name}: trainer.dp.per_record=ghost cannot clip the '{key}' loss, because {reason}; "
                         "use per_record auto or vmap")
    return fallback


def _ghost(synth: Any, key: str, x: torch.Tensor, params: list[nn.Parameter], cfg: DPConfig):
    """The clipped per-record sum by ghost clipping, chunk by chunk, and the mean of the records' losses."""
    total = [torch.zeros_like(p) for p in params] if len(x) == 0 else []
    value = torch.zeros(())
    for s in range(0, len(x), cfg.max_physical_batch):
        sums, v, _ = ghost_clipped_sum(synth, key, x[s:s + cfg.max_physical_batch], params,
                                       cfg.noise_multiplicity, cfg.max_grad_norm)
        total = sums if s == 0 else [t.add_(u) for t, u in zip(total, sums)]
        value = value + v.cpu()
    return total, value / len(x) if len(x) else value


def _vmap(synth: Any, key: str, x: torch.Tensor, wrapper: nn.Module, named: dict, ids: set, cfg: DPConfig):
    """The clipped per-record sum from materialised per-record gradients (vmap, or the loop), and the mean loss."""
    train = {n: p.detach() for n, p in named.items() if id(p) in ids}
    frozen = {n: p.detach() for n, p in named.items() if id(p) not in ids}
    buffers = {n: b.detach() for n, b in wrapper.named_buffers()}
    K = cfg.noise_multiplicity
    per_copy = copy_weight(synth, K)

    def record_loss(theta: dict, xr: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, ({**theta, **frozen}, buffers), (xr.unsqueeze(0).expand(K, -1), key)) * per_copy

    per_record = vmap(grad_and_value(record_loss), in_dims=(None, 0), randomness="different")
    if not getattr(synth, "dp_vmap", True):  # a loss that differentiates inside (a gradient penalty): record by record
        per_record = _loop(synth, key, K, [named[n] for n in train], list(train))
    n_params = sum(p.numel() for p in train.values())
    chunk = max(1, min(cfg.max_physical_batch, int(cfg.memory_mb * 2 ** 20 // (4 * max(1, n_params)))))
    total = {n: torch.zeros_like(p) for n, p in train.items()}
    losses = []
    for s in range(0, len(x), chunk):
        g, values = per_record(train, x[s:s + chunk])
        losses.append(values.detach())
        norms = torch.sqrt(sum(v.reshape(len(v), -1).pow(2).sum(1) for v in g.values()))
        factor = (cfg.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for n, v in g.items():
            total[n] += torch.einsum("b,b...->...", factor, v)
    return list(total.values()), torch.cat(losses).mean() if losses else torch.zeros(())


def _loop(synth: Any, key: str, K: int, params: list[nn.Parameter], names: list[str]):
    """Per-record gradients by ordinary autograd, one record at a time (slow; for losses torch.func cannot take)."""
    def per_record(_: dict, xs: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = [synth.loss(xr.unsqueeze(0).expand(K, -1), key) * copy_weight(synth, K) for xr in xs]
        rows = [torch.autograd.grad(v, params) for v in losses]
        return ({n: torch.stack([r[j] for r in rows]) for j, n in enumerate(names)},
                torch.stack([v.detach() for v in losses]))
    return per_record


def copy_weight(synth: Any, K: int) -> float:
    """The factor that makes loss(x_r repeated K times) the mean of the K copies' terms: 1 / K for a loss that sums
    over rows (`row_reduction` "sum"), 1 for a mean."""
    return 1.0 / K if getattr(synth, "row_reduction", None) == "sum" else 1.0


def check_privatisable(synth: Any, keys: list[str]) -> None:
    """Per-record gradients need a loss that is a mean of per-record terms: batch norm couples the records."""
    for name, m in synth.modules_.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(name.startswith(k) for k in _owners(synth, keys)):
            raise ValueError(f"{synth.name}: layer '{name}' ({type(m).__name__}) mixes the records of a batch, so its "
                             "gradient has no per-record form for DP-SGD; use vae, ehrdiff or emrwgan for private runs")


def _owners(synth: Any, keys: list[str]) -> set[str]:
    """Module names whose parameters the private optimizers update."""
    ids = {id(p) for k in keys for g in synth.optimizers_[k].param_groups for p in g["params"]}
    return {n for n, m in synth.modules_.named_children() if any(id(p) in ids for p in m.parameters())}


# ---- the Trainer's side -------------------------------------------------------------------------------------
def private_keys(synth: Any, keys: Sequence[str]) -> list[str]:
    """The loss keys that read training records (DP-GAN: the critic only); all keys unless the model says."""
    refusal = getattr(synth, "dp_refusal", None)
    if refusal:
        raise ValueError(f"{synth.name}: {refusal}")
    declared = getattr(synth, "private_keys", None)
    return [k for k in keys if declared is None or k in declared]


def plan_privacy(synth: Any, cfg: DPConfig, n: int, phases: list, steps: dict) -> tuple[list, float]:
    """[(q, DP steps)] per phase for the steps this run will really take (after the budget rule), and the noise
    multiplier that makes them spend exactly the target epsilon."""
    for p in phases:
        check_dp_data(cfg, n, p.batch_size, synth.name)
    keys = private_keys(synth, list(dict.fromkeys(k for p in phases for k in (p.keys or synth.optimizers_))))
    check_privatisable(synth, keys)
    for k in keys:  # trainer.dp.per_record=ghost on a loss it cannot clip: refused before training
        per_record_path(synth, k, [p for g in synth.optimizers_[k].param_groups for p in g["params"]], cfg.per_record)
    history = [(min(p.batch_size, n) / n, steps[p.name]["steps"] * len(private_keys(synth, list(p.keys or
                                                                                           synth.optimizers_))))
               for p in phases]
    return history, calibrate_noise(cfg, history, synth.name)


def private_step(synth: Any, key: str, Xd: torch.Tensor, batch_size: int, scale: float, cfg: DPConfig,
                 sigma: float, g: torch.Generator, paths: dict | None = None) -> float:
    """One DP-SGD update: a Poisson batch (each record in with probability q = B / N, from `g`), the private
    gradient (noise from `g` too), the optimizer step. EMA and logging stay with the trainer (one per step)."""
    n = len(Xd)
    x = Xd[(torch.rand(n, generator=g) < batch_size / n).nonzero().flatten().to(Xd.device)]
    opt = synth.optimizers_[key]
    params = [p for gr in opt.param_groups for p in gr["params"]]
    for gr in opt.param_groups:
        gr["lr"] = gr["initial_lr"] * scale
    opt.zero_grad(set_to_none=True)
    value = float(private_gradient(synth, key, x, params, cfg, sigma, float(batch_size), g, paths))
    if math.isfinite(value):
        opt.step()
    return value


def privacy_report(cfg: DPConfig | None, sigma: float | None, history: list, paths: dict | None = None) -> dict:
    """run.json's privacy keys: epsilon (from the accountant for the DP steps taken), the settings, and the
    per-record path each loss key took (per_record_path: ghost, vmap or loop)."""
    if cfg is None or sigma is None:
        return {"epsilon": None}
    return {"epsilon": epsilon_spent(sigma, history, cfg.delta, cfg.accountant),
            "dp": {**cfg.__dict__, "noise_multiplier": sigma, "sample_rates": [q for q, _ in history],
                   "dp_steps": [s for _, s in history], "per_record_path": dict(paths or {})}}
