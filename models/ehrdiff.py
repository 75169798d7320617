"""EHRDiff (Yuan, Zhou & Yu, TMLR 2024): EDM-preconditioned MLP denoiser on raw {0,1} EHR vectors, Heun sampler."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .base import TorchSynthesizer, register_synthesizer
from .budget import Phase


def sinusoidal_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of a scalar per row: [sin(t f_k), cos(t f_k)], f_k = 10^(-4 k/(half-1)).

    Width equals the data width as in the official LinearModel. Deviation: the official code returns
    2*floor(w/2) features and crashes on odd widths (e.g. 881); here an odd width is padded with one zero column.
    """
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return nn.functional.pad(emb, (0, width - 2 * half))


# EHRDiff model/linear_model.py: Block(d_in -> d_out): h = x + Linear_t(t_emb); out = Linear(ReLU(h)).
class Block(nn.Module):
    def __init__(self, d_in: int, d_out: int, time_dim: int) -> None:
        super().__init__()
        self.time = nn.Linear(time_dim, d_in)
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(x + self.time(t_emb)))


# The random Fourier time features of EHRDiff's CinC/ECG configs (random_fourier_features: true,
# learned_sinusoidal_dim: 32): lucidrains' RandomOrLearnedSinusoidalPosEmb with is_random=True.
class RandomFourierFeatures(nn.Module):
    """[t, sin(2 pi t w), cos(2 pi t w)] with fixed w ~ N(0, 1) of size dim/2: dim + 1 features per scalar t.

    Deviation: the official code keeps w as an nn.Parameter with requires_grad=False; here it is a buffer (same
    values, drawn under the run's seed, saved with the weights), so it is not counted among trainable
    parameters, which is how the official parameter count (2,978,790 at 115 columns) counts it too.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"learned_sinusoidal_dim must be a positive even number, got {dim}")
        self.register_buffer("weights", torch.randn(dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()[:, None]
        f = t * self.weights[None, :] * (2 * math.pi)
        return torch.cat([t, f.sin(), f.cos()], dim=1)


# EHRDiff LinearModel (v2): time features of c_noise (sinusoidal at data width, or random Fourier features) ->
# Linear -> SiLU -> Linear time MLP; every block gets t_emb; no normalisation, dropout or skip connections.
class LinearModel(nn.Module):
    def __init__(self, n_features: int, unit_dims: tuple[int, ...], time_dim: int,
                 random_fourier_features: bool = False, learned_sinusoidal_dim: int = 32) -> None:
        super().__init__()
        self.n_features = n_features
        self.rff = RandomFourierFeatures(learned_sinusoidal_dim) if random_fourier_features else None
        t_in = learned_sinusoidal_dim + 1 if random_fourier_features else n_features
        self.time_mlp = nn.Sequential(nn.Linear(t_in, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        dims = [n_features, *unit_dims, n_features]
        self.blocks = nn.ModuleList(Block(a, b, time_dim) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        feats = self.rff(c_noise) if self.rff is not None else sinusoidal_embedding(c_noise, self.n_features)
        t_emb = self.time_mlp(feats)
        for block in self.blocks:
            x = block(x, t_emb)
        return x


# Karras et al. 2022 (EDM) preconditioning as in EHRDiff denoiser.py::EDMDenoiser.
def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """c_skip, c_out, c_in, c_noise of EDM for noise level(s) sigma."""
    s2, d2 = sigma ** 2, sigma_data ** 2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_sigma_steps(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """The N+1 sampler noise levels: (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0."""
    i = np.arange(num_steps, dtype=np.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(t, 0.0)


# Yuan, Zhou & Yu, "EHRDiff: Exploring Realistic EHR Synthesis with Diffusion Models", TMLR 2024 (official v2 code).
@register_synthesizer("ehrdiff")
class EHRDiff(TorchSynthesizer):
    """EHRDiff with the paper defaults of configs/mimic/train_edm.yaml (official repository, configs/mimic/train_edm.yaml).

    `epochs` x ceil(N / batch_size) optimiser steps (205,000 for MIMIC); the trainer may compress that schedule
    (trainer.max_steps) for CPU runs without changing the method. The CinC setting (configs/cinc/train_edm.yaml)
    is `random_fourier_features=True, learned_sinusoidal_dim=32, time_dim=128, unit_dims=(512, 768, 1024, 768,
    512), batch_size=256, sigma_data=0.03` (benchmarks/model/ehrdiff_cinc.yaml). `warmup_fraction`, when set,
    replaces warmup_steps by that share of the run's total steps: the rule for data smaller than the paper's,
    where 20,000 warm-up steps would be most or all of the schedule (see the paper_cinc2012 suite).
    """

    def __init__(self, sigma_data: float = 0.14, p_mean: float = -1.2, p_std: float = 1.2,
                 unit_dims: tuple[int, ...] = (1024, 384, 384, 384, 1024), time_dim: int = 384,
                 lr: float = 3e-4, weight_decay: float = 0.0, batch_size: int = 1024, epochs: int = 5000,
                 warmup_steps: int = 20000, ema_decay: float = 0.999, num_steps: int = 32, sigma_min: float = 0.02,
                 sigma_max: float = 80.0, rho: float = 7.0, sample_batch_size: int = 4096,
                 random_fourier_features: bool = False, learned_sinusoidal_dim: int = 32,
                 warmup_fraction: float | None = None) -> None:
        self.sigma_data = sigma_data
        self.p_mean = p_mean
        self.p_std = p_std
        self.unit_dims = unit_dims
        self.time_dim = time_dim
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.warmup_steps = warmup_steps
        self.ema_decay = ema_decay
        self.num_steps = num_steps
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho
        self.sample_batch_size = sample_batch_size
        self.random_fourier_features = random_fourier_features
        self.learned_sinusoidal_dim = learned_sinusoidal_dim
        self.warmup_fraction = warmup_fraction

    # ---- TorchSynthesizer hooks ------------------------------------------------------------------
    def build(self, n_features: int) -> nn.ModuleDict:
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"ehrdiff: warmup_fraction must be in [0, 1) or null, got {self.warmup_fraction}")
        return nn.ModuleDict({"net": LinearModel(n_features, tuple(self.unit_dims), self.time_dim,
                                                 bool(self.random_fourier_features), int(self.learned_sinusoidal_dim))})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.AdamW(self.modules_["net"].parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    def lr_scale(self, step: int, total: int) -> float:
        """HF get_cosine_schedule_with_warmup: linear warm-up, then half-cosine from 1 to 0 at `total`."""
        warmup = self.warmup_steps if self.warmup_fraction is None else round(self.warmup_fraction * total)
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def denoise(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), network in float32 (as the official denoiser)."""
        sigma = sigma.reshape(-1, 1).to(torch.float32)
        x = x.to(torch.float32)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        return c_skip * x + c_out * net(c_in * x, c_noise.flatten())

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """EDM loss: ln sigma ~ N(p_mean, p_std^2); lambda(sigma) = (sigma^2 + s_d^2)/(sigma s_d)^2; mean over features."""
        sigma = (torch.randn(len(x), 1, device=x.device) * self.p_std + self.p_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        noisy = x + torch.randn_like(x) * sigma
        D = self.denoise(self.modules_["net"], noisy, sigma)
        return (weight * (D - x) ** 2).mean(dim=1).mean()

    # ---- fit / sample ----------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "EHRDiff":
        from .trainer import Trainer

        X = self._prepare_fit(data)
        trainer = trainer or Trainer()
        self.init_training(self.n_features_, trainer.seed)
        self.run_plan(X, trainer)
        return self

    def plan(self, n_rows: int) -> list[Phase]:
        """One phase: epochs x ceil(N / batch) steps (drop_last=False), one loss call per step."""
        return [Phase("train", self.epochs * math.ceil(n_rows / min(self.batch_size, n_rows)), self.batch_size, ("net",))]

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0) -> np.ndarray:
        """Deterministic Heun sampler (EDM Alg. 1) with float64 state; returns the raw continuous output."""
        self._check_fitted()
        net = self.sampling_modules()["net"].eval()
        device = next(net.parameters()).device
        steps = torch.as_tensor(edm_sigma_steps(self.num_steps, self.sigma_min, self.sigma_max, self.rho),
                                dtype=torch.float64, device=device)
        g = torch.Generator().manual_seed(int(seed))
        out = []
        for start in range(0, n, self.sample_batch_size):
            b = min(self.sample_batch_size, n - start)
            x = torch.randn(b, self.n_features_, generator=g, dtype=torch.float64).to(device) * steps[0]
            for i in range(self.num_steps):
                t_cur, t_next = steps[i], steps[i + 1]
                d = (x - self.denoise(net, x, t_cur.expand(b)).double()) / t_cur
                x_next = x + (t_next - t_cur) * d
                if i < self.num_steps - 1:  # Heun correction except on the final step to sigma = 0
                    d2 = (x_next - self.denoise(net, x_next, t_next.expand(b)).double()) / t_next
                    x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
                x = x_next
            out.append(x.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_features_))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Binary columns: rint(clip(x, 0, 1)) (generate_base.py); continuous columns: clip(x, 0, 1) (CinC setting)."""
        x = np.clip(self.generate(n, seed), 0.0, 1.0)
        b = self.binary_mask
        x[:, b] = np.rint(x[:, b])
        return self._finish(x)
