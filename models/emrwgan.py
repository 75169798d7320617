"""EMR-WGAN (Zhang et al., JAMIA 2020): WGAN-GP on raw binary records, residual dense blocks with layer norm."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import TorchSynthesizer, register_synthesizer
from .budget import Phase
from .outputs import binarize, check_binarize, check_unit_interval
from .trainer import Trainer


def keras_dense(n_in: int, n_out: int) -> nn.Linear:
    """tf.keras Dense defaults: glorot-uniform kernel, zero bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


# new_emrwgan.py PointWiseLayer with the single category of the unlabelled mode: x * e + b, where e is the
# category's Embedding row (keras default U(-0.05, 0.05)) and b a glorot-uniform 1-D variable (U(+-sqrt(3/n))).
class PointWise(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(width).uniform_(-0.05, 0.05))
        bound = math.sqrt(3.0 / width)
        self.bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias


# new_emrwgan.py Generator (G_DIMS = [384] * 6 + [d]): x = PointWise(LN_noaffine(ReLU(Dense(z)))); then per block
# x += LN(ReLU(Dense(x))); output sigmoid(Dense(x)).
class EMRGenerator(nn.Module):
    def __init__(self, z_dim: int, dims: Sequence[int], n_features: int) -> None:
        super().__init__()
        sizes = [z_dim, *dims]
        self.dense = nn.ModuleList(keras_dense(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norm0 = nn.LayerNorm(dims[0], eps=1e-5, elementwise_affine=False)
        self.pointwise = PointWise(dims[0])
        self.norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-5) for d in dims[1:])
        self.out = keras_dense(dims[-1], n_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.norm0(torch.relu(self.dense[0](z))))
        for dense, norm in zip(self.dense[1:], self.norms):
            x = x + norm(torch.relu(dense(x)))
        return torch.sigmoid(self.out(x))


# new_emrwgan.py Discriminator (D_DIMS = [384] * 6): x = LN(ReLU(Dense(x))); per block x += LN(ReLU(Dense(x)));
# output Dense(1)(x) + <e/|e|, c/|c|> with c = Dense(384)(x): the projection term of the label-conditioned critic,
# which the code also computes in the unlabelled mode (one category), so it is kept.
class EMRCritic(nn.Module):
    def __init__(self, n_features: int, dims: Sequence[int]) -> None:
        super().__init__()
        sizes = [n_features, *dims]
        self.dense = nn.ModuleList(keras_dense(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-5) for d in dims)
        self.linear = keras_dense(dims[-1], dims[-1])
        self.embedding = nn.Parameter(torch.empty(dims[-1]).uniform_(-0.05, 0.05))
        self.out = keras_dense(dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norms[0](torch.relu(self.dense[0](x)))
        for dense, norm in zip(self.dense[1:], self.norms[1:]):
            x = x + norm(torch.relu(dense(x)))
        # Deviation: F.normalize (norm clamped at 1e-12) instead of c / sqrt(sum c^2), which is 0/0 at c = 0.
        proj = (F.normalize(self.linear(x), dim=-1) * F.normalize(self.embedding, dim=0)).sum(-1)
        return self.out(x).squeeze(-1) + proj


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over rows of (||grad_x critic(x_hat)||_2 - 1)^2 at
    x_hat = real + alpha (fake - real), alpha one U(0, 1) draw per row; differentiable (create_graph)."""
    x_hat = (real + alpha * (fake - real)).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.pow(2).sum(1).sqrt() - 1.0) ** 2).mean()


# Zhang, Yan, Mesa, Sun & Malin, "Ensuring electronic medical record simulation through better training,
# modeling, and evaluation", JAMIA 2020; official TF2 code allhailjustice/EMR-WGAN new_emrwgan.py.
@register_synthesizer("emrwgan")
class EMRWGAN(TorchSynthesizer):

    """EMR-WGAN, unlabelled mode: WGAN-GP (lambda 10) on the raw record, no autoencoder, z 128, generator and critic
    of 6 residual dense blocks of 384 with layer norm, sigmoid generator output, RMSprop 1e-5 (G) / 2e-5 (D),
    batch 1000, one critic step per generator step, 50,000 epochs (new_emrwgan.py's loop; far beyond a CPU run:
    the short schedule comes from trainer.max_steps).

    RMSprop is tf.keras's: rho 0.9, epsilon 1e-7 outside the square root (torch alpha=0.9, eps=1e-7).
    Binary columns are rounded at 0.5 (`binarize: threshold`): the repository's generate() in multi_GPU.py writes
    np.round(sigmoid output) (new_emrwgan.py's gen() saves the raw probabilities without a rule); `binarize:
    bernoulli` draws them instead. Continuous columns (scaled to [0, 1]) are the sigmoid output.

    Deviations: label conditioning (generator PointWise embedding per label, projection critic) is reduced to the
    single-category case the code runs without labels (labels are ordinary columns here, docs/contracts.md §2); batches
    come from the trainer's per-epoch permutation and the last partial batch is kept (the TF dataset shuffles with
    a 10,000-record buffer and drops the remainder).
    """
    private_keys = ("d",)  # DP (trainer.dp): the critic reads records, the generator only the critic (DP-GAN)
    dp_vmap = False        # the gradient penalty differentiates inside the loss: per-record gradients by a loop


    def __init__(self, z_dim: int = 128, generator_dims: tuple[int, ...] = (384,) * 6,
                 critic_dims: tuple[int, ...] = (384,) * 6, gp_weight: float = 10.0, lr_g: float = 1e-5,
                 lr_d: float = 2e-5, rms_rho: float = 0.9, rms_eps: float = 1e-7, batch_size: int = 1000,
                 epochs: int = 50000, d_updates: int = 1, binarize: str = "threshold",
                 sample_batch_size: int = 1000) -> None:
        self.z_dim = z_dim
        self.generator_dims = generator_dims
        self.critic_dims = critic_dims
        self.gp_weight = gp_weight
        self.lr_g = lr_g
        self.lr_d = lr_d
        self.rms_rho = rms_rho
        self.rms_eps = rms_eps
        self.batch_size = batch_size
        self.epochs = epochs
        self.d_updates = d_updates
        self.binarize = binarize
        self.sample_batch_size = sample_batch_size

    # ---- TorchSynthesizer hooks ------------------------------------------------------------------
    def _check_params(self) -> None:
        check_binarize(self.binarize, self.name)
        for what, dims in (("generator_dims", self.generator_dims), ("critic_dims", self.critic_dims)):
            if len(dims) == 0 or len(set(dims)) != 1:
                raise ValueError(f"emrwgan: {what} must be one or more equal widths (residual blocks), got {list(dims)}")

    def build(self, n_features: int) -> nn.ModuleDict:
        self._check_params()
        return nn.ModuleDict({"gen": EMRGenerator(self.z_dim, self.generator_dims, n_features),
                              "critic": EMRCritic(n_features, self.critic_dims)})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        kw = dict(alpha=self.rms_rho, eps=self.rms_eps)
        return {"d": torch.optim.RMSprop(self.modules_["critic"].parameters(), lr=self.lr_d, **kw),
                "g": torch.optim.RMSprop(self.modules_["gen"].parameters(), lr=self.lr_g, **kw)}

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """Critic: -E[D(x)] + E[D(G(z))] + lambda GP; generator: -E[D(G(z))]. Noise from torch's global RNG."""
        gen, critic = self.modules_["gen"], self.modules_["critic"]
        z = torch.randn(len(x), self.z_dim, device=x.device)
        if key == "d":
            with torch.no_grad():
                fake = gen(z)
            alpha = torch.rand(len(x), 1, device=x.device)
            w_distance = -critic(x).mean() + critic(fake).mean()
            return w_distance + self.gp_weight * gradient_penalty(critic, x, fake, alpha)
        if key == "g":
            return -critic(gen(z)).mean()
        raise KeyError(f"emrwgan: no loss '{key}'; valid choices: d, g")

    # ---- fit / sample ----------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "EMRWGAN":
        X = self._prepare_fit(data)
        self._check_params()
        check_unit_interval(X, self.kinds_, self.columns_, f"{self.name}.fit")
        trainer = trainer or Trainer()
        self.init_training(self.n_features_, trainer.seed)
        self.run_plan(X, trainer)
        return self

    def plan(self, n_rows: int) -> list[Phase]:
        """One phase: epochs x ceil(N / batch) steps, each d_updates critic updates then one generator update."""
        total = self.epochs * math.ceil(n_rows / min(self.batch_size, n_rows))
        return [Phase("train", total, self.batch_size, ("d",) * self.d_updates + ("g",))]

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Sigmoid outputs G(z), z ~ N(0, I) drawn from `generator`."""
        self._check_fitted()
        gen = self.modules_["gen"].eval()
        device = next(gen.parameters()).device
        bs = self.sample_batch_size
        out = [gen(torch.randn(min(bs, n - s), self.z_dim, generator=generator).to(device)).cpu()
               for s in range(0, n, bs)]
        return torch.cat(out) if out else torch.zeros(0, self.n_features_)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        self._check_params()
        g = torch.Generator().manual_seed(int(seed))
        return self._finish(binarize(self.generate(n, g), self.binary_mask, self.binarize, g))
