"""TabDDPM against independent numbers: cosine schedule, denoiser size, one mixed loss by numpy, lr annealing, width."""
import math

import numpy as np
import pytest
import torch

from ehrbench.models import Trainer, build_synthesizer, check_synthesizer
from ehrbench.models.tabddpm import TabDDPM
from ehrbench.models.tabddpm_diffusion import DiffusionTables, mixed_loss, on_log_onehot

TINY = {"d_layers": [32, 32], "dim_t": 16, "num_timesteps": 20, "batch_size": 64, "steps": 4, "sample_batch_size": 64}


def official_cosine(T):
    """betas_for_alpha_bar of the official code, scalar by scalar: beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999)."""
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return betas, np.cumprod(1 - betas)


def test_contract():
    report = check_synthesizer("tabddpm", params=TINY)
    assert report["fresh_process"] and "save/load" in report["checks"]


def test_cosine_alphas_cumprod():
    T = 1000
    tab = DiffusionTables(T, "cosine", ("binary",))
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    idx = np.array([0, 99, 249, 499, 749, 998])
    closed = f((idx + 1) / T) / f(0.0)  # the product telescopes until the 0.999 clip at the last step
    np.testing.assert_allclose(closed[[0, 3]], [0.9999587, 0.4938436], rtol=1e-6)  # f(1e-3)/f(0), f(0.5)/f(0), by hand
    np.testing.assert_allclose(tab.sqrt_ac.double().numpy()[idx] ** 2, closed, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(np.exp(tab.log_cumprod.double().numpy()[idx]), closed, rtol=1e-5, atol=1e-10)
    betas, ac = official_cosine(T)
    assert betas[-1] == 0.999 and ac[-1] == pytest.approx(ac[-2] * 1e-3)
    np.testing.assert_allclose(np.exp(tab.log_alpha.double().numpy()), 1 - betas, rtol=1e-6)
    np.testing.assert_allclose(tab.sqrt_1m_ac.double().numpy(), np.sqrt(1 - ac), rtol=1e-5)


def test_denoiser_parameter_count():
    """MLPDiffusion at d_in = 2 + 2 x 1000 (two continuous, 1000 binary columns), dim_t 128, d_layers [256, 256]."""
    kinds = ("continuous",) * 2 + ("binary",) * 1000
    m = build_synthesizer("tabddpm")
    m.n_features_, m.kinds_, m.columns_ = len(kinds), kinds, tuple(f"c{j}" for j in range(len(kinds)))
    m.init_modules(len(kinds))
    d = 2002
    by_hand = (d * 128 + 128) + 2 * (128 * 128 + 128) + (128 * 256 + 256) + (256 * 256 + 256) + (256 * d + d)
    assert by_hand == 902_738
    assert m.n_params == by_hand


def test_lr_anneal_matches_official_loop():
    """scripts/train.py: step s runs at the lr set after step s-1, lr = lr0 (1 - (s-1)/steps)."""
    steps, lr, seen = 50, 1.0, []
    for s in range(steps):
        seen.append(lr)
        lr = 1.0 * (1 - s / steps)
    np.testing.assert_allclose([TabDDPM().lr_scale(s, steps) for s in range(steps)], seen, rtol=1e-12)


def test_mixed_loss_against_numpy():
    T, kinds = 1000, ("binary", "continuous", "binary", "binary")
    tab = DiffusionTables(T, "cosine", kinds)
    rng = np.random.default_rng(0)
    B, n_bin = 4, 3
    x_num = rng.random((B, 1))
    x_bin = rng.integers(0, 2, (B, n_bin))
    t = np.array([0, 1, 500, 999])
    noise, u = rng.standard_normal((B, 1)), rng.random((B, n_bin, 2))
    out = rng.standard_normal((B, 1 + 2 * n_bin))
    seen = {}

    def net(x_in, tt):
        seen["x"] = x_in.double().numpy()
        return torch.tensor(out, dtype=torch.float32)

    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = float(mixed_loss(on_log_onehot(net), tab, f32(x_num), f32(x_bin), torch.tensor(t), f32(noise), f32(u)))

    # numpy, in probability space, from the official formulas
    betas, ac = official_cosine(T)
    alpha = 1 - betas
    ac_prev = lambda s: ac[s - 1] if s > 0 else 1.0  # noqa: E731
    x0 = np.eye(2)[x_bin]                                             # (B, n, 2) one-hot
    q = lambda p, a: a * p + (1 - a) / 2  # noqa: E731              # one multinomial noising step by a factor a
    qt = np.stack([q(x0[b], ac[t[b]]) for b in range(B)])
    xt = np.argmax(-np.log(-np.log(u + 1e-30) + 1e-30) + np.log(qt), axis=-1)
    x_num_t = np.sqrt(ac[t])[:, None] * x_num + np.sqrt(1 - ac[t])[:, None] * noise
    np.testing.assert_allclose(seen["x"], np.c_[x_num_t, np.log(np.maximum(np.eye(2)[xt], 1e-30)).reshape(B, -1)],
                               rtol=1e-5, atol=1e-6)

    def posterior(p0, b):
        prev = p0 if t[b] == 0 else q(p0, ac_prev(t[b]))
        un = prev * q(np.eye(2)[xt[b]], alpha[t[b]])
        return un / un.sum(-1, keepdims=True)

    logits = out[:, 1:].reshape(B, n_bin, 2)
    x0_hat = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    multi = []
    for b in range(B):
        true, model = posterior(x0[b], b), posterior(x0_hat[b], b)
        lt = -(x0[b] * np.log(model)).sum() if t[b] == 0 else (true * np.log(true / model)).sum()
        qT = q(x0[b], ac[T - 1])
        prior = (qT * np.log(qT / 0.5)).sum()
        multi.append((lt * T + prior) / n_bin)
    gauss = ((noise - out[:, :1]) ** 2).mean()
    assert got == pytest.approx(np.mean(multi) + gauss, rel=1e-4)


@pytest.mark.parametrize("bias, value", [(20.0, 1.0), (-20.0, 0.0)])
def test_sampled_category_is_the_column_value(bias, value):
    """A network certain of category 1 (or 0) for every code gives all-1 (all-0) binary columns."""
    kinds = ("binary", "continuous", "binary")
    m = TabDDPM(d_layers=(8,), dim_t=8, num_timesteps=5)
    m.n_features_, m.kinds_, m.columns_ = 3, kinds, ("a", "b", "c")
    m.init_modules(3)
    head = m.modules_["net"].mlp[-1]
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.0, -bias, bias, -bias, bias]))  # [eps, (k0, k1) per code]
    S = m.sample(40, seed=0)
    assert (S[:, [0, 2]] == value).all() and ((S[:, 1] >= 0) & (S[:, 1] <= 1)).all()


def test_fit_and_sample_at_width_1000():
    rng = np.random.default_rng(1)
    X = (rng.random((256, 1000)) < rng.random(1000) * 0.2).astype(np.float32)
    m = TabDDPM(**{**TINY, "num_timesteps": 10})
    trainer = Trainer(device="cpu", budget="steps", max_steps=3, progress=False, checkpoint_every=10**9, log_every=3)
    calls = []
    m.fit(X, trainer)
    m.modules_["net"].mlp[0].register_forward_hook(lambda *a: calls.append(1))  # the first hidden layer
    S = m.sample(100, seed=0)
    assert S.shape == (100, 1000) and set(np.unique(S)) <= {0.0, 1.0}
    assert len(calls) == 2 * 10  # one network call per timestep per sampling batch: no loop over columns


def test_inverse_quantile_equals_sklearns_inverse_transform():
    from sklearn.preprocessing import QuantileTransformer

    from ehrbench.models.quantile import inverse_quantile, n_quantiles

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.exponential(size=900), rng.integers(0, 5, 900), np.r_[np.zeros(600), rng.random(300)]])
    qt = QuantileTransformer(output_distribution="normal", n_quantiles=n_quantiles(900), subsample=int(1e9),
                             random_state=0).fit(X)
    z = np.vstack([qt.transform(X), rng.normal(0, 3, (500, 3)), [[-40.0, 40.0, 0.0], [6.0, -6.0, 1e-9]]])
    assert np.allclose(inverse_quantile(z, qt.quantiles_), qt.inverse_transform(z), rtol=0, atol=1e-12)
    assert (n_quantiles(900), n_quantiles(10**6), n_quantiles(50)) == (30, 1000, 10)  # lib/data.py's rule


def test_discrete_columns_round_to_their_nearest_training_value_as_cdist_argmin():
    from scipy.spatial.distance import cdist

    from ehrbench.models.quantile import discrete_levels, round_to_levels

    rng = np.random.default_rng(1)
    X = np.column_stack([rng.integers(0, 4, 200).astype(float), rng.random(200)])  # 4 levels; 200 distinct values
    levels = discrete_levels(X)
    assert np.isnan(levels[1]).all() and np.array_equal(levels[0, :4], [0, 1, 2, 3]) and np.isnan(levels[0, 4:]).all()
    S = np.vstack([rng.normal(1.5, 2.0, (300, 2)), [[0.5, 0.0], [2.5, 1.0]]])  # and two exact midpoints
    uniq = np.unique(X[:, 0])
    expect = uniq[cdist(S[:, :1], uniq[:, None]).argmin(1)]  # lib/data.py round_columns
    R = round_to_levels(S, levels)
    assert np.array_equal(R[:, 0], expect) and np.array_equal(R[:, 1], S[:, 1])


def _as_data(X, kinds):
    from ehrbench.data import EHRData

    return EHRData(X, X[:20], X[:20], tuple(f"c{j}" for j in range(X.shape[1])), kinds, name="mixed")


def _mixed(n=300, seed=2):
    rng = np.random.default_rng(seed)
    codes = (rng.random((n, 6)) < 0.3).astype(np.float32)
    return np.column_stack([codes, rng.beta(2, 5, n), rng.integers(0, 3, n) / 2]).astype(np.float32)


def test_fit_quantile_normalises_the_continuous_columns_and_sampling_inverts_it(monkeypatch):
    from sklearn.preprocessing import QuantileTransformer

    X = _mixed()
    kinds = ("binary",) * 6 + ("continuous",) * 2
    seen = {}
    run_plan = TabDDPM.run_plan
    monkeypatch.setattr(TabDDPM, "run_plan", lambda self, Xt, tr: (seen.setdefault("X", Xt.copy()), run_plan(self, Xt, tr)))
    trainer = Trainer(device="cpu", budget="steps", max_steps=3, progress=False, checkpoint_every=10**9, seed=5)
    m = TabDDPM(**TINY).fit(_as_data(X, kinds), trainer)
    qt = QuantileTransformer(output_distribution="normal", n_quantiles=10, subsample=int(1e9), random_state=5).fit(X[:, 6:])
    assert np.array_equal(m.quantiles_, qt.quantiles_)
    assert np.allclose(seen["X"][:, 6:], qt.transform(X[:, 6:]), atol=1e-6) and np.array_equal(seen["X"][:, :6], X[:, :6])
    S = m.sample(200, seed=0)
    assert (S[:, 6] >= X[:, 6].min()).all() and (S[:, 6] <= X[:, 6].max()).all()  # inside the training range
    assert set(np.unique(S[:, 7])) <= {0.0, 0.5, 1.0}                                   # discrete: training values only


def test_quantile_state_survives_save_and_load(tmp_path):
    m = TabDDPM(**TINY)
    m.fit(_as_data(_mixed(), ("binary",) * 6 + ("continuous",) * 2),
          Trainer(device="cpu", budget="steps", max_steps=2, progress=False, checkpoint_every=10**9))
    m.save(tmp_path)
    again = TabDDPM.load(tmp_path)
    assert np.array_equal(again.quantiles_, m.quantiles_) and np.array_equal(m.sample(50, seed=3), again.sample(50, seed=3))


def test_a_private_run_needs_normalization_none():
    class Private:
        dp, seed = object(), 0

    with pytest.raises(ValueError, match="needs model.normalization=none"):
        TabDDPM(**TINY).fit(_as_data(_mixed(), ("binary",) * 6 + ("continuous",) * 2), Private())
    with pytest.raises(ValueError, match="unknown tabddpm.normalization 'minmax'; valid choices: quantile, none"):
        TabDDPM(**TINY, normalization="minmax").fit(_mixed()[:, :6], Private())


@pytest.mark.parametrize("kinds", [("continuous", "continuous", "binary", "binary", "binary"),
                                   ("binary", "continuous", "binary", "continuous", "binary")])
def test_split_takes_the_continuous_then_the_binary_columns_in_either_layout(kinds):
    tab = DiffusionTables(10, "cosine", kinds)
    x = torch.arange(15, dtype=torch.float32).reshape(3, 5)
    num = [i for i, k in enumerate(kinds) if k != "binary"]
    x_num, x_bin = tab.split(x)
    assert tab.num_first == (kinds[0] == "continuous")
    assert torch.equal(x_num, x[:, num]) and torch.equal(x_bin, x[:, [i for i in range(5) if i not in num]])
