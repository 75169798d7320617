"""Bernoulli-decoder VAE of the CorGAN repository's MIMIC baseline."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import TorchSynthesizer, register_synthesizer
from .budget import Phase
from .outputs import binarize, check_binarize, check_unit_interval
from .trainer import Trainer

# ---- the model ----------------------------------------------------------------------------------------------
# CorGAN repo Generative/VAE/MIMIC/vae.py: fc1 d->256 ReLU, fc21/fc22 256->128 (mu, logvar), fc3 128->256 ReLU,
# fc4 256->d sigmoid (PyTorch default initialisation).
class VAENet(nn.Module):
    def __init__(self, n_features: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, latent_dim)
        self.fc22 = nn.Linear(hidden_dim, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, n_features)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc4(torch.relu(self.fc3(z)))


def vae_loss(net: VAENet, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """BCE(x, sigmoid(dec(mu + eps * exp(logvar / 2)))) + KL(N(mu, sigma^2) || N(0, I)), both summed over the batch
    and features (the repo's reduction='sum'). KL = -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    mu, logvar = net.encode(x)
    z = mu + eps * torch.exp(0.5 * logvar)
    # Deviation: BCE from logits (the numerically stable form of the same value) instead of sigmoid then BCE,
    # whose log PyTorch clamps at -100.
    bce = F.binary_cross_entropy_with_logits(net.decode_logits(z), x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


# Kingma & Welling 2014 VAE in the configuration of the CorGAN repository's MIMIC baseline (Torfi & Fox 2020,
# astorfi/cor-gan Generative/VAE/MIMIC/vae.py).
@register_synthesizer("vae")
class VAE(TorchSynthesizer):
    """d -> 256 -> 128 latent -> 256 -> d Bernoulli-decoder VAE, BCE + KL, Adam 1e-3, batch 512, 1000 epochs.

    Deviations from the repo (each also noted where it happens): the trainer draws batches by a seeded
    per-epoch permutation of all training rows (the repo samples with replacement, drop_last=True, after
    holding out 10% of rows for a test loss we do not need: EHRData has its own holdout); sampling draws
    Bernoulli outputs by default (the repo thresholds at 0.5: `binarize: threshold`), see docs/contracts.md §3.
    Continuous columns (scaled to [0, 1]) are modelled with the same BCE and sampled as the decoder mean
    (the sigmoid output), never binarised.
    """

    row_reduction = "sum"  # loss: BCE + KL summed over rows (the repo's reduction='sum'; ghost clipping, K, torchrun)

    def __init__(self, hidden_dim: int = 256, latent_dim: int = 128, lr: float = 1e-3, batch_size: int = 512,
                 epochs: int = 1000, binarize: str = "bernoulli", sample_batch_size: int = 4096) -> None:
        self.hidden_dim = hidden_dim
        self.latent_dim = latent_dim
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.binarize = binarize
        self.sample_batch_size = sample_batch_size

    # ---- TorchSynthesizer hooks ------------------------------------------------------------------
    def build(self, n_features: int) -> nn.ModuleDict:
        return nn.ModuleDict({"vae": VAENet(n_features, self.hidden_dim, self.latent_dim)})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": torch.optim.Adam(self.modules_["vae"].parameters(), lr=self.lr)}

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """Reparameterisation noise from torch's global RNG (the trainer seeds it per step)."""
        eps = torch.randn(len(x), self.latent_dim, device=x.device)
        return vae_loss(self.modules_["vae"], x, eps)

    # ---- fit / sample ----------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "VAE":
        X = self._prepare_fit(data)
        check_binarize(self.binarize, self.name)
        check_unit_interval(X, self.kinds_, self.columns_, f"{self.name}.fit")
        trainer = trainer or Trainer()
        self.init_training(self.n_features_, trainer.seed)
        self.run_plan(X, trainer)
        return self

    def plan(self, n_rows: int) -> list[Phase]:
        """One phase: epochs x ceil(N / batch) steps, one loss call per step."""
        return [Phase("train", self.epochs * math.ceil(n_rows / min(self.batch_size, n_rows)), self.batch_size)]

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Decoder means sigmoid(dec(z)), z ~ N(0, I) drawn from `generator` (the repo's generate())."""
        self._check_fitted()
        net = self.modules_["vae"].eval()
        device = next(net.parameters()).device
        out = [torch.sigmoid(net.decode_logits(torch.randn(min(self.sample_batch_size, n - s), self.latent_dim,
                                                           generator=generator).to(device))).cpu()
               for s in range(0, n, self.sample_batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.n_features_)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        check_binarize(self.binarize, self.name)
        g = torch.Generator().manual_seed(int(seed))
        return self._finish(binarize(self.generate(n, g), self.binary_mask, self.binarize, g))
