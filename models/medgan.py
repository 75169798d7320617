"""medGAN (Choi et al., MLHC 2017): pretrained autoencoder, residual BN generator, minibatch-averaging discriminator."""
from __future__ import annotations

import copy
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

DATA_TYPES = ("binary", "count")


def tf_glorot_(layer: nn.Linear) -> nn.Linear:
    """TF1 tf.get_variable's default initialiser: glorot-uniform weights and, for the 1-D bias, U(+-sqrt(3/n))."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        bound = math.sqrt(3.0 / layer.bias.numel())
        nn.init.uniform_(layer.bias, -bound, bound)
    return layer


# medgan.py buildAutoencoder: encoder d -> compress_dims -> embedding (aeActivation after every layer), decoder
# embedding -> decompress_dims (aeActivation) -> d; the output activation (sigmoid/ReLU) is applied by the caller.
class Autoencoder(nn.Module):
    def __init__(self, n_features: int, compress_dims: Sequence[int], embedding_dim: int,
                 decompress_dims: Sequence[int], activation: str) -> None:
        super().__init__()
        self.act = torch.tanh if activation == "tanh" else torch.relu
        enc = [n_features, *compress_dims, embedding_dim]
        dec = [embedding_dim, *decompress_dims, n_features]
        self.encoder = nn.ModuleList(tf_glorot_(nn.Linear(a, b)) for a, b in zip(enc[:-1], enc[1:]))
        self.decoder = nn.ModuleList(tf_glorot_(nn.Linear(a, b)) for a, b in zip(dec[:-1], dec[1:]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            x = self.act(layer(x))
        return x

    def decode_pre(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder output before its final activation (logits in binary mode)."""
        for layer in self.decoder[:-1]:
            h = self.act(layer(h))
        return self.decoder[-1](h)


# medgan.py buildGenerator: per layer h <- h + act(BN(W h)), W without bias, BN(decay .99, eps 1e-3, scale);
# act = ReLU for the hidden layers, tanh (binary) / ReLU (count) for the last (embedding) layer.
class ResidualGenerator(nn.Module):
    def __init__(self, noise_dim: int, dims: Sequence[int], bn_decay: float, bn_eps: float, last: str) -> None:
        super().__init__()
        self.last = torch.tanh if last == "tanh" else torch.relu
        sizes = [noise_dim, *dims]
        self.linears = nn.ModuleList(tf_glorot_(nn.Linear(a, b, bias=False)) for a, b in zip(sizes[:-1], sizes[1:]))
        # PyTorch momentum = 1 - TF decay (running = (1 - m) running + m batch).
        self.norms = nn.ModuleList(nn.BatchNorm1d(d, eps=bn_eps, momentum=1.0 - bn_decay) for d in dims)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        n = len(self.linears)
        for i, (lin, bn) in enumerate(zip(self.linears, self.norms)):
            out = bn(lin(h))
            h = h + (self.last(out) if i == n - 1 else torch.relu(out))
        return h


# medgan.py getDiscriminatorResults: minibatch averaging (the batch mean tiled and concatenated to every sample,
# input 2d), ReLU hidden layers, one sigmoid output (returned here as a logit). Dropout is omitted: the original
# feeds keep_prob = 1.0 in every call, so it never drops anything.
class MinibatchDiscriminator(nn.Module):
    def __init__(self, n_features: int, dims: Sequence[int]) -> None:
        super().__init__()
        sizes = [2 * n_features, *dims]
        self.hidden = nn.ModuleList(tf_glorot_(nn.Linear(a, b)) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = tf_glorot_(nn.Linear(sizes[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, x.mean(0, keepdim=True).expand_as(x)], dim=1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h).squeeze(1)


def l2_penalty(params, scale: float) -> torch.Tensor:
    """TF l2_regularizer(scale) summed over variables: scale * sum(w^2) / 2 (tf.nn.l2_loss halves)."""
    return scale * 0.5 * sum(p.pow(2).sum() for p in params)


# Choi, Biswal, Malin, Duke, Stewart & Sun, "Generating Multi-label Discrete Patient Records using Generative
# Adversarial Networks", MLHC 2017; defaults of the official mp2893/medgan medgan.py CLI.
@register_synthesizer("medgan")
class MedGAN(TorchSynthesizer):
    """medGAN: phase "pretrain" fits the autoencoder (keys ["ae"]), phase "gan" trains discriminator and generator
    (keys ["d"] * d_updates + ["g"]); the generator's 128-d output goes through the pretrained decoder, which
    the G optimiser fine-tunes together with the generator.

    `data_type` "binary": tanh AE/generator-output activations, sigmoid decoder + BCE; "count": ReLU everywhere
    and MSE (the original's count mode). It is a hyperparameter, so the saved config keeps it and sampling never
    reverts to binary (medgan issue #3). Continuous columns (scaled to [0, 1] in binary mode, >= 0 in count
    mode) are returned as the decoder output, never binarised.

    Deviations from the original (also noted where they happen): batches are drawn by the trainer's seeded
    per-epoch permutation (the original draws each discriminator batch with np.random.choice and pretrains
    on int(N/100) batches per epoch; its per-epoch validation monitor also overwrites the training index, so from
    epoch 1 on it draws only among the first len(valid) training rows); no 10% validation split (EHRData has its own holdout); the GAN losses are
    computed from logits (the stable form of -log(sigmoid) without the 1e-12 epsilon); binary columns are
    thresholded at 0.5 (`binarize: threshold`, the paper's rule; the original code saves probabilities) or
    drawn (`binarize: bernoulli`).
    """
    # DP (trainer.dp) is refused: DP-SGD needs a loss that is a mean of per-record terms
    dp_refusal = ("its discriminator's minibatch averaging (the batch mean concatenated to every record) and its "
                  "generator's batch norm ('gen.norms') couple the records of a batch, so its gradients have no "
                  "per-record form for DP-SGD; use emrwgan (DP on the critic), vae or ehrdiff for private runs")

    def __init__(self, data_type: str = "binary", embedding_dim: int = 128, noise_dim: int = 128,
                 generator_dims: tuple[int, ...] = (128, 128), discriminator_dims: tuple[int, ...] = (256, 128),
                 compress_dims: tuple[int, ...] = (), decompress_dims: tuple[int, ...] = (), bn_decay: float = 0.99,
                 bn_eps: float = 1e-3, l2: float = 1e-3, lr: float = 1e-3, pretrain_epochs: int = 100,
                 pretrain_batch_size: int = 100, epochs: int = 1000, batch_size: int = 1000, d_updates: int = 2,
                 burn_in_batches: int = 1000, sample_batch_size: int = 1000, binarize: str = "threshold") -> None:
        self.data_type = data_type
        self.embedding_dim = embedding_dim
        self.noise_dim = noise_dim
        self.generator_dims = generator_dims
        self.discriminator_dims = discriminator_dims
        self.compress_dims = compress_dims
        self.decompress_dims = decompress_dims
        self.bn_decay = bn_decay
        self.bn_eps = bn_eps
        self.l2 = l2
        self.lr = lr
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_batch_size = pretrain_batch_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.d_updates = d_updates
        self.burn_in_batches = burn_in_batches
        self.sample_batch_size = sample_batch_size
        self.binarize = binarize

    # ---- TorchSynthesizer hooks ------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"medgan: unknown data_type '{self.data_type}'; valid choices: {', '.join(DATA_TYPES)}")
        check_binarize(self.binarize, self.name)
        widths = [*self.generator_dims, self.embedding_dim]
        if any(w != self.noise_dim for w in widths):
            raise ValueError(f"medgan: the residual generator needs noise_dim, every generator_dims entry and "
                             f"embedding_dim equal, got noise_dim={self.noise_dim}, generator_dims="
                             f"{list(self.generator_dims)}, embedding_dim={self.embedding_dim}")

    def build(self, n_features: int) -> nn.ModuleDict:
        self._check_params()
        binary = self.data_type == "binary"
        return nn.ModuleDict({
            "ae": Autoencoder(n_features, self.compress_dims, self.embedding_dim, self.decompress_dims,
                              "tanh" if binary else "relu"),
            "gen": ResidualGenerator(self.noise_dim, [*self.generator_dims, self.embedding_dim], self.bn_decay,
                                     self.bn_eps, "tanh" if binary else "relu"),
            "disc": MinibatchDiscriminator(n_features, self.discriminator_dims),
        })

    def _g_params(self) -> list[nn.Parameter]:
        """The G optimiser's variables: generator + decoder (medgan.py: var_list=g_vars + decodeVariables)."""
        return [*self.modules_["gen"].parameters(), *self.modules_["ae"].decoder.parameters()]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        # TF AdamOptimizer() defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8; one optimiser (own moments) each.
        return {"ae": torch.optim.Adam(self.modules_["ae"].parameters(), lr=self.lr),
                "d": torch.optim.Adam(self.modules_["disc"].parameters(), lr=self.lr),
                "g": torch.optim.Adam(self._g_params(), lr=self.lr)}

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder output: sigmoid (binary) or ReLU (count) of the last layer."""
        pre = self.modules_["ae"].decode_pre(h)
        return torch.sigmoid(pre) if self.data_type == "binary" else torch.relu(pre)

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """Every loss adds the L2 term over the variables its optimiser updates (weights, biases, BN scale/offset:
        TF's l2_regularizer on the variable scope, as a loss term). GAN noise comes from torch's global RNG."""
        ae, gen, disc = self.modules_["ae"], self.modules_["gen"], self.modules_["disc"]
        if key == "ae":
            pre = ae.decode_pre(ae.encode(x))
            if self.data_type == "binary":  # sum of BCE over features, mean over the batch
                rec = F.binary_cross_entropy_with_logits(pre, x, reduction="none").sum(1).mean()
            else:
                rec = ((x - torch.relu(pre)) ** 2).mean()
            return rec + l2_penalty(ae.parameters(), self.l2)
        z = torch.randn(len(x), self.noise_dim, device=x.device)
        if key == "d":
            # The original runs the discriminator step with bn_train=False: the generator's BN uses its moving
            # averages here, and only the generator step (bn_train=True) uses and updates batch statistics.
            with torch.no_grad():
                mode = gen.training
                fake = self.decode(gen.eval()(z))
                gen.train(mode)
            # -log D(x) - log(1 - D(G(z))) with D = sigmoid(logit): softplus(-l_real) + softplus(l_fake)
            loss = F.softplus(-disc(x)).mean() + F.softplus(disc(fake)).mean()
            return loss + l2_penalty(disc.parameters(), self.l2)
        if key == "g":
            loss = F.softplus(-disc(self.decode(gen(z)))).mean()  # non-saturating -log D(G(z))
            return loss + l2_penalty(self._g_params(), self.l2)
        raise KeyError(f"medgan: no loss '{key}'; valid choices: ae, d, g")

    # ---- fit / sample ----------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "MedGAN":
        X = self._prepare_fit(data)
        self._check_params()
        if self.data_type == "binary":
            check_unit_interval(X, self.kinds_, self.columns_, f"{self.name}.fit")
        elif (X < 0).any():
            i, j = np.argwhere(X < 0)[0]
            raise ValueError(f"{self.name}.fit: negative value {X[i, j]} in row {i}, column {self.columns_[j]!r}; "
                             "data_type=count needs non-negative counts")
        trainer = trainer or Trainer()
        self.init_training(self.n_features_, trainer.seed)
        self.run_plan(X, trainer)
        return self

    def plan(self, n_rows: int) -> list[Phase]:
        """Autoencoder pre-training, then the GAN phase (G steps; each with d_updates D steps first)."""
        n = n_rows
        return [Phase("pretrain", self.pretrain_epochs * math.ceil(n / min(self.pretrain_batch_size, n)),
                      self.pretrain_batch_size, ("ae",)),
                Phase("gan", self.epochs * math.ceil(n / min(self.batch_size, n)), self.batch_size,
                      ("d",) * self.d_updates + ("g",))]

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """medgan.py generateData: `burn_in_batches` noise batches through the generator with BN in training mode
        (settling its moving averages), then sampling with BN in inference mode. The burn-in runs on a copy of
        the generator, so the model's state is unchanged and sample(n, seed) depends only on (state, seed)."""
        self._check_fitted()
        gen = copy.deepcopy(self.modules_["gen"]).train()
        device = next(gen.parameters()).device
        bs = self.sample_batch_size
        for _ in range(self.burn_in_batches):
            gen(torch.randn(bs, self.noise_dim, generator=generator).to(device))
        gen.eval()
        out = [self.decode(gen(torch.randn(min(bs, n - s), self.noise_dim, generator=generator).to(device))).cpu()
               for s in range(0, n, bs)]
        return torch.cat(out) if out else torch.zeros(0, self.n_features_)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Binary columns: threshold at 0.5 (default) or Bernoulli; continuous/count columns: the decoder output."""
        self._check_params()
        g = torch.Generator().manual_seed(int(seed))
        return self._finish(binarize(self.generate(n, g), self.binary_mask, self.binarize, g))
