"""TabDDPM's fast forms (two-category log-odds, the folded network, the log-uniform draw, the timestep table)
against the official computations, in value and gradient."""
import math

import numpy as np
import pytest
import torch

from ehrbench.models import Trainer, build_synthesizer
from ehrbench.models.tabddpm_diffusion import DiffusionTables, mixed_loss, on_log_onehot
from tests.conftest import TINY_PARAMS
from tests.test_tabddpm import official_cosine


def official_loss(tab, out, x_bin, xt, t):
    """The multinomial part of the official mixed_loss in float64 on (batch, n, K) log-probabilities with torch's
    generic log_softmax / logsumexp (q_pred, q_posterior, p_pred, KL or -log p at t = 0, the prior), and p_pred."""
    d = lambda name: getattr(tab, name).double()  # noqa: E731
    log_onehot = lambda c: torch.nn.functional.one_hot(c, 2).double().clamp(min=1e-30).log()  # noqa: E731
    q_pred = lambda lx, s: torch.logaddexp(lx + d("log_cumprod")[s][:, None, None],  # noqa: E731
                                           d("log_1m_cumprod")[s][:, None, None] - math.log(2))

    def posterior(log_x0):
        prev = torch.where((t == 0)[:, None, None], log_x0, q_pred(log_x0, (t - 1).clamp(min=0)))
        step = torch.logaddexp(log_onehot(xt) + d("log_alpha")[t][:, None, None],
                               d("log_1m_alpha")[t][:, None, None] - math.log(2))
        return torch.log_softmax(prev + step, dim=-1)

    B, n = x_bin.shape
    log_x0 = log_onehot(x_bin)
    log_true, log_model = posterior(log_x0), posterior(torch.log_softmax(out.view(B, n, 2), dim=-1))
    kl = (log_true.exp() * (log_true - log_model)).sum((1, 2))
    nll = -(log_x0.exp() * log_model).sum((1, 2))
    log_qT = q_pred(log_x0, torch.full_like(t, tab.T - 1))
    prior = (log_qT.exp() * (log_qT + math.log(2))).sum((1, 2))
    return ((torch.where(t == 0, nll, kl) * tab.T + prior) / n).mean(), log_model


def test_the_log_odds_loss_equals_the_official_log_probabilities_in_value_and_gradient():
    """mixed_loss's K = 2 log-odds forms against official_loss: the loss and its gradient with respect to the
    network's output, on logits from tiny to extreme at every kind of t (0, 1, late), and log_odds against
    p_pred's log p(1) - log p(0) (the sampling step)."""
    T, n_bin, B = 100, 9, 600
    tab = DiffusionTables(T, "cosine", ("binary",) * n_bin)
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long),
                   torch.randint(2, T, (B - 200,), generator=g)])
    x_bin = (torch.rand(B, n_bin, generator=g) < 0.3).float()
    u = torch.rand(B, n_bin, 2, generator=g)
    scale = torch.tensor([0.01, 1.0, 10.0, 40.0]).repeat(B // 4)[:, None]
    out = (torch.randn(B, 2 * n_bin, generator=g) * scale).requires_grad_()
    seen = {}

    def net(x_in, tt):
        seen["xt"] = (x_in[:, 1::2] == 0).long()  # category 1 where its log-probability is log 1
        return out

    got = mixed_loss(on_log_onehot(net), tab, torch.zeros(B, 0), x_bin, t, torch.zeros(B, 0), u)
    (grad,) = torch.autograd.grad(got, out)
    ref_out = out.detach().double().requires_grad_()
    want, log_model = official_loss(tab, ref_out, x_bin.long(), seen["xt"], t)
    (ref_grad,) = torch.autograd.grad(want, ref_out)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6 * float(ref_grad.abs().max()))
    pair = out.detach().view(B, n_bin, 2)
    lo = tab.log_odds(pair[..., 1] - pair[..., 0], 2 * seen["xt"].float() - 1, t)
    torch.testing.assert_close(lo.double(), log_model[..., 1] - log_model[..., 0], rtol=1e-5, atol=1e-3)


def test_the_logistic_draw_has_the_law_of_the_gumbel_draw():
    """logistic_draw takes category 1 exactly when u < sigmoid(log-odds); its frequency at each log-odds matches
    the Gumbel-max draw over the two log-probabilities (log sigmoid(-L), log sigmoid(L)) within sampling error."""
    from ehrbench.models.tabddpm_diffusion import logistic_draw

    g = torch.Generator().manual_seed(0)
    L = torch.linspace(-6, 6, 13)[:, None].expand(13, 20000)
    u = torch.rand(13, 20000, generator=g)
    assert torch.equal(logistic_draw(L, u), (u < torch.sigmoid(L)).long())
    v = torch.rand(13, 20000, 2, generator=g)
    gumbel = -torch.log(-torch.log(v))
    logp = torch.stack([torch.nn.functional.logsigmoid(-L), torch.nn.functional.logsigmoid(L)], dim=-1)
    freq = (gumbel + logp).argmax(-1).float().mean(1)
    np.testing.assert_allclose(freq.numpy(), torch.sigmoid(L[:, 0]).numpy(), atol=0.015)


@pytest.mark.parametrize("n_num", [0, 3])
def test_the_folded_denoiser_equals_the_network_on_log_onehot_inputs(n_num):
    """FoldedDenoiser's (eps_hat, logit_1 - logit_0) equal MLPDiffusion's outputs on (z, log one-hot of cat) at
    several timesteps: the fold only regroups the same sums."""
    from ehrbench.models.tabddpm import FoldedDenoiser, MLPDiffusion
    from ehrbench.models.tabddpm_diffusion import log_onehot

    torch.manual_seed(0)
    n_bin, B = 37, 64
    net = MLPDiffusion(n_num + 2 * n_bin, (32, 16), 0.0, 12).eval()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, n_num, generator=g)
    cat = (torch.rand(B, n_bin, generator=g) < 0.3).long()
    fold = FoldedDenoiser(net, n_num, n_bin)
    with torch.no_grad():
        for i in (0, 1, 500, 999):
            out = net(torch.cat([z, log_onehot(cat).reshape(B, -1)], dim=1), torch.full((B,), i))
            eps_hat, d = fold(z, cat, torch.full((1,), i))
            torch.testing.assert_close(eps_hat, out[:, :n_num], rtol=1e-5, atol=1e-4)
            pair = out[:, n_num:].reshape(B, n_bin, 2)
            torch.testing.assert_close(d, pair[..., 1] - pair[..., 0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_num", [0, 3])
def test_the_loss_through_the_folded_denoiser_equals_the_networks_in_value_and_gradient(n_num):
    """Training folds the network (TabDDPM.loss): the same loss and the same gradient for every parameter as the
    official call of the network on log one-hot inputs, per-row timesteps, up to float rounding."""
    from ehrbench.models.tabddpm import FoldedDenoiser, MLPDiffusion

    torch.manual_seed(0)
    T, n_bin, B = 100, 23, 256
    tab = DiffusionTables(T, "cosine", ("continuous",) * n_num + ("binary",) * n_bin)
    net = MLPDiffusion(n_num + 2 * n_bin, (32, 16), 0.0, 12, T)
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, T, (B,), generator=g)
    x_num, noise = torch.randn(B, n_num, generator=g), torch.randn(B, n_num, generator=g)
    x_bin, u = (torch.rand(B, n_bin, generator=g) < 0.2).float(), torch.rand(B, n_bin, 2, generator=g)
    losses, grads = [], []
    for denoise in (on_log_onehot(net), FoldedDenoiser(net, n_num, n_bin)):
        loss = mixed_loss(denoise, tab, x_num, x_bin, t, noise, u)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(*grads[::-1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_the_timestep_table_is_the_embedding_of_every_step_and_the_loss_is_unchanged():
    from ehrbench.models.tabddpm import MLPDiffusion, timestep_embedding

    T, g = 50, torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    looked_up = MLPDiffusion(2 + 2 * 3, (16, 16), 0.0, 9, num_timesteps=T)
    computed = MLPDiffusion(2 + 2 * 3, (16, 16), 0.0, 9)
    computed.load_state_dict(looked_up.state_dict())  # the table is not saved with the weights
    assert "t_table" not in looked_up.state_dict()
    torch.testing.assert_close(looked_up.t_table, timestep_embedding(torch.arange(T), 9), rtol=0, atol=0)
    tab = DiffusionTables(T, "cosine", ("continuous", "continuous", "binary", "binary", "binary"))
    t = torch.randint(0, T, (32,), generator=g)
    x_num, x_bin = torch.randn(32, 2, generator=g), torch.randint(0, 2, (32, 3), generator=g)
    noise, u = torch.randn(32, 2, generator=g), torch.rand(32, 3, 2, generator=g)
    a, b = (mixed_loss(on_log_onehot(net), tab, x_num, x_bin, t, noise, u) for net in (looked_up, computed))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_training_folds_the_network_except_under_dp_sgd(tiny_data, tmp_path):
    """A plain fit trains through FoldedDenoiser; a private one calls the network, so ghost clipping applies."""
    params = {**TINY_PARAMS["tabddpm"], "normalization": "none"}
    plain = build_synthesizer("tabddpm", **params).fit(tiny_data, Trainer(device="cpu", progress=False))
    t = Trainer(device="cpu", progress=False, budget="steps", max_steps=2, workdir=tmp_path,
                dp={"epsilon": 5.0, "delta": 1e-4})
    private = build_synthesizer("tabddpm", **params).fit(tiny_data, t)
    assert plain.fold_ and not private.fold_
    assert t.budget_report()["dp"]["per_record_path"] == {"net": "ghost"}


def test_the_noised_categories_are_the_official_gumbel_max_draw():
    """mixed_loss draws x_t by comparing log u_0 with log u_1 e^(-s0 c): the official argmax_k(-log(-log u_k) +
    log q(x_t = k | x_0)) in float64 from the same uniforms, except where the two sides tie within float32 rounding."""
    T, n_bin, B = 1000, 50, 2000
    tab = DiffusionTables(T, "cosine", ("binary",) * n_bin)
    g = torch.Generator().manual_seed(3)
    t = torch.cat([torch.zeros(200, dtype=torch.long), torch.randint(0, T, (B - 200,), generator=g)])
    x_bin, u = (torch.rand(B, n_bin, generator=g) < 0.3).float(), torch.rand(B, n_bin, 2, generator=g)
    u[0, 0] = 0.0  # u + 1e-30 keeps its log finite, as official
    seen = {}

    def denoise(z, cat, tt):
        seen["xt"] = cat.long()
        return z, torch.zeros(B, n_bin, requires_grad=True)

    mixed_loss(denoise, tab, torch.zeros(B, 0), x_bin, t, torch.zeros(B, 0), u)
    betas, ac = official_cosine(T)
    a = torch.tensor(ac, dtype=torch.float64)[t][:, None, None]
    x0 = torch.nn.functional.one_hot(x_bin.long(), 2).double()
    log_q = torch.log(a * x0 + (1 - a) / 2)
    score = -torch.log(-torch.log(u.double() + 1e-30) + 1e-30) + log_q
    margin = (score[..., 1] - score[..., 0]).abs()
    want = score.argmax(-1)
    clear = margin > 1e-4
    assert torch.equal(seen["xt"][clear], want[clear]) and clear.float().mean() > 0.999


def test_budgets_count_the_networks_official_call_not_the_folded_one(tiny_data):
    """step_flops counts the paper's computation, so folding does not buy TabDDPM more steps of a budget."""
    from torch.utils.flop_counter import FlopCounterMode

    from ehrbench.models.budget import step_flops

    m = build_synthesizer("tabddpm", **{**TINY_PARAMS["tabddpm"], "normalization": "none"})
    m.fit(tiny_data, Trainer(device="cpu", progress=False))
    assert m.fold_
    x = torch.as_tensor(tiny_data.train[:64])
    phase = m.plan(len(x))[0]
    counted = {}
    for fold in (True, False):
        m.fold_ = fold
        counter = FlopCounterMode(display=False)
        with counter:
            m.loss(x, "net").backward()
        counted[fold] = counter.get_total_flops()
    assert counted[True] < counted[False]
    m.fold_ = True
    assert step_flops(m, x, phase) == counted[False]
