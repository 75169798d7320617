"""CorGAN (Torfi & Fox, FLAIRS 2020): 1-D convolutional autoencoder + weight-clipped WGAN, medGAN's two-phase recipe."""
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

# wgancnnmimic.py Autoencoder: (kernel, stride) of the encoder's first five Conv1d layers and of the decoder's six
# ConvTranspose1d layers (padding 0, dilation 1). The encoder's sixth Conv1d has stride 1 and kernel 8, which maps
# MIMIC's 1071 columns to one position; the decoder maps one position back to exactly 1071.
ENCODER = ((5, 2), (5, 2), (5, 3), (5, 3), (5, 3))
DECODER = ((5, 1), (5, 4), (7, 4), (7, 3), (7, 2), (3, 2))
OFFICIAL_WIDTH = 1071


def decoder_length(m: int) -> int:
    """Output length of the transposed-conv decoder for an embedding of m positions (m = 1 -> 1071)."""
    for k, s in DECODER:
        m = (m - 1) * s + k
    return m


def encoder_length(p: int) -> int:
    """Length after the encoder's first five convolutions for an input of p columns (1071 -> 8)."""
    for k, s in ENCODER:
        p = (p - k) // s + 1
    return p


def conv_geometry(d: int) -> tuple[int, int, int]:
    """(m, P, k): embedding positions m, padded width P = decoder_length(m) >= d, last encoder kernel k.

    Deviation (generalises the MIMIC-only arithmetic): records are zero-padded on the right to P and the decoder
    output is cropped back to d. m = 1 for d <= 1071 (P = 1071, k = 8: the official network unchanged); a wider d
    takes the smallest m with decoder_length(m) >= d and k = encoder_length(P) - m + 1, so the encoder returns m
    positions, which the decoder maps back to exactly P.
    """
    m = 1
    while decoder_length(m) < d:
        m += 1
    p = decoder_length(m)
    return m, p, encoder_length(p) - m + 1


def official_init_(module: nn.Module) -> None:
    """wgancnnmimic.py weights_init: conv weights N(0, 0.02) (bias left at torch's default), batch-norm scale
    N(1, 0.02) and offset 0, linear weights glorot-uniform with bias 0.01."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.constant_(m.bias, 0.01)


# wgancnnmimic.py Autoencoder (n_channels_base b = 4): encoder 1 -> b -> 2b -> 4b -> 8b -> 16b -> 32b channels,
# LeakyReLU(0.2) after each of the first five convolutions, batch norm after convolutions 2-5, tanh at the end;
# decoder 32b -> 16b (ReLU) -> 8b -> 4b -> 2b -> b (batch norm + ReLU each) -> 1 channel (sigmoid, applied by the caller).
class ConvAutoencoder(nn.Module):
    def __init__(self, n_features: int, base: int) -> None:
        super().__init__()
        self.n_features = n_features
        self.positions, self.padded, k_last = conv_geometry(n_features)
        chans = [1, base, 2 * base, 4 * base, 8 * base, 16 * base]
        enc: list[nn.Module] = []
        for i, (k, s) in enumerate(ENCODER):
            enc.append(nn.Conv1d(chans[i], chans[i + 1], k, stride=s))
            if i > 0:
                enc.append(nn.BatchNorm1d(chans[i + 1]))
            enc.append(nn.LeakyReLU(0.2))
        enc += [nn.Conv1d(16 * base, 32 * base, k_last, stride=1), nn.Tanh()]
        self.encoder = nn.Sequential(*enc)
        out = [32 * base, 16 * base, 8 * base, 4 * base, 2 * base, base, 1]
        dec: list[nn.Module] = []
        for i, (k, s) in enumerate(DECODER):
            dec.append(nn.ConvTranspose1d(out[i], out[i + 1], k, stride=s))
            if 0 < i < len(DECODER) - 1:
                dec.append(nn.BatchNorm1d(out[i + 1]))
            if i < len(DECODER) - 1:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) records -> (B, 32b, m) embedding; the records are zero-padded to P columns (deviation, above)."""
        return self.encoder(F.pad(x, (0, self.padded - self.n_features)).unsqueeze(1))

    def decode_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, 32b, m) embedding -> (B, d) logits of the sigmoid output, cropped from P to d columns."""
        return self.decoder(h)[:, 0, : self.n_features]


# wgancnnmimic.py Generator: h1 = z + ReLU(BN(W1 z + b1)), out = h1 + tanh(BN(W2 h1 + b2)), all of width 128,
# BN eps 1e-3, momentum 0.01 (torch convention). Width = latent_dim x m (m = 1 up to 1071 columns; deviation above).
class ResidualGenerator(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.linear1, self.linear2 = nn.Linear(width, width), nn.Linear(width, width)
        self.bn1 = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01)
        self.bn2 = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z + torch.relu(self.bn1(self.linear1(z)))
        return h + torch.tanh(self.bn2(self.linear2(h)))


# wgancnnmimic.py Discriminator: d (2d with minibatch averaging, off by default) -> 256 -> 256 -> 256 (ReLU) -> 1,
# a linear critic output (no sigmoid).
class Critic(nn.Module):
    def __init__(self, n_features: int, dims: Sequence[int], minibatch_averaging: bool) -> None:
        super().__init__()
        self.minibatch_averaging = minibatch_averaging
        sizes = [n_features * (2 if minibatch_averaging else 1), *dims]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.minibatch_averaging:
            x = torch.cat([x, x.mean(0, keepdim=True).expand_as(x)], dim=1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x).squeeze(1)


# Torfi & Fox, "CorGAN: Correlation-Capturing Convolutional Generative Adversarial Networks for Generating Synthetic
# Healthcare Records", FLAIRS 2020; official code astorfi/cor-gan Generative/corGAN/pytorch/CNN/MIMIC/wgancnnmimic.py.
@register_synthesizer("corgan")
class CorGAN(TorchSynthesizer):
    """CorGAN: phase "pretrain" fits the 1-D convolutional autoencoder (keys ["ae"], BCE summed over features),
    then a weight-clipped WGAN: phase "critic_warmup" (the first `warmup_steps` generator updates, each after
    `warmup_d_updates` critic updates) and phase "gan" (`d_updates` critic updates per generator update). The
    generator's 128-d output is the (128 channels x 1 position) embedding, decoded by the pretrained decoder, which
    the G optimiser fine-tunes at `decoder_lr`. Critic loss E[D(x)] - E[D(G(z))], generator loss E[D(G(z))] (the
    official sign convention), critic weights clamped to [-clip_value, clip_value] before every critic update.
    Adam (0.9, 0.999) with coupled weight decay 1e-4 for all three optimisers. Binary columns are thresholded at
    0.5 (the official generate step; `binarize: bernoulli` draws them); continuous columns ([0, 1]) are the sigmoid.

    Deviations from the official script (also noted where they happen):
    - any width d: zero-padding to the conv stack's width and cropping the decoder output (`conv_geometry`); above
      1071 columns the embedding has m > 1 positions, the last encoder kernel shrinks/grows to fit, and the
      generator is latent_dim x m wide;
    - the official critic schedule also gives 100 critic updates at every 500th generator update; only the first
      25 (phase "critic_warmup") are kept, since one-step phases cannot be scaled by the fraction/compute budgets;
    - batches come from the trainer's seeded per-epoch permutation without replacement, every loss call on its own
      batch, ceil(N / batch) generator updates per epoch (the official loader samples with replacement, drops the
      last partial batch, and the critic updates of one generator update share one real batch);
    - a 1-record batch (kept by the trainer) draws 2 noise rows, since the generator's batch norm needs two;
    - BCE from logits (stable) instead of log(sigmoid + 1e-12); no 80/20 train/test split (EHRData has its own).
    DP is refused (`dp_refusal`): the official critic has neither batch norm nor (by default) minibatch averaging,
    but the autoencoder reads the records with batch norm and its decoder is released as part of the generator.
    """
    # DP (trainer.dp) is refused: DP-SGD needs a loss that is a mean of per-record terms
    dp_refusal = ("its autoencoder is pretrained on the records with batch norm in encoder and decoder (the batch "
                  "statistics couple the records, so its gradients have no per-record form for DP-SGD), and that "
                  "decoder is part of the released generator; use emrwgan (DP on the critic), vae or ehrdiff")

    def __init__(self, latent_dim: int = 128, n_channels_base: int = 4,
                 discriminator_dims: tuple[int, ...] = (256, 256, 256), minibatch_averaging: bool = False,
                 lr: float = 1e-3, decoder_lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.999,
                 weight_decay: float = 1e-4, clip_value: float = 0.01, batch_size: int = 512,
                 pretrain_epochs: int = 1, epochs: int = 100, d_updates: int = 5, warmup_d_updates: int = 100,
                 warmup_steps: int = 25, binarize: str = "threshold") -> None:
        self.latent_dim = latent_dim
        self.n_channels_base = n_channels_base
        self.discriminator_dims = discriminator_dims
        self.minibatch_averaging = minibatch_averaging
        self.lr = lr
        self.decoder_lr = decoder_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.weight_decay = weight_decay
        self.clip_value = clip_value
        self.batch_size = batch_size
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.d_updates = d_updates
        self.warmup_d_updates = warmup_d_updates
        self.warmup_steps = warmup_steps
        self.binarize = binarize

    # ---- TorchSynthesizer hooks ------------------------------------------------------------------
    def _check_params(self) -> None:
        check_binarize(self.binarize, self.name)
        if self.latent_dim != 32 * self.n_channels_base:
            raise ValueError(f"corgan: the residual generator's output is the decoder's input, so latent_dim must equal "
                             f"32 x n_channels_base, got latent_dim={self.latent_dim}, n_channels_base="
                             f"{self.n_channels_base}")

    def build(self, n_features: int) -> nn.ModuleDict:
        self._check_params()
        m = conv_geometry(n_features)[0]
        modules = nn.ModuleDict({"ae": ConvAutoencoder(n_features, self.n_channels_base),
                                 "gen": ResidualGenerator(self.latent_dim * m),
                                 "disc": Critic(n_features, self.discriminator_dims, self.minibatch_averaging)})
        official_init_(modules)
        return modules

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        kw = dict(betas=(self.beta1, self.beta2), weight_decay=self.weight_decay)
        mods = self.modules_
        # optimizer_G: the generator at lr, the decoder at decoder_lr (two parameter groups), as in the official code.
        g_groups = [{"params": list(mods["gen"].parameters())},
                    {"params": list(mods["ae"].decoder.parameters()), "lr": self.decoder_lr}]
        return {"ae": torch.optim.Adam(mods["ae"].parameters(), lr=self.lr, **kw),
                "d": torch.optim.Adam(mods["disc"].parameters(), lr=self.lr, **kw),
                "g": torch.optim.Adam(g_groups, lr=self.lr, **kw)}

    def decode(self, h: torch.Tensor, modules: nn.ModuleDict | None = None) -> torch.Tensor:
        """Generator output (B, latent_dim x m) -> records (B, d): reshaped to (B, 32b, m), decoded, sigmoid."""
        ae = (self.modules_ if modules is None else modules)["ae"]
        return torch.sigmoid(ae.decode_logits(h.view(len(h), 32 * self.n_channels_base, -1)))

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """ae: BCE summed over features, mean over the batch; d: E[D(x)] - E[D(G(z))] after clamping the critic;
        g: E[D(G(z))]. Noise comes from torch's global RNG; weight decay lives in the optimisers (Adam's)."""
        ae, gen, disc = self.modules_["ae"], self.modules_["gen"], self.modules_["disc"]
        if key == "ae":
            # Deviation: BCE from logits (the stable form) instead of log(sigmoid + 1e-12).
            return F.binary_cross_entropy_with_logits(ae.decode_logits(ae.encode(x)), x, reduction="none").sum(1).mean()
        # Deviation: a 1-record batch (the trainer keeps the last partial batch; the official loader drops it) draws
        # 2 noise rows, since the generator's batch norm needs two in training mode.
        z = torch.randn(max(len(x), 2), gen.width, device=x.device)
        if key == "d":
            with torch.no_grad():
                for p in disc.parameters():  # the official clamp at the start of every critic iteration
                    p.clamp_(-self.clip_value, self.clip_value)
                # generator and decoder stay in training mode (batch statistics, running averages updated) as in
                # the official critic step
                fake = self.decode(gen(z))
            return disc(x).mean() - disc(fake).mean()
        if key == "g":
            return disc(self.decode(gen(z))).mean()
        raise KeyError(f"corgan: no loss '{key}'; valid choices: ae, d, g")

    # ---- fit / sample ----------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "CorGAN":
        X = self._prepare_fit(data)
        self._check_params()
        check_unit_interval(X, self.kinds_, self.columns_, f"{self.name}.fit")
        trainer = trainer or Trainer()
        self.init_training(self.n_features_, trainer.seed)
        self.run_plan(X, trainer)
        return self

    def plan(self, n_rows: int) -> list[Phase]:
        """pretrain_epochs x ceil(N / batch) autoencoder steps; epochs x ceil(N / batch) generator steps, the first
        warmup_steps with warmup_d_updates critic updates each, the rest with d_updates."""
        self._check_params()
        n, bs = n_rows, self.batch_size
        per_epoch = math.ceil(n / min(bs, n))
        total = self.epochs * per_epoch
        warm = min(self.warmup_steps, total)
        phases = []
        if self.pretrain_epochs:
            phases.append(Phase("pretrain", self.pretrain_epochs * per_epoch, bs, ("ae",)))
        if warm:
            phases.append(Phase("critic_warmup", warm, bs, ("d",) * self.warmup_d_updates + ("g",)))
        if total > warm:
            phases.append(Phase("gan", total - warm, bs, ("d",) * self.d_updates + ("g",)))
        return phases

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Decoder outputs for z ~ N(0, I) from `generator`, generator and decoder in inference mode (running BN
        statistics), in batches of batch_size (the official generate step)."""
        self._check_fitted()
        mods = self.sampling_modules()
        mods.eval()
        gen = mods["gen"]
        device = next(gen.parameters()).device
        bs = self.batch_size
        out = [self.decode(gen(torch.randn(min(bs, n - s), gen.width, generator=generator).to(device)), mods).cpu()
               for s in range(0, n, bs)]
        return torch.cat(out) if out else torch.zeros(0, self.n_features_)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Binary columns: 1[p >= 0.5] (default, official) or Bernoulli; continuous columns: the sigmoid output."""
        self._check_params()
        g = torch.Generator().manual_seed(int(seed))
        return self._finish(binarize(self.generate(n, g), self.binary_mask, self.binarize, g))
