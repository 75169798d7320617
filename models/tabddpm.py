"""TabDDPM (Kotelnikov et al., ICML 2023): Gaussian diffusion on continuous columns, multinomial on binary codes."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import TorchSynthesizer, register_synthesizer
from .budget import Phase
from .outputs import check_unit_interval
from .quantile import MAX_LEVELS, NORMALIZATIONS, discrete_levels, inverse_quantile, n_quantiles, round_to_levels
from .tabddpm_diffusion import DiffusionTables, LOG_ZERO, logistic_draw, mixed_loss, on_log_onehot
from .trainer import Trainer

def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half), k < half = dim // 2; an odd dim gets a zero column."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([args.cos(), args.sin()], dim=-1), (0, dim % 2))


# tab_ddpm/modules.py MLPDiffusion (is_y_cond=False): proj d_in -> dim_t, plus time MLP (Linear, SiLU, Linear) of the
# sinusoidal embedding, then the rtdl baseline MLP: [Linear -> ReLU -> Dropout] per d_layers, Linear head -> d_in.
class MLPDiffusion(nn.Module):
    def __init__(self, d_in: int, d_layers: tuple[int, ...], dropout: float, dim_t: int,
                 num_timesteps: int | None = None) -> None:
        super().__init__()
        self.dim_t = dim_t
        # the embedding of every timestep, looked up per row (the same values; not saved with the weights)
        table = timestep_embedding(torch.arange(num_timesteps), dim_t) if num_timesteps else None
        self.register_buffer("t_table", table, persistent=False)
        self.proj = nn.Linear(d_in, dim_t)
        self.time_embed = nn.Sequential(nn.Linear(dim_t, dim_t), nn.SiLU(), nn.Linear(dim_t, dim_t))
        layers, width = [], dim_t
        for d in d_layers:
            layers += [nn.Linear(width, d), nn.ReLU(), nn.Dropout(dropout)]
            width = d
        self.mlp = nn.Sequential(*layers, nn.Linear(width, d_in))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.t_table[t] if self.t_table is not None else timestep_embedding(t, self.dim_t)
        return self.mlp(self.proj(x) + self.time_embed(emb))


class FoldedDenoiser:
    """MLPDiffusion on log one-hot inputs of 2 categories, algebraically folded (training and sampling).

    The network's input pairs are (L cat, L (1 - cat)) with L = log(1e-30), so the input projection equals
    W_num z + L (W_0 - W_1) cat + (b + L W_1 1): one (n_bin x dim_t) product instead of (2 n_bin x dim_t) and
    no one-hot tensor. Only the logit differences d = logit_1 - logit_0 enter the loss and the reverse step
    (log_odds), so the head computes them with W_1 - W_0 (half its width). The folded weights are functions of
    the parameters, so gradients flow back to them. Equal to the network up to float rounding
    (tests/test_tabddpm_forms.py). TabDDPM.fit decides where the loss uses it (fold_)."""

    def __init__(self, net: MLPDiffusion, n_num: int, n_bin: int) -> None:
        w, b = net.proj.weight, net.proj.bias
        w_bin = w[:, n_num:]
        self.net, self.n_num = net, n_num
        self.w_num = w[:, :n_num]
        self.w_cat = (LOG_ZERO * (w_bin[:, 0::2] - w_bin[:, 1::2])).T.contiguous()
        self.b_in = b + LOG_ZERO * w_bin[:, 1::2].sum(dim=1)
        head = net.mlp[-1]
        self.hidden = net.mlp[:-1]
        self.w_num_out, self.b_num_out = head.weight[:n_num], head.bias[:n_num]
        wb, bb = head.weight[n_num:], head.bias[n_num:]
        self.w_d = (wb[1::2] - wb[0::2]).T.contiguous()
        self.b_d = bb[1::2] - bb[0::2]

    def __call__(self, z: torch.Tensor, cat: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_hat (batch, n_num), d (batch, n_bin)) for x_t = (z, cat) at timesteps t, (batch,) or one (1,)."""
        table = self.net.t_table
        emb = table[t] if table is not None else timestep_embedding(t, self.net.dim_t)
        bias = self.b_in + self.net.time_embed(emb)
        h = torch.addmm(bias, cat.float(), self.w_cat)
        if self.n_num:
            h = h + z @ self.w_num.T
        h = self.hidden(h)
        return h @ self.w_num_out.T + self.b_num_out, torch.addmm(self.b_d, h, self.w_d)


# Kotelnikov, Baranchuk, Rubachev & Babenko, "TabDDPM: Modelling Tabular Data with Diffusion Models", ICML 2023
# (official code: github.com/yandex-research/tab-ddpm, MIT).
@register_synthesizer("tabddpm")
class TabDDPM(TorchSynthesizer):
    """TabDDPM with MLPDiffusion, defaults of the official base config exp/<dataset>/config.toml (the same in all 16
    datasets; the starting point of scripts/tune_ddpm.py): d_layers [256, 256], dropout 0, dim_t 128 (MLPDiffusion
    default), num_timesteps 1000, cosine schedule, mse Gaussian loss, AdamW lr 1e-3, weight_decay 1e-5, batch 4096,
    lr annealed linearly to 0 (scripts/train.py), sampling batch 10000; steps 30,000, the scale of the tuned
    exp/<dataset>/ddpm_*_best configs (26 of 28 train 30,000 steps; the base config's 1,000 is the tuner's start).

    Each binary column is one 2-category variable of the multinomial diffusion (each distribution one log-odds on
    (batch, n) tensors, the network folded for its log one-hot inputs: the same function); continuous columns are
    the Gaussian part, quantile-normalised as the official pipeline does (normalization="quantile", [train.T] of
    every config: lib/data.py's QuantileTransformer to a normal, inverted at sampling, then scripts/sample.py's
    rounding of discrete columns to their nearest training value).
    normalization="none" diffuses ehrbench's [0, 1] values as given and clips the samples to [0, 1] (a deviation,
    kept for private runs: the transform is fitted on the training records outside DP-SGD, so trainer.dp refuses
    it). Deviations from the official code (each also noted where it happens): a column counts as discrete by
    having at most 32 distinct training values (the official check also asks for integers, which ehrbench's
    [0, 1]-scaled columns no longer are); labels are ordinary columns (the official is_y_cond=False path; no class-conditional sampling); sampling draws its noise
    from a generator seeded by `seed` on the model's device (the official code uses the global RNG), and each
    binary variable's reverse step is one logistic draw against its log-odds (DiffusionTables.log_odds; same law as the official
    Gumbel-max over two categories, half the work); the official
    NaN-row check of sample_all is not ported. Not ported: gaussian_loss_type='kl', importance-sampled timesteps,
    DDIM sampling and the ResNet denoiser (none used by the paper's configs). The official trainer keeps an EMA
    (0.999) but its pipeline samples from the raw weights (model.pt), so `ema_decay` is None by default; a number
    makes the ehrbench trainer keep an EMA (with its warm-up) and sample from it.
    """

    row_reduction = "mean"  # loss: row means of the Gaussian and multinomial terms (ghost clipping, K copies, torchrun)
    paper_form = {"fold_": False}  # budgets count the network's official call, not the folded one

    def __init__(self, d_layers: tuple[int, ...] = (256, 256), dropout: float = 0.0, dim_t: int = 128,
                 num_timesteps: int = 1000, scheduler: str = "cosine", lr: float = 1e-3, weight_decay: float = 1e-5,
                 batch_size: int = 4096, steps: int = 30000, ema_decay: float | None = None,
                 sample_batch_size: int = 10000, normalization: str = "quantile") -> None:
        self.d_layers = d_layers
        self.dropout = dropout
        self.dim_t = dim_t
        self.num_timesteps = num_timesteps
        self.scheduler = scheduler
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.steps = steps
        self.ema_decay = ema_decay
        self.sample_batch_size = sample_batch_size
        self.normalization = normalization

    # ---- TorchSynthesizer hooks ------------------------------------------------------------------
    def build(self, n_features: int) -> nn.ModuleDict:
        tab = DiffusionTables(int(self.num_timesteps), self.scheduler, self.kinds_)
        d_in = len(tab.num_idx) + 2 * len(tab.bin_idx)  # n_num + sum of category counts, as official d_in
        net = MLPDiffusion(d_in, tuple(self.d_layers), float(self.dropout), int(self.dim_t), tab.T)
        return nn.ModuleDict({"net": net, "diffusion": tab})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.AdamW(self.modules_["net"].parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    def lr_scale(self, step: int, total: int) -> float:
        """scripts/train.py anneals after each step to lr (1 - step/steps), so step s >= 1 runs at 1 - (s-1)/steps."""
        return 1.0 - max(step - 1, 0) / max(1, total)

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """t, Gaussian noise and the Gumbel uniforms of q_sample from torch's global RNG (seeded per step)."""
        tab = self.modules_["diffusion"]
        x_num, x_bin = tab.split(x)
        t = torch.randint(0, tab.T, (len(x),), device=x.device)
        noise = torch.randn_like(x_num)
        u = torch.rand(len(x), x_bin.shape[1], 2, device=x.device)
        net = self.modules_["net"]
        fold = getattr(self, "fold_", False)  # set by fit; DP-SGD (ghost clipping) needs the network called
        denoise = FoldedDenoiser(net, x_num.shape[1], x_bin.shape[1]) if fold else on_log_onehot(net)
        return mixed_loss(denoise, tab, x_num, x_bin, t, noise, u)

    def plan(self, n_rows: int) -> list[Phase]:
        """One phase of `steps` optimiser steps (the official trainer counts steps, not epochs)."""
        return [Phase("train", int(self.steps), self.batch_size, ("net",))]

    # ---- fit / sample ----------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "TabDDPM":
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown {self.name}.normalization {self.normalization!r}; valid choices: "
                             f"{', '.join(NORMALIZATIONS)}")
        trainer = trainer or Trainer()
        X = self._prepare_fit(data)
        num = np.flatnonzero(np.asarray(self.kinds_) != "binary")  # DiffusionTables.num_idx
        if self.normalization == "quantile" and len(num) and getattr(trainer, "dp", None) is not None:
            raise ValueError(f"{self.name}: normalization=quantile fits its transform on the training records outside "
                             "DP-SGD, so a private run needs model.normalization=none (choices: quantile, none)")
        self.levels_ = discrete_levels(X[:, num])
        self.quantiles_ = None
        if self.normalization == "none":
            check_unit_interval(X, self.kinds_, self.columns_, f"{self.name}.fit")  # the [0, 1] clip needs [0, 1]
        elif len(num):
            from sklearn.preprocessing import QuantileTransformer

            qt = QuantileTransformer(output_distribution="normal", n_quantiles=n_quantiles(len(X)),
                                     subsample=int(1e9), random_state=trainer.seed)
            X = X.copy()
            X[:, num] = qt.fit_transform(X[:, num].astype(np.float64)).astype(np.float32)
            self.quantiles_ = qt.quantiles_
        # the folded denoiser in the loss where binary columns are most (on PhysioNet's 110 continuous and 7 binary
        # its per-step fold costs more than it saves), never under DP-SGD (ghost clipping needs the network called)
        self.fold_ = getattr(trainer, "dp", None) is None and 2 * len(num) <= self.n_features_
        self.init_training(self.n_features_, trainer.seed)
        self.run_plan(X, trainer)
        return self

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = super().state_tensors()
        state["levels"] = torch.from_numpy(self.levels_)
        if self.quantiles_ is not None:
            state["quantiles"] = torch.from_numpy(self.quantiles_)
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        levels, q = state.pop("levels", None), state.pop("quantiles", None)
        super().load_state_tensors(state)
        n_num = int(np.sum(np.asarray(self.kinds_) != "binary"))
        self.levels_ = levels.numpy() if levels is not None else np.full((n_num, MAX_LEVELS), np.nan)
        self.quantiles_ = q.numpy() if q is not None else None

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sampling (GaussianMultinomialDiffusion.sample): x_T ~ N(0, I) x uniform categories, then for
        t = T-1..0 a Gaussian p_sample (eps-parametrised mean, fixed variance, no noise at t = 0) and a categorical
        draw from p(x_{t-1}|x_t). Returns the continuous part (unclipped) and the category indices."""
        self._check_fitted()
        mods = self.sampling_modules()
        net, tab = mods["net"].eval(), mods["diffusion"]
        device = tab.log_alpha.device
        # Deviation: a generator on the model's device (seeded by `seed` only): drawing T x batch x 2 n_binary
        # uniforms on the CPU and copying them would dominate GPU sampling. Same seed, same device -> same samples.
        g = torch.Generator(device=device).manual_seed(int(seed))
        n_num, n_bin = len(tab.num_idx), len(tab.bin_idx)
        fold = FoldedDenoiser(net, n_num, n_bin)  # the network on log one-hot inputs, folded (same function)
        nums, cats = [], []
        for start in range(0, n, self.sample_batch_size):
            b = min(self.sample_batch_size, n - start)
            z = torch.randn(b, n_num, generator=g, device=device)
            cat = logistic_draw(torch.zeros(b, n_bin, device=device), torch.rand(b, n_bin, generator=g, device=device))
            for i in reversed(range(tab.T)):
                eps_hat, d = fold(z, cat, torch.full((1,), i, device=device))
                x0 = tab.sqrt_recip_ac[i] * z - tab.sqrt_recipm1_ac[i] * eps_hat
                mean = tab.coef1[i] * x0 + tab.coef2[i] * z
                eps = torch.randn(b, n_num, generator=g, device=device)
                z = mean + (i > 0) * torch.exp(0.5 * tab.model_log_var[i]) * eps
                # Deviation (the same law, another random stream): the official Gumbel-max over p_pred's two
                # log-probabilities is one logistic draw against their log-odds, on (batch, n) tensors, not
                # (batch, n, 2): half the elementwise work.
                lo = tab.log_odds(d, 2 * cat.float() - 1, torch.full((1,), i, device=device))
                cat = logistic_draw(lo, torch.rand(b, n_bin, generator=g, device=device))
            nums.append(z.cpu())
            cats.append(cat.cpu())
        if not nums:
            return torch.zeros(0, n_num), torch.zeros(0, n_bin, dtype=torch.long)
        return torch.cat(nums), torch.cat(cats)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Binary columns: the sampled category (0/1); continuous columns: the QuantileTransformer inverted
        (normalization="none": clip(x, 0, 1)), then discrete columns rounded to their nearest training value."""
        z, cat = self.generate(n, seed)
        tab = self.sampling_modules()["diffusion"]
        X = np.zeros((n, self.n_features_), dtype=np.float32)
        num = z.numpy().astype(np.float64)
        q, levels = getattr(self, "quantiles_", None), getattr(self, "levels_", None)
        num = inverse_quantile(num, q) if q is not None else np.clip(num, 0.0, 1.0)
        X[:, tab.num_idx.cpu().numpy()] = round_to_levels(num, levels) if levels is not None else num
        X[:, tab.bin_idx.cpu().numpy()] = cat.numpy().astype(np.float32)
        return self._finish(X)
