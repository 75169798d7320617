"""EHRDiff's denoiser network (official model/linear_model.py): time features, time/label MLPs, an MLP of blocks."""
from __future__ import annotations

import math

import torch
from torch import nn


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
# With n_classes > 0 (the official `use_cfg`): an Embedding(n_classes + 1, class_dim) -> Linear -> SiLU -> Linear
# label MLP added to t_emb; index n_classes is the "no label" class of classifier-free guidance.
class LinearModel(nn.Module):
    def __init__(self, n_features: int, unit_dims: tuple[int, ...], time_dim: int,
                 random_fourier_features: bool = False, learned_sinusoidal_dim: int = 32,
                 n_classes: int = 0, class_dim: int = 128) -> None:
        super().__init__()
        self.n_classes = n_classes
        if n_classes:
            self.class_emb = nn.Embedding(n_classes + 1, class_dim)
            self.class_mlp = nn.Sequential(nn.Linear(class_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.n_features = n_features
        self.rff = RandomFourierFeatures(learned_sinusoidal_dim) if random_fourier_features else None
        t_in = learned_sinusoidal_dim + 1 if random_fourier_features else n_features
        self.time_mlp = nn.Sequential(nn.Linear(t_in, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        dims = [n_features, *unit_dims, n_features]
        self.blocks = nn.ModuleList(Block(a, b, time_dim) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.rff(c_noise) if self.rff is not None else sinusoidal_embedding(c_noise, self.n_features)
        t_emb = self.time_mlp(feats)
        if self.n_classes:
            t_emb = t_emb + self.class_mlp(self.class_emb(labels))
        for block in self.blocks:
            x = block(x, t_emb)
        return x
