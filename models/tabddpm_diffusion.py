"""TabDDPM's diffusion process (Kotelnikov et al., ICML 2023): schedule tables, the multinomial q/p on 2-category
variables in closed form, and the training loss of GaussianMultinomialDiffusion."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


LOG_ZERO_CLAMP = 1e-30  # index_to_log_onehot clamps one-hot zeros to 1e-30 before the log (log = -69.08)


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

    # ---- multinomial part on (batch, n_binary, 2) log-probabilities; t is (batch,) --------------------------
    def q_pred(self, log_x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x_0) = log(alpha_bar_t x_0 + (1 - alpha_bar_t) / K), K = 2."""
        return dense_logaddexp(log_x0 + self.log_cumprod[t][:, None, None],
                               self.log_1m_cumprod[t][:, None, None] - math.log(2.0))

    def q_pred_one_timestep(self, log_xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return dense_logaddexp(log_xt + self.log_alpha[t][:, None, None], self.log_1m_alpha[t][:, None, None] - math.log(2.0))

    def q_posterior(self, log_x0: torch.Tensor, log_xt: torch.Tensor, t: torch.Tensor,
                    step: torch.Tensor | None = None) -> torch.Tensor:
        """log q(x_{t-1} | x_t, x_0), normalised over each variable's 2 categories; x_0 itself at t = 0. `step` is
        q_pred_one_timestep(log_xt, t) when the caller already has it (it does not depend on x_0)."""
        prev = self.q_pred(log_x0, (t - 1).clamp(min=0))
        prev = torch.where((t == 0)[:, None, None], log_x0, prev)
        un = prev + (self.q_pred_one_timestep(log_xt, t) if step is None else step)
        return un - dense_logaddexp(un[..., :1], un[..., 1:])  # logsumexp over the 2 categories

    def p_pred(self, logits: torch.Tensor, log_xt: torch.Tensor, t: torch.Tensor,
               step: torch.Tensor | None = None) -> torch.Tensor:
        """x0-parametrisation: q_posterior with x_0 replaced by the network's softmax."""
        return self.q_posterior(log_softmax2(logits), log_xt, t, step)

    def p_logit(self, d: torch.Tensor, cat: torch.Tensor, i: int) -> torch.Tensor:
        """log p(x_{t-1} = 1 | x_t) - log p(x_{t-1} = 0 | x_t) at one timestep i, from the network's logit differences
        d = logit_1 - logit_0 (batch, n) and x_t's categories (batch, n): p_pred's two entries as one log-odds.

        The same terms as q_posterior (normalisation cancels): q(x_{t-1} = k | x0_hat) = a x0_hat_k + c with
        a = alpha_bar_{i-1}, c = (1 - alpha_bar_{i-1}) / 2 and x0_hat = (sigmoid(-d), sigmoid(d)) (x0_hat itself at
        i = 0), times q(x_t | x_{t-1} = k), which takes only two values per step, one where k equals x_t's category
        and one (from the clamped log one-hot zero) where it does not. c > 0 keeps the ratio finite."""
        if i > 0:
            a, c = self.log_cumprod[i - 1].exp(), 0.5 * self.log_1m_cumprod[i - 1].exp()
            d = torch.log((a * torch.sigmoid(d) + c) / (a * torch.sigmoid(-d) + c))
        c = self.log_1m_alpha[i] - math.log(2.0)
        match = torch.logaddexp(self.log_alpha[i], c)
        miss = torch.logaddexp(self.log_alpha[i] + math.log(LOG_ZERO_CLAMP), c)
        return d + torch.where(cat.bool(), match - miss, miss - match)


# Every multinomial variable here has K = 2 categories, and torch's generic kernels over a last dimension of size 2
# (log_softmax, logsumexp, argmax, one_hot) are slow on CPU: 17 % of a sampling step went to log_softmax alone. The
# functions below are their K = 2 closed forms, equal to the generic ones (tests/test_tabddpm.py).
def dense_logaddexp(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torch.logaddexp on contiguous operands of the broadcast shape: its vectorised CPU kernel, where broadcast or
    strided operands (a per-row timestep term, the two categories' slices) take a scalar path about 10x slower.
    Equal up to float rounding (relative 5e-7)."""
    shape = torch.broadcast_shapes(x.shape, y.shape)
    return torch.logaddexp(x.expand(shape).contiguous(), y.expand(shape).contiguous())


def log_softmax2(logits: torch.Tensor) -> torch.Tensor:
    """F.log_softmax(logits, -1) for K = 2: x_k - logaddexp(x_0, x_1)."""
    return logits - dense_logaddexp(logits[..., :1], logits[..., 1:])


def log_onehot(cat: torch.Tensor) -> torch.Tensor:
    """(batch, n) category indices in {0, 1} -> (batch, n, 2) log one-hot, zeros clamped to 1e-30 (as official)."""
    one = cat.bool().unsqueeze(-1)
    log_zero = torch.tensor(LOG_ZERO_CLAMP, dtype=torch.float32, device=cat.device).log()
    return torch.where(torch.cat([~one, one], dim=-1), torch.zeros((), device=cat.device), log_zero)


def gumbel_argmax(log_probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Categorical draw by Gumbel-max from uniforms u (log_sample_categorical): argmax(log p - log(-log u))."""
    g = -torch.log(-torch.log(u + 1e-30) + 1e-30)
    z = g + log_probs
    return (z[..., 1] > z[..., 0]).long()  # argmax over K = 2 (a tie gives 0, as argmax's first maximum)


def logistic_draw(logit: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Category 1 with probability sigmoid(logit), from uniforms u in [0, 1): u < sigmoid(logit), i.e. logit(u) <
    logit. The same law as gumbel_argmax on the two log-probabilities (the difference of two Gumbels is logistic)."""
    return (u < torch.sigmoid(logit)).long()


def mixed_loss(net: nn.Module, tab: DiffusionTables, x_num: torch.Tensor, x_bin: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """GaussianMultinomialDiffusion.mixed_loss with its randomness passed in (t uniform in [0, T), pt = 1/T).

    Gaussian: mean over columns of (eps - eps_hat)^2. Multinomial (vb_stochastic): at t > 0 KL(q(x_{t-1}|x_t,x_0) ||
    p(x_{t-1}|x_t)), at t = 0 -log p(x_0|x_1), summed over variables, divided by pt, plus KL(q(x_T|x_0) || uniform),
    all divided by the number of categorical variables. Both batch means, summed (scripts/train.py)."""
    B, n_num, n_bin = len(t), x_num.shape[1], x_bin.shape[1]
    x_num_t = torch.addcmul(tab.sqrt_ac[t][:, None] * x_num, tab.sqrt_1m_ac[t][:, None], noise)
    log_x0 = log_onehot(x_bin)
    log_xt = log_onehot(gumbel_argmax(tab.q_pred(log_x0, t), u))
    # the network sees the log one-hot of x_t ({0, -69.08}), exactly as the official x_in
    out = net(torch.cat([x_num_t, log_xt.reshape(B, -1)], dim=1), t)
    loss = out.new_zeros(())
    if n_num:
        loss = loss + F.mse_loss(out[:, :n_num], noise)  # the mean of row means: every row has n_num columns
    if n_bin:
        step = tab.q_pred_one_timestep(log_xt, t)  # shared by the true and the model posterior
        log_true = tab.q_posterior(log_x0, log_xt, t, step)
        log_model = tab.p_pred(out[:, n_num:].reshape(B, n_bin, 2), log_xt, t, step)
        kl = (log_true.exp() * (log_true - log_model)).sum(dim=(1, 2))
        nll = -(log_x0.exp() * log_model).sum(dim=(1, 2))
        lt = torch.where(t == 0, nll, kl)
        log_qT = tab.q_pred(log_x0, torch.full_like(t, tab.T - 1))
        prior = (log_qT.exp() * (log_qT + math.log(2.0))).sum(dim=(1, 2))
        pt = torch.full((B,), 1.0 / tab.T, device=t.device)
        loss = loss + ((lt / pt + prior) / n_bin).mean()
    return loss
