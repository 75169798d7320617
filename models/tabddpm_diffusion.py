"""TabDDPM's diffusion process (Kotelnikov et al., ICML 2023): schedule tables, the multinomial q/p on 2-category
variables in closed form, and the training loss of GaussianMultinomialDiffusion."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


LOG_ZERO_CLAMP = 1e-30  # index_to_log_onehot clamps one-hot zeros to 1e-30 before the log
LOG_ZERO = float(torch.tensor(LOG_ZERO_CLAMP, dtype=torch.float32).log())  # -69.08, as the official float32 log


def beta_schedule(name: str, T: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas in float64: `cosine` (Nichol & Dhariwal 2021, alpha_bar(s) = cos^2((s + 0.008)/1.008 pi/2), each
    beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), 0.999)) or `linear` (Ho et al., 1e-4..0.02 at T=1000)."""
    if name == "cosine":
        s = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    if name == "linear":
        scale = 1000 / T
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    raise ValueError(f"tabddpm: unknown scheduler {name!r}; valid choices: cosine, linear")


# The schedule tables of GaussianMultinomialDiffusion.__init__ (float64, stored as float32 buffers like the official
# ones) and the column layout; no trainable parameters. Saved with the weights, rebuilt identically from the config.
class DiffusionTables(nn.Module):
    def __init__(self, T: int, scheduler: str, kinds: tuple[str, ...]) -> None:
        super().__init__()
        betas = beta_schedule(scheduler, T)
        alphas = 1.0 - betas
        log_a = np.log(alphas)
        log_ac = np.cumsum(log_a)
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        tables = {
            "log_alpha": log_a, "log_1m_alpha": np.log(1.0 - np.exp(log_a) + 1e-40),
            "log_cumprod": log_ac, "log_1m_cumprod": np.log(1.0 - np.exp(log_ac) + 1e-40),
            "sqrt_ac": np.sqrt(ac), "sqrt_1m_ac": np.sqrt(1.0 - ac),
            "sqrt_recip_ac": np.sqrt(1.0 / ac), "sqrt_recipm1_ac": np.sqrt(1.0 / ac - 1.0),
            "coef1": betas * np.sqrt(ac_prev) / (1.0 - ac), "coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            # p(x_{t-1}|x_t) variance: the posterior variance at t=1 for t=0, then beta_t (gaussian_p_mean_variance)
            "model_log_var": np.log(np.append(post_var[1], betas[1:])),
        }
        for k, v in tables.items():
            self.register_buffer(k, torch.tensor(v, dtype=torch.float32))
        binary = np.asarray([k == "binary" for k in kinds], dtype=bool)  # once per build, not per step
        self.register_buffer("num_idx", torch.as_tensor(np.flatnonzero(~binary), dtype=torch.long))
        self.register_buffer("bin_idx", torch.as_tensor(np.flatnonzero(binary), dtype=torch.long))
        self.num_first = not binary[:len(binary) - int(binary.sum())].any()  # every loader's layout

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(continuous, binary) columns of x: two slices where the continuous columns come first, else gathers."""
        if self.num_first:
            return x[:, :len(self.num_idx)], x[:, len(self.num_idx):]
        return x[:, self.num_idx], x[:, self.bin_idx]

    @property
    def T(self) -> int:
        return self.log_alpha.shape[0]

    # ---- multinomial part: every variable has K = 2 categories, so each distribution is one log-odds ----------
    def log_odds(self, d: torch.Tensor, sx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p(x_{t-1} | x_t) of the x0-parametrisation as log p(1) - log p(0) (p_pred's two entries), from the
        network's logit differences d = logit_1 - logit_0 (batch, n), x_t's sign sx = 2 x_t - 1 and t (batch,).

        q(x_{t-1} = k | x0_hat) = a x0_hat_k + c with a = alpha_bar_{t-1}, c = (1 - alpha_bar_{t-1}) / 2 and x0_hat =
        (sigmoid(-d), sigmoid(d)) (x0_hat itself at t = 0), times q(x_t | x_{t-1} = k), which takes one value where k
        equals x_t's category and one where it does not. The normalisation cancels; c > 0 keeps the ratio finite."""
        t = t[:, None]
        s = (t - 1).clamp(min=0)
        a, c = self.log_cumprod[s].exp(), 0.5 * self.log_1m_cumprod[s].exp()
        prev = torch.where(t == 0, d, torch.log((a * torch.sigmoid(d) + c) / (a * torch.sigmoid(-d) + c)))
        return torch.addcmul(prev, sx, self._step(t))

    def true_log_odds(self, s0: torch.Tensor, sx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_{t-1} | x_t, x_0) as log q(1) - log q(0) for x_0's sign s0 = 2 x_0 - 1 (the log one-hot x_0 itself,
        +-69.08, at t = 0), as log_odds with x0_hat = x_0."""
        t = t[:, None]
        s = (t - 1).clamp(min=0)
        same, other = onehot_pair(self.log_cumprod[s], self.log_1m_cumprod[s])
        prev = torch.where(t == 0, -LOG_ZERO, same - other)
        return torch.addcmul(prev * s0, sx, self._step(t))

    def _step(self, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x_{t-1} = x_t's category) - log q(x_t | x_{t-1} = the other one), per row of t (batch, 1)."""
        same, other = onehot_pair(self.log_alpha[t], self.log_1m_alpha[t])
        return same - other


def onehot_pair(log_keep: torch.Tensor, log_1m_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official log(keep x + (1 - keep) / K) for a log one-hot x (zeros clamped to 1e-30), K = 2, computed as
    logaddexp(log x + log keep, log(1 - keep) - log 2): its value where x is 1 ("same") and where x is 0."""
    half = log_1m_keep - math.log(2.0)
    return torch.logaddexp(log_keep, half), torch.logaddexp(log_keep + LOG_ZERO, half)


def log_onehot(cat: torch.Tensor) -> torch.Tensor:
    """(batch, n) category indices in {0, 1} -> (batch, n, 2) log one-hot, zeros clamped to 1e-30 (as official)."""
    one = cat.bool().unsqueeze(-1)
    return torch.where(torch.cat([~one, one], dim=-1), 0.0, LOG_ZERO)


def logistic_draw(logit: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Category 1 with probability sigmoid(logit), from uniforms u in [0, 1): u < sigmoid(logit), i.e. logit(u) <
    logit. The same law as a Gumbel-max draw over the two log-probabilities (the difference of two Gumbels is logistic)."""
    return (u < torch.sigmoid(logit)).long()


def on_log_onehot(net: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The denoiser as the official code calls it: the network on (x_num_t, log one-hot of x_t), returning
    (eps_hat, logit_1 - logit_0) for mixed_loss."""
    def denoise(z: torch.Tensor, cat: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(torch.cat([z, log_onehot(cat).reshape(len(cat), -1)], dim=1), t)
        pair = out[:, z.shape[1]:].view(len(cat), -1, 2)
        return out[:, :z.shape[1]], pair[..., 1] - pair[..., 0]
    return denoise


def mixed_loss(denoise: Callable[..., tuple[torch.Tensor, torch.Tensor]], tab: DiffusionTables, x_num: torch.Tensor,
               x_bin: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """GaussianMultinomialDiffusion.mixed_loss with its randomness passed in (t uniform in [0, T), pt = 1/T), for
    a denoiser (x_num_t, x_t's categories, t) -> (eps_hat, logit_1 - logit_0): on_log_onehot(net) or FoldedDenoiser.

    Gaussian: mean over columns of (eps - eps_hat)^2. Multinomial (vb_stochastic): at t > 0 KL(q(x_{t-1}|x_t,x_0) ||
    p(x_{t-1}|x_t)), at t = 0 -log p(x_0|x_1), summed over variables, divided by pt, plus KL(q(x_T|x_0) || uniform),
    all divided by the number of categorical variables. Both batch means, summed (scripts/train.py).

    With K = 2 every distribution over a variable is one log-odds on (batch, n) tensors, not log-probabilities on
    (batch, n, 2): x_t is the official Gumbel-max draw from the same uniforms u, and the t = 0 term is the KL from
    the true posterior, which is x_0's one-hot up to 1e-25 there (equal to -log p(x_0|x_1) in float32)."""
    n_num, n_bin = x_num.shape[1], x_bin.shape[1]
    x_num_t = torch.addcmul(tab.sqrt_ac[t][:, None] * x_num, tab.sqrt_1m_ac[t][:, None], noise)
    s0 = 2 * x_bin.float() - 1
    # argmax_k(g_k + log q(x_t = k | x_0)) over two categories with g_k = -log(-l_k), l_k = log u_k < 0 (the 1e-30s
    # as official): category 1 where g_1 - g_0 = log(l_0 / l_1) > -s0 c, c = log q(same) - log q(other), i.e. where
    # l_0 < l_1 e^(-s0 c) (multiplying by l_1 < 0 turns the inequality)
    same, other = onehot_pair(tab.log_cumprod[t], tab.log_1m_cumprod[t])
    c = (same - other)[:, None]
    log_u = torch.log(u + 1e-30)
    xt = log_u[..., 0] < log_u[..., 1] * torch.where(s0 > 0, torch.exp(-c), torch.exp(c))
    eps_hat, d = denoise(x_num_t, xt, t)
    loss = d.new_zeros(())
    if n_num:
        loss = loss + F.mse_loss(eps_hat, noise)  # the mean of row means: every row has n_num columns
    if n_bin:
        sx = 2 * xt.float() - 1
        lm, lq = tab.log_odds(d, sx, t), tab.true_log_odds(s0, sx, t)
        # sum_k q_k (log q_k - log p_k) with log p(1) = -softplus(-lm), log p(0) = -softplus(lm)
        q1, q0 = torch.sigmoid(lq), torch.sigmoid(-lq)
        kl = q1 * (F.softplus(-lm) - F.softplus(-lq)) + q0 * (F.softplus(lm) - F.softplus(lq))
        same, other = onehot_pair(tab.log_cumprod[-1], tab.log_1m_cumprod[-1])  # q(x_T | x_0), the same per variable
        prior = same.exp() * (same + math.log(2.0)) + other.exp() * (other + math.log(2.0))
        loss = loss + (kl.sum(1) * tab.T / n_bin).mean() + prior
    return loss
