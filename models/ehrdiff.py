"""EHRDiff (Yuan, Zhou & Yu, TMLR 2024): EDM-preconditioned MLP denoiser on raw {0,1} EHR vectors, Heun sampler."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .base import TorchSynthesizer, register_synthesizer
from .budget import Phase
from .ehrdiff_net import LinearModel
from .trainer import Trainer


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


class SamplerDenoiser:
    """The sampler's network call, D(x; sigma | y) with guidance, torch.compile'd when the run compiles
    (`compile_sampler`, set by the Trainer from trainer.compile: trainer=fast on CUDA). The Heun loop and its
    float64 state stay outside the compiled graph, as in the official sampler; the network runs in float32 either
    way (the official net casts to float32 too), so compiling changes only the kernels. A backend that fails here
    warns once and the sampler runs eagerly from the same inputs."""

    def __init__(self, synth: "EHRDiff", net: nn.Module) -> None:
        self.synth, self.net = synth, net
        self.compiled = None
        if getattr(synth, "compile_sampler", False):
            from .step import COMPILE_BACKEND
            self.compiled = torch.compile(self._eager, backend=COMPILE_BACKEND, dynamic=False)

    def _eager(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.synth.guided_denoise(self.net, x, sigma, labels)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x, sigma, labels)
            except Exception as e:  # no compiler, no triton, an unsupported op
                import warnings
                first = (str(e).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"{self.synth.name}: torch.compile failed for the sampler ({type(e).__name__}: {first}); "
                              "sampling eagerly", RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self._eager(x, sigma, labels)


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

    Label conditioning with classifier-free guidance (the official `use_cfg`, configs/cinc/cfg/): `cond_label`
    (true = the data's first label column, or a column name) takes that binary column out of the diffused vector
    and feeds it as a class label; in training the label is replaced by the "no label" class with probability
    `label_dropout` (0.1, score_losses.py); sampling draws exactly round(p n) records with label 1 (p =
    `label_prevalence`, null = the training prevalence) and guides with D = (1 + w) D(x | y) - w D(x | none),
    w = `guidance_scale` (0 = conditional only, as in the official sample_cfg.yaml). Deviations: the official
    runner reads the label from the column after the stripped one (`raw_data = raw_data[:, 1:]; labels =
    raw_data[:, 0]`), here the label column itself is the label; the official sampler draws labels uniformly
    (`labels: 2`), here at the requested prevalence, so the synthetic data keep the real class balance; the stale
    cfg config's lr 1e-4 and seed 2023 are not taken over, so that a conditional run differs from the
    unconditional one in the conditioning only.
    """

    row_reduction = "mean"  # loss: mean over rows of a per-row EDM term (ghost clipping, K copies, torchrun)
    # read only by the sampler: a trained run may be resampled with other values (resample_from, models/resample.py)
    sampling_params = ("guidance_scale", "label_prevalence", "num_steps", "rho", "sample_batch_size")

    def __init__(self, sigma_data: float = 0.14, p_mean: float = -1.2, p_std: float = 1.2,
                 unit_dims: tuple[int, ...] = (1024, 384, 384, 384, 1024), time_dim: int = 384,
                 lr: float = 3e-4, weight_decay: float = 0.0, batch_size: int = 1024, epochs: int = 5000,
                 warmup_steps: int = 20000, ema_decay: float = 0.999, num_steps: int = 32, sigma_min: float = 0.02,
                 sigma_max: float = 80.0, rho: float = 7.0, sample_batch_size: int = 4096,
                 random_fourier_features: bool = False, learned_sinusoidal_dim: int = 32,
                 warmup_fraction: float | None = None, cond_label: bool | str = False, guidance_scale: float = 0.0,
                 label_dropout: float = 0.1, class_dim: int = 128, label_prevalence: float | None = None) -> None:
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
        self.cond_label = cond_label
        self.guidance_scale = guidance_scale
        self.label_dropout = label_dropout
        self.class_dim = class_dim
        self.label_prevalence = label_prevalence

    # ---- TorchSynthesizer hooks ------------------------------------------------------------------
    def build(self, n_features: int) -> nn.ModuleDict:
        self._check_cond_params()
        cond = self.cond_label is not False
        return nn.ModuleDict({"net": LinearModel(n_features - cond, tuple(self.unit_dims), self.time_dim,
                                                 bool(self.random_fourier_features), int(self.learned_sinusoidal_dim),
                                                 n_classes=2 if cond else 0, class_dim=int(self.class_dim))})

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.AdamW(self.modules_["net"].parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    def lr_scale(self, step: int, total: int) -> float:
        """HF get_cosine_schedule_with_warmup: linear warm-up, then half-cosine from 1 to 0 at `total`."""
        warmup = self.warmup_steps if self.warmup_fraction is None else round(self.warmup_fraction * total)
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def denoise(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma[, label]) = c_skip x + c_out F(c_in x, c_noise[, label]), network in float32 (official denoiser)."""
        sigma = sigma.reshape(-1, 1).to(torch.float32)
        x = x.to(torch.float32)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        return c_skip * x + c_out * net(c_in * x, c_noise.flatten(), labels)

    def guided_denoise(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                       labels: torch.Tensor | None) -> torch.Tensor:
        """samplers.py::guidance_wrapper: (1 + w) D(x | y) - w D(x | no label) for w > 0, else D(x | y)."""
        w = float(self.guidance_scale)
        if labels is None or w <= 0:
            return self.denoise(net, x, sigma, labels)
        both = self.denoise(net, torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, torch.full_like(labels, 2)]))
        cond, uncond = both.chunk(2)
        return (1 + w) * cond - w * uncond

    def split_label(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A conditional model trains on [features | label] rows (fit puts the label last): (features, labels)."""
        if self.cond_label is False:
            return x, None
        return x[:, :-1], x[:, -1].round().long()

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """EDM loss: ln sigma ~ N(p_mean, p_std^2); lambda(sigma) = (sigma^2 + s_d^2)/(sigma s_d)^2; mean over features.

        Conditional: labels dropped to the "no label" class with probability label_dropout (score_losses.py)."""
        x, labels = self.split_label(x)
        if labels is not None:
            drop = torch.rand(len(labels), device=x.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, 2), labels)
        sigma = (torch.randn(len(x), 1, device=x.device) * self.p_std + self.p_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        noisy = x + torch.randn_like(x) * sigma
        D = self.denoise(self.modules_["net"], noisy, sigma, labels)
        return (weight * (D - x) ** 2).mean(dim=1).mean()

    # ---- label conditioning ----------------------------------------------------------------------
    def _check_cond_params(self) -> None:
        self._check_ranges()  # label_dropout, guidance_scale, label_prevalence: they may be set after fit
        if not isinstance(self.cond_label, (bool, str)):
            raise ValueError(f"ehrdiff: cond_label must be true, false or a column name, got {self.cond_label!r}")

    def _cond_column(self, data) -> int:
        """Index of the conditioning label column (cond_label true: the data's first label column)."""
        from ehrbench.data import EHRData

        if not isinstance(data, EHRData):
            raise ValueError("ehrdiff: cond_label needs an EHRData with label columns, not a bare matrix")
        name = self.cond_label if isinstance(self.cond_label, str) else (data.label_columns or (None,))[0]
        if name is None:
            raise ValueError(f"ehrdiff: cond_label=true but dataset {data.name} has no label column; name one of "
                             f"its binary columns, e.g. cond_label={data.columns[0]}")
        if name not in data.columns:
            raise ValueError(f"ehrdiff: cond_label column {name!r} is not in dataset {data.name}; valid choices: "
                             f"{', '.join(c for c, k in zip(data.columns, data.kinds) if k == 'binary')}")
        j = data.columns.index(name)
        if data.kinds[j] != "binary":
            raise ValueError(f"ehrdiff: cond_label column {name!r} is continuous; conditioning needs a binary label")
        return j

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = super().state_tensors()
        if self.cond_label is not False:
            state["cond.index"] = torch.tensor(self.cond_index_)
            state["cond.prevalence"] = torch.tensor(self.train_prevalence_, dtype=torch.float64)
        return state

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        if self.cond_label is not False:
            self.cond_index_ = int(state["cond.index"])
            self.train_prevalence_ = float(state["cond.prevalence"])
        super().load_state_tensors({k: v for k, v in state.items() if not k.startswith("cond.")})

    # ---- fit / sample ----------------------------------------------------------------------------
    def fit(self, data, trainer=None) -> "EHRDiff":
        X = self._prepare_fit(data)
        self._check_cond_params()
        if self.cond_label is not False:  # the label goes last: the trainer's batches are [features | label]
            j = self._cond_column(data)
            self.cond_index_, self.train_prevalence_ = j, float(X[:, j].mean())
        X = self.model_rows(X)
        trainer = trainer or Trainer()
        self.init_training(self.n_features_, trainer.seed)
        self.run_plan(X, trainer)
        return self

    def model_rows(self, X: np.ndarray) -> np.ndarray:
        """A conditional model's rows are [features | label]: the label column moved last."""
        if self.cond_label is False:
            return super().model_rows(X)
        j = self.cond_index_
        return np.ascontiguousarray(np.concatenate([np.delete(X, j, axis=1), X[:, [j]]], axis=1), dtype=np.float32)

    def plan(self, n_rows: int) -> list[Phase]:
        """One phase: epochs x ceil(N / batch) steps (drop_last=False), one loss call per step."""
        return [Phase("train", self.epochs * math.ceil(n_rows / min(self.batch_size, n_rows)), self.batch_size, ("net",))]

    def sample_labels(self, n: int, g: torch.Generator) -> torch.Tensor | None:
        """Exactly round(p n) ones in random order (p = label_prevalence or the training prevalence); None if unconditional."""
        if self.cond_label is False:
            return None
        p = self.train_prevalence_ if self.label_prevalence is None else float(self.label_prevalence)
        labels = (torch.arange(n) < round(p * n)).long()
        return labels[torch.randperm(n, generator=g)]

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0) -> np.ndarray:
        """Deterministic Heun sampler (EDM Alg. 1) with float64 state; returns the raw continuous output (for a
        conditional model: the sampled features with the drawn label put back in its column)."""
        self._check_fitted()
        net = self.sampling_modules()["net"].eval()
        device = next(net.parameters()).device
        steps = torch.as_tensor(edm_sigma_steps(self.num_steps, self.sigma_min, self.sigma_max, self.rho),
                                dtype=torch.float64, device=device)
        g = torch.Generator().manual_seed(int(seed))
        labels = self.sample_labels(n, g)
        width = self.n_features_ - (labels is not None)
        denoise = SamplerDenoiser(self, net)
        out = []
        for start in range(0, n, self.sample_batch_size):
            b = min(self.sample_batch_size, n - start)
            y = None if labels is None else labels[start:start + b].to(device)
            x = torch.randn(b, width, generator=g, dtype=torch.float64).to(device) * steps[0]
            for i in range(self.num_steps):
                t_cur, t_next = steps[i], steps[i + 1]
                d = (x - denoise(x, t_cur.expand(b), y).double()) / t_cur
                x_next = x + (t_next - t_cur) * d
                if i < self.num_steps - 1:  # Heun correction except on the final step to sigma = 0
                    d2 = (x_next - denoise(x_next, t_next.expand(b), y).double()) / t_next
                    x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
                x = x_next
            out.append(x.cpu().numpy())
        x = np.concatenate(out) if out else np.zeros((0, width))
        return x if labels is None else np.insert(x, self.cond_index_, labels.numpy().astype(np.float64), axis=1)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Binary columns: rint(clip(x, 0, 1)) (generate_base.py); continuous columns: clip(x, 0, 1) (CinC setting)."""
        x = np.clip(self.generate(n, seed), 0.0, 1.0)
        b = self.binary_mask
        x[:, b] = np.rint(x[:, b])
        return self._finish(x)
