"""CorGAN against the official script's sizes and schedule, and its losses against an independent numpy recomputation."""
import inspect
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import ehrbench.models.corgan  # noqa: F401  (registers "corgan" even before models/__init__.py imports it)
from ehrbench.models import check_synthesizer
from ehrbench.models.corgan import CorGAN
from ehrbench.models.dp import private_keys
from tests.conftest import REPO

TINY = {"latent_dim": 32, "n_channels_base": 1, "discriminator_dims": [16, 16], "batch_size": 64, "epochs": 2,
        "d_updates": 2, "warmup_d_updates": 3, "warmup_steps": 2}

# wgancnnmimic.py, written out by hand: encoder (c_in, c_out, kernel, stride) in units of the base channel count
# (0 = the single input/output channel), batch norm after encoder convs 2-5 and decoder convs 2-5.
ENC = [(0, 1, 5, 2), (1, 2, 5, 2), (2, 4, 5, 3), (4, 8, 5, 3), (8, 16, 5, 3), (16, 32, 8, 1)]
DEC = [(32, 16, 5, 1), (16, 8, 5, 4), (8, 4, 7, 4), (4, 2, 7, 3), (2, 1, 7, 2), (1, 0, 3, 2)]


def ch(units, base):
    return 1 if units == 0 else units * base


def np_(t):
    return t.detach().double().numpy()


def test_check_synthesizer():
    report = check_synthesizer("corgan", params=TINY)
    assert {"save/load", "binary columns", "continuous columns", "seed determinism"} <= set(report["checks"])


def test_yaml_holds_every_default():
    cfg = yaml.safe_load((REPO / "benchmarks" / "model" / "corgan.yaml").read_text())
    defaults = {k: p.default for k, p in inspect.signature(CorGAN.__init__).parameters.items() if k != "self"}
    assert cfg.pop("name") == "corgan"
    assert cfg == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}


# ---- sizes at the official width ------------------------------------------------------------------------------
def test_parameter_counts_at_mimic_width():
    d, b = 1071, 4
    conv = sum(ch(i, b) * ch(o, b) * k + ch(o, b) for i, o, k, _ in ENC + DEC)   # weights + biases (conv and transposed)
    bn = 2 * ((2 + 4 + 8 + 16) + (8 + 4 + 2 + 1)) * b                           # scale + offset: encoder, decoder BNs
    assert conv + bn == 135809
    gen = 2 * (128 * 128 + 128) + 2 * 2 * 128                                    # two residual Linear+BN layers
    disc = (d * 256 + 256) + 2 * (256 * 256 + 256) + (256 + 1)
    m = CorGAN()
    m.init_training(d, seed=0)
    counts = {k: sum(p.numel() for p in v.parameters()) for k, v in m.modules_.items()}
    assert counts == {"ae": conv + bn, "gen": gen, "disc": disc} == {"ae": 135809, "gen": 33536, "disc": 406273}
    assert m.n_params == 135809 + 33536 + 406273


def test_official_width_needs_no_padding_and_wider_data_more_positions():
    length = 1
    for _, _, k, s in DEC:
        length = (length - 1) * s + k
    assert length == 1071                                                        # one embedding position -> 1071
    m = CorGAN()
    m.init_training(1071, seed=0)
    ae = m.modules_["ae"]
    assert ae.padded == 1071 and ae.encode(torch.rand(2, 1071)).shape == (2, 128, 1)
    m.init_training(1782, seed=0)                                                # EHRDiff's MIMIC width
    ae = m.modules_["ae"]
    assert (ae.positions, ae.padded, m.modules_["gen"].width) == (5, 192 * 5 + 879, 640)
    h = ae.encode(torch.rand(3, 1782))
    assert h.shape == (3, 128, 5) and ae.decode_logits(h).shape == (3, 1782)


def test_official_initialisation_and_optimisers():
    m = CorGAN()
    m.init_training(50, seed=0)
    mods = m.modules_
    assert all(float(l.bias.detach()[0]) == pytest.approx(0.01) for l in mods["disc"].modules() if isinstance(l, nn.Linear))
    convs = [l.weight for l in mods["ae"].modules() if isinstance(l, (nn.Conv1d, nn.ConvTranspose1d))]
    assert abs(float(torch.cat([w.detach().flatten() for w in convs]).std()) - 0.02) < 0.002
    assert mods["gen"].bn1.eps == 1e-3 and mods["gen"].bn1.momentum == pytest.approx(0.01)
    opts = m.optimizers_
    for o in opts.values():
        assert all(g["betas"] == (0.9, 0.999) and g["weight_decay"] == 1e-4 for g in o.param_groups)
    assert [g["lr"] for g in opts["g"].param_groups] == [1e-3, 1e-4]                # generator, decoder
    dec = {id(p) for p in mods["ae"].decoder.parameters()}
    assert {id(p) for p in opts["g"].param_groups[1]["params"]} == dec
    assert opts["ae"].param_groups[0]["lr"] == opts["d"].param_groups[0]["lr"] == 1e-3


# ---- the schedule ---------------------------------------------------------------------------------------------
def test_plan_for_1000_rows():
    phases = CorGAN().plan(1000)
    per_epoch = math.ceil(1000 / 512)
    assert [p.name for p in phases] == ["pretrain", "critic_warmup", "gan"]
    assert [p.total_steps for p in phases] == [1 * per_epoch, 25, 100 * per_epoch - 25] == [2, 25, 175]
    assert all(p.batch_size == 512 for p in phases)
    assert phases[0].keys == ("ae",)
    assert phases[1].keys == ("d",) * 100 + ("g",)
    assert phases[2].keys == ("d",) * 5 + ("g",)


def test_dp_is_refused():
    m = CorGAN(**TINY)
    with pytest.raises(ValueError, match="batch norm"):
        private_keys(m, ["d", "g"])


# ---- losses against numpy -------------------------------------------------------------------------------------
def np_conv(x, w, b, s):
    k = w.shape[2]
    n = (x.shape[2] - k) // s + 1
    return b[None, :, None] + sum(np.einsum("oi,bil->bol", w[:, :, j], x[:, :, j: j + s * (n - 1) + 1: s])
                                  for j in range(k))


def np_conv_t(x, w, b, s):
    k, n = w.shape[2], x.shape[2]
    out = np.zeros((x.shape[0], w.shape[1], (n - 1) * s + k))
    for j in range(k):
        out[:, :, j: j + s * (n - 1) + 1: s] += np.einsum("io,bil->bol", w[:, :, j], x)
    return out + b[None, :, None]


def np_bn(x, bn, eps):
    axes = (0, 2) if x.ndim == 3 else (0,)
    shape = (1, -1, 1) if x.ndim == 3 else (1, -1)
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)      # training mode: biased batch variance
    return (x - mean) / np.sqrt(var + eps) * np_(bn.weight).reshape(shape) + np_(bn.bias).reshape(shape)


def np_decoder_logits(h, ae, d):
    convs = [l for l in ae.decoder if isinstance(l, nn.ConvTranspose1d)]
    bns = [l for l in ae.decoder if isinstance(l, nn.BatchNorm1d)]
    for i, (layer, (_, _, k, s)) in enumerate(zip(convs, DEC)):
        assert layer.kernel_size == (k,) and layer.stride == (s,)
        h = np_conv_t(h, np_(layer.weight), np_(layer.bias), s)
        if 1 <= i <= 4:
            h = np_bn(h, bns[i - 1], 1e-5)
        if i < 5:
            h = np.maximum(h, 0)
    return h[:, 0, :d]


def np_encoder(x, ae):
    h = np.concatenate([x, np.zeros((len(x), 1071 - x.shape[1]))], 1)[:, None, :]   # zero-padded to 1071
    convs = [l for l in ae.encoder if isinstance(l, nn.Conv1d)]
    bns = [l for l in ae.encoder if isinstance(l, nn.BatchNorm1d)]
    for i, (layer, (_, _, k, s)) in enumerate(zip(convs, ENC)):
        assert layer.kernel_size == (k,) and layer.stride == (s,)
        h = np_conv(h, np_(layer.weight), np_(layer.bias), s)
        if 1 <= i <= 4:
            h = np_bn(h, bns[i - 1], 1e-5)
        h = np.tanh(h) if i == 5 else np.where(h > 0, h, 0.2 * h)
    return h


def np_bce_sum(logits, x):
    return (x * np.logaddexp(0, -logits) + (1 - x) * np.logaddexp(0, logits)).sum(1).mean()


def np_critic(x, disc, clip):
    h = x
    for layer in disc.hidden:
        h = np.maximum(h @ np.clip(np_(layer.weight), -clip, clip).T + np.clip(np_(layer.bias), -clip, clip), 0)
    return (h @ np.clip(np_(disc.out.weight), -clip, clip).T + np.clip(np_(disc.out.bias), -clip, clip))[:, 0]


def np_generator(z, gen):
    h = z + np.maximum(np_bn(z @ np_(gen.linear1.weight).T + np_(gen.linear1.bias), gen.bn1, 1e-3), 0)
    return h + np.tanh(np_bn(h @ np_(gen.linear2.weight).T + np_(gen.linear2.bias), gen.bn2, 1e-3))


@pytest.fixture()
def small():
    torch.manual_seed(1)
    m = CorGAN(latent_dim=32, n_channels_base=1, discriminator_dims=(16, 16), clip_value=0.3)  # clamps some weights
    m.init_training(12, seed=0)
    for bn in (l for l in m.modules_.modules() if isinstance(l, nn.BatchNorm1d)):   # non-trivial BN scale/offset
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    rng = np.random.default_rng(0)
    x = np.c_[(rng.random((6, 11)) < 0.3), rng.random((6, 1))].astype(np.float32)  # 11 codes + 1 continuous
    return m, x


def test_autoencoder_loss_matches_numpy(small):
    m, x = small
    want = np_bce_sum(np_decoder_logits(np_encoder(x.astype(np.float64), m.modules_["ae"]), m.modules_["ae"], 12), x)
    assert float(m.loss(torch.from_numpy(x), "ae").detach()) == pytest.approx(want, rel=1e-5)


def test_critic_and_generator_losses_match_numpy(small):
    m, x = small
    disc = m.modules_["disc"]
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    assert max(float(v.abs().max()) for v in before.values()) > 0.3                   # so that clamping matters
    torch.manual_seed(7)
    got_d = float(m.loss(torch.from_numpy(x), "d").detach())
    assert all(float(p.detach().abs().max()) <= 0.3 + 1e-7 for p in disc.parameters())          # clamped in place
    for k, v in before.items():
        disc.state_dict()[k].copy_(v)                                                  # the by-hand run clamps itself
    torch.manual_seed(7)
    z = torch.randn(6, 32).double().numpy()                                            # the loss's first draw
    fake = 1 / (1 + np.exp(-np_decoder_logits(np_generator(z, m.modules_["gen"])[:, :, None], m.modules_["ae"], 12)))
    want_d = np_critic(x.astype(np.float64), disc, 0.3).mean() - np_critic(fake, disc, 0.3).mean()
    assert abs(want_d) > 1e-3 and got_d == pytest.approx(want_d, rel=1e-5)
    with torch.no_grad():
        for p in disc.parameters():
            p.clamp_(-0.3, 0.3)
    torch.manual_seed(7)
    got_g = float(m.loss(torch.from_numpy(x), "g").detach())
    assert got_g == pytest.approx(np_critic(fake, disc, 0.3).mean(), rel=1e-5)
