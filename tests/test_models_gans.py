"""What makes medGAN, the VAE and EMR-WGAN themselves, checked against independent (numpy / analytic) computations."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from ehrbench.models import pipeline
from ehrbench.data import EHRData
from ehrbench.models import Synthesizer, Trainer, TrainingDiverged, build_synthesizer
from ehrbench.models.emrwgan import EMRWGAN, gradient_penalty
from ehrbench.models.medgan import MedGAN, MinibatchDiscriminator, ResidualGenerator
from ehrbench.models.outputs import binarize
from ehrbench.models.vae import VAE, vae_loss
from tests.conftest import TINY_PARAMS, compose

GANS = ("medgan", "vae", "emrwgan")


def tiny(name, **kw):
    return build_synthesizer(name, **{**TINY_PARAMS[name], **kw})


def trainer(**kw):
    return Trainer(**{"device": "cpu", "max_steps": 6, "progress": False, "seed": 0, **kw})


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def np_(t):
    return t.detach().double().numpy()


# ---- medGAN ---------------------------------------------------------------------------------------------------
def test_minibatch_averaging_doubles_discriminator_input():
    torch.manual_seed(0)
    D = MinibatchDiscriminator(7, [5, 3])
    assert D.hidden[0].in_features == 14 and D.out.out_features == 1
    x = torch.rand(6, 7)
    h = np.c_[x.numpy(), np.tile(x.numpy().mean(0), (6, 1))]          # each sample next to the batch mean
    for layer in D.hidden:
        h = np.maximum(h @ np_(layer.weight).T + np_(layer.bias), 0)
    np.testing.assert_allclose(D(x).detach().numpy(), (h @ np_(D.out.weight).T + np_(D.out.bias))[:, 0], rtol=1e-5)
    y = x.clone()
    y[5] = 1 - y[5]
    assert not torch.allclose(D(x)[0], D(y)[0])                        # a sample's score depends on its batch


def test_medgan_generator_residual_layers():
    torch.manual_seed(0)
    G = ResidualGenerator(8, [8, 8, 8], bn_decay=0.99, bn_eps=1e-3, last="tanh")
    assert [tuple(l.weight.shape) for l in G.linears] == [(8, 8)] * 3 and all(l.bias is None for l in G.linears)
    assert all(bn.momentum == pytest.approx(0.01) and bn.eps == 1e-3 and bn.affine for bn in G.norms)
    for bn in G.norms:  # non-trivial moving averages and BN scale/offset
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    z = torch.randn(5, 8)
    h = z.double().numpy()
    for i, (lin, bn) in enumerate(zip(G.linears, G.norms)):
        a = h @ np_(lin.weight).T
        a = (a - np_(bn.running_mean)) / np.sqrt(np_(bn.running_var) + 1e-3) * np_(bn.weight) + np_(bn.bias)
        h = h + (np.tanh(a) if i == 2 else np.maximum(a, 0))
    np.testing.assert_allclose(G.eval()(z).detach().numpy(), h, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs noise_dim, every generator_dims entry and embedding_dim equal"):
        MedGAN(generator_dims=(128, 64)).build(10)


def test_medgan_autoencoder_loss_and_l2_by_hand():
    m = MedGAN(**{**TINY_PARAMS["medgan"], "l2": 0.5})
    m.init_training(6, seed=1)
    x = (torch.rand(9, 6) < 0.4).float()
    ae = m.modules_["ae"]
    We, Wd = np_(ae.encoder[0].weight), np_(ae.decoder[0].weight)
    be, bd = np_(ae.encoder[0].bias), np_(ae.decoder[0].bias)
    p = sigmoid(np.tanh(x.numpy() @ We.T + be) @ Wd.T + bd)
    X = x.double().numpy()
    bce = -(X * np.log(p) + (1 - X) * np.log(1 - p)).sum(1).mean()
    l2 = 0.5 * 0.5 * sum((w ** 2).sum() for w in (We, Wd, be, bd))  # scale * sum(w^2) / 2 over every variable
    assert float(m.loss(x, "ae").detach()) == pytest.approx(bce + l2, rel=1e-5)


def test_medgan_optimisers_and_bn_modes(tiny_data):
    m = tiny("medgan")
    m.init_training(tiny_data.n_features)
    g_params = {id(p) for p in m.optimizers_["g"].param_groups[0]["params"]}
    expected = {id(p) for p in [*m.modules_["gen"].parameters(), *m.modules_["ae"].decoder.parameters()]}
    assert g_params == expected                                   # G optimiser fine-tunes the decoder too
    assert not g_params & {id(p) for p in m.modules_["ae"].encoder.parameters()}
    m.modules_.train()
    x = torch.as_tensor(tiny_data.train[:64])
    bn = m.modules_["gen"].norms[0]
    before = bn.running_mean.clone()
    m.loss(x, "d")                                                # original: bn_train=False in the D step
    assert torch.equal(bn.running_mean, before) and m.modules_["gen"].training
    m.loss(x, "g")                                                # bn_train=True in the G step
    assert not torch.equal(bn.running_mean, before)


def test_medgan_two_phases_and_burn_in_leaves_state_unchanged(tiny_data, tmp_path):
    t = trainer(workdir=tmp_path, log_every=1)
    m = tiny("medgan").fit(tiny_data, t)
    phases = [json.loads(l)["phase"] for l in (tmp_path / "train_stats.jsonl").read_text().splitlines()]
    assert phases == ["pretrain"] * 6 + ["gan"] * 6 and t.steps_done == 12   # max_steps caps each phase
    state = {k: v.clone() for k, v in m.state_tensors().items()}
    a = m.sample(100, seed=4)
    assert all(torch.equal(v, m.state_tensors()[k]) for k, v in state.items())
    assert np.array_equal(a, m.sample(100, seed=4))
    g = torch.Generator().manual_seed(4)
    with_burn = m.generate(100, g)
    m.burn_in_batches = 0
    assert not torch.allclose(with_burn, m.generate(100, torch.Generator().manual_seed(4)))  # burn-in matters
    assert np.array_equal(a, (with_burn.numpy() >= 0.5).astype(np.float32))                # 0.5 threshold


def test_medgan_resumes_inside_the_gan_phase(tiny_data, tmp_path, monkeypatch):
    kw = dict(max_steps=8, checkpoint_every=3)
    ref = tiny("medgan").fit(tiny_data, trainer(workdir=tmp_path / "ref", **kw))
    crashing = tiny("medgan")
    real_loss, calls = crashing.loss, {"n": 0}

    def loss(x, key):
        calls["n"] += 1
        if calls["n"] == 8 + 5 * 3:  # pretrain: 8 calls; GAN: 3 calls per step -> dies in GAN step 5
            raise KeyboardInterrupt
        return real_loss(x, key)

    monkeypatch.setattr(crashing, "loss", loss)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(tiny_data, trainer(workdir=tmp_path / "run", **kw))
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["phase"] == "gan"
    resumed = tiny("medgan").fit(tiny_data, trainer(workdir=tmp_path / "run", **kw))
    for k, v in ref.state_tensors().items():
        assert torch.equal(v, resumed.state_tensors()[k]), k
    assert np.array_equal(ref.sample(50, seed=1), resumed.sample(50, seed=1))


def test_medgan_count_mode_is_persisted(tmp_path):
    rng = np.random.default_rng(0)
    X = np.c_[rng.poisson(2.0, (300, 5)), rng.random((300, 1)) < 0.3].astype(np.float32)
    data = EHRData(X, X[:10], X[:10], tuple("abcdef"), ("continuous",) * 5 + ("binary",), name="counts")
    m = tiny("medgan", data_type="count").fit(data, trainer())
    m.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "config.json").read_text())["params"]["data_type"] == "count"
    back = Synthesizer.load(tmp_path / "s")
    assert back.data_type == "count"
    h = torch.randn(20, 16) * 5
    assert torch.equal(back.decode(h), torch.relu(back.modules_["ae"].decode_pre(h)))   # ReLU output, not sigmoid
    S = back.sample(200, seed=0)
    assert np.array_equal(S, m.sample(200, seed=0))
    assert S[:, :5].min() >= 0 and not np.isin(S[:, :5], [0.0, 1.0]).all()             # counts stay continuous
    assert set(np.unique(S[:, 5])) <= {0.0, 1.0}
    neg = X.copy()
    neg[0, 0] = -1
    with pytest.raises(ValueError, match="negative value -1.0 in row 0, column 'a'; data_type=count"):
        tiny("medgan", data_type="count").fit(EHRData(neg, X[:5], X[:5], data.columns, data.kinds, name="neg"))


# ---- VAE ------------------------------------------------------------------------------------------------------
def test_vae_loss_equals_bce_plus_kl_by_hand():
    torch.manual_seed(0)
    net = VAE(hidden_dim=6, latent_dim=3).build(5)["vae"]
    x = (torch.rand(8, 5) < 0.5).float()
    eps = torch.randn(8, 3)
    got = float(vae_loss(net, x, eps).detach())
    X = x.double().numpy()
    h = np.maximum(X @ np_(net.fc1.weight).T + np_(net.fc1.bias), 0)
    mu, lv = h @ np_(net.fc21.weight).T + np_(net.fc21.bias), h @ np_(net.fc22.weight).T + np_(net.fc22.bias)
    z = mu + eps.double().numpy() * np.exp(lv / 2)
    p = sigmoid(np.maximum(z @ np_(net.fc3.weight).T + np_(net.fc3.bias), 0) @ np_(net.fc4.weight).T + np_(net.fc4.bias))
    bce = -(X * np.log(p) + (1 - X) * np.log(1 - p)).sum()
    kl = 0.5 * (mu ** 2 + np.exp(lv) - 1 - lv).sum()                   # KL(N(mu, e^lv) || N(0, 1)), summed
    assert got == pytest.approx(bce + kl, rel=1e-5)
    m = VAE(hidden_dim=6, latent_dim=3)
    m.init_training(5)
    torch.manual_seed(3)
    a = float(m.loss(x, "vae").detach())
    torch.manual_seed(3)                                               # loss() draws eps from the global RNG
    assert a == pytest.approx(float(vae_loss(m.modules_["vae"], x, torch.randn(8, 3)).detach()), rel=1e-6)


def test_binarize_rules():
    p = torch.tensor([[0.2, 0.5, 0.7], [0.49, 0.9, 0.1]]).repeat(2000, 1)
    mask = np.array([True, True, False])
    t = binarize(p.clone(), mask, "threshold", torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(t[:2], np.float32([[0, 1, 0.7], [0, 1, 0.1]]))   # continuous column untouched
    b = binarize(p.clone(), mask, "bernoulli", torch.Generator().manual_seed(0))
    assert set(np.unique(b[:, :2])) == {0.0, 1.0} and np.array_equal(b[:, 2], p[:, 2].numpy())
    np.testing.assert_allclose(b[0::2, :2].mean(0), [0.2, 0.5], atol=0.04)
    np.testing.assert_allclose(b[1::2, :2].mean(0), [0.49, 0.9], atol=0.04)
    with pytest.raises(ValueError, match="unknown binarize rule 'round'; valid choices: bernoulli, threshold"):
        tiny("vae", binarize="round").fit(np.zeros((10, 2), np.float32))


def test_vae_samples_bernoulli_by_default(tiny_data):
    m = tiny("vae").fit(tiny_data, trainer())
    assert m.binarize == "bernoulli"
    probs = m.generate(20000, torch.Generator().manual_seed(0)).numpy()
    S = m.sample(20000, seed=0)
    np.testing.assert_allclose(S.mean(0), probs.mean(0), atol=0.02)
    m.binarize = "threshold"
    assert np.array_equal(m.sample(500, seed=1), (m.generate(500, torch.Generator().manual_seed(1)) >= 0.5).numpy())


# ---- EMR-WGAN -------------------------------------------------------------------------------------------------
class LinearCritic(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        return x @ self.w + self.b


def test_gradient_penalty_hand_computed():
    torch.manual_seed(0)
    real, fake, alpha = torch.rand(6, 3), torch.rand(6, 3), torch.rand(6, 1)
    lin = LinearCritic([0.6, -1.2, 2.0], 0.3)          # grad = w everywhere: GP = (|w| - 1)^2
    assert float(gradient_penalty(lin, real, fake, alpha).detach()) == pytest.approx((np.sqrt(0.36 + 1.44 + 4) - 1) ** 2)

    class Quadratic(nn.Module):                        # f = |x|^2 / 2: grad = x_hat, GP = mean((|x_hat| - 1)^2)
        def forward(self, x):
            return 0.5 * (x ** 2).sum(1)

    x_hat = real.numpy() + alpha.numpy() * (fake.numpy() - real.numpy())
    expected = ((np.linalg.norm(x_hat, axis=1) - 1) ** 2).mean()
    assert float(gradient_penalty(Quadratic(), real, fake, alpha).detach()) == pytest.approx(expected, rel=1e-5)
    gp = gradient_penalty(lin, real, fake, alpha)
    (g,) = torch.autograd.grad(gp, lin.w)              # differentiable: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    w = np.array([0.6, -1.2, 2.0])
    np.testing.assert_allclose(g.numpy(), 2 * (np.linalg.norm(w) - 1) * w / np.linalg.norm(w), rtol=1e-5)


def test_emrwgan_losses_with_a_linear_critic():
    m = tiny("emrwgan")
    m.init_training(3)
    m.modules_["critic"] = LinearCritic([0.5, -1.0, 0.25], 0.1)
    x = torch.rand(4, 3)
    torch.manual_seed(7)
    d = float(m.loss(x, "d").detach())
    torch.manual_seed(7)
    fake = m.modules_["gen"](torch.randn(4, m.z_dim)).detach().numpy()
    w = np.array([0.5, -1.0, 0.25])
    expected = -(x.numpy() @ w).mean() + (fake @ w).mean() + 10 * (np.linalg.norm(w) - 1) ** 2
    assert d == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(7)
    assert float(m.loss(x, "g").detach()) == pytest.approx(-(fake @ w).mean() - 0.1, rel=1e-5)


def test_emrwgan_architecture_and_optimisers():
    m = EMRWGAN()
    m.init_training(50)
    gen, critic = m.modules_["gen"], m.modules_["critic"]
    assert len(gen.dense) == 6 and len(critic.dense) == 6 and gen.out.out_features == 50
    assert not gen.norm0.elementwise_affine and all(n.elementwise_affine for n in [*gen.norms, *critic.norms])
    out = gen(torch.randn(32, 128)).detach()
    assert out.shape == (32, 50) and 0 < float(out.min()) and float(out.max()) < 1           # sigmoid output
    for key, lr in (("d", 2e-5), ("g", 1e-5)):
        opt = m.optimizers_[key]
        assert isinstance(opt, torch.optim.RMSprop)
        assert opt.defaults["lr"] == lr and opt.defaults["alpha"] == 0.9 and opt.defaults["eps"] == 1e-7
    with pytest.raises(ValueError, match="critic_dims must be one or more equal widths"):
        EMRWGAN(critic_dims=(384, 128)).build(5)


# ---- all three ------------------------------------------------------------------------------------------------
def test_paper_parameter_counts_at_mimic_width():
    d = 1071                                                       # MIMIC-III 3-digit ICD-9
    lin = lambda a, b, bias=True: a * b + (b if bias else 0)      # noqa: E731
    medgan = (lin(d, 128) + lin(128, d)                            # autoencoder
              + 3 * lin(128, 128, bias=False) + 3 * 2 * 128        # 3 residual layers + BN scale/offset
              + lin(2 * d, 256) + lin(256, 128) + lin(128, 1))     # discriminator on [x, batch mean]
    vae = lin(d, 256) + 2 * lin(256, 128) + lin(128, 256) + lin(256, d)
    gen = lin(128, 384) + 5 * lin(384, 384) + 2 * 384 + 5 * 2 * 384 + lin(384, d)   # + PointWise, 5 affine LNs
    critic = lin(d, 384) + 5 * lin(384, 384) + 6 * 2 * 384 + lin(384, 384) + 384 + lin(384, 1)
    for name, expected in (("medgan", medgan), ("vae", vae), ("emrwgan", gen + critic)):
        m = build_synthesizer(name)
        m.init_modules(d)
        assert m.n_params == expected, name
    assert (medgan, vae, gen + critic) == (906_928, 648_495, 2_509_744)


@pytest.mark.parametrize("name", GANS)
def test_continuous_columns_get_the_sigmoid_output(name):
    rng = np.random.default_rng(1)
    X = np.c_[rng.random((400, 3)) < 0.3, rng.beta(2, 5, (400, 1))].astype(np.float32)
    data = EHRData(X, X[:10], X[:10], ("a", "b", "c", "v"), ("binary",) * 3 + ("continuous",), name="mixed")
    S = tiny(name).fit(data, trainer()).sample(300, seed=0)
    assert set(np.unique(S[:, :3])) <= {0.0, 1.0}
    assert 0 <= S[:, 3].min() and S[:, 3].max() <= 1 and not np.isin(S[:, 3], [0.0, 1.0]).all()
    bad = X.copy()
    bad[2, 3] = 3.5
    with pytest.raises(ValueError, match=f"{name}.fit: continuous value 3.5 in row 2, column 'v' is outside \\[0, 1\\]"):
        tiny(name).fit(EHRData(bad, X[:5], X[:5], data.columns, data.kinds, name="bad"), trainer())


@pytest.mark.parametrize("name", GANS)
def test_load_of_another_model_or_width_is_a_clear_error(name, tiny_data, tmp_path):
    m = tiny(name).fit(tiny_data, trainer(workdir=tmp_path / "w", max_steps=2))
    m.save(tmp_path / "s")
    other = [c for c in (MedGAN, VAE, EMRWGAN) if c.name != name][0]
    with pytest.raises(TypeError, match=f"holds a '{name}' synthesizer, not '{other.name}'"):
        other.load(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["n_features"] += 1                                          # a checkpoint of another width
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"{name}: saved state does not fit this model's shapes"):
        Synthesizer.load(tmp_path / "s")
    with pytest.raises(ValueError, match=f"belongs to model '{name}'"):
        build_synthesizer(other.name, **TINY_PARAMS[other.name]).fit(tiny_data, trainer(workdir=tmp_path / "w"))
    width = {"medgan": "discriminator_dims", "vae": "hidden_dim", "emrwgan": "critic_dims"}[name]
    v = TINY_PARAMS[name][width]
    wider = {width: [2 * x for x in v] if isinstance(v, list) else 2 * v}
    with pytest.raises(ValueError, match=f"trained with other hyperparameters \\({width}\\)"):
        tiny(name, **wider).fit(tiny_data, trainer(workdir=tmp_path / "w"))


def test_bad_hyperparameters_are_clear_errors(tiny_data):
    with pytest.raises(ValueError, match="unknown data_type 'counts'; valid choices: binary, count"):
        tiny("medgan", data_type="counts").fit(tiny_data, trainer())
    with pytest.raises(ValueError, match="unknown binarize rule 'bern'; valid choices: bernoulli, threshold"):
        tiny("emrwgan", binarize="bern").fit(tiny_data, trainer())


# ---- divergence -----------------------------------------------------------------------------------------------
def test_diverging_gans_stop_naming_the_model(tiny_data, monkeypatch):
    with pytest.raises(TrainingDiverged, match="emrwgan: the '[dg]' loss (became nan|ran away to \\S+ \\(limit "
                                               "1e\\+09\\)) at step \\d+ of phase 'train'"):
        tiny("emrwgan", lr_d=1e6, lr_g=1e6).fit(tiny_data, trainer(max_steps=50))   # a real blow-up
    m = tiny("medgan")
    real_loss = m.loss
    monkeypatch.setattr(m, "loss", lambda x, key: real_loss(x, key) * (float("inf") if key == "g" else 1.0))
    with pytest.raises(TrainingDiverged, match="medgan: the 'g' loss became inf at step 0 of phase 'gan'"):
        m.fit(tiny_data, trainer())


def test_divergence_is_recorded_in_run_json(tmp_path):
    p = {k: json.dumps(v).replace(" ", "") for k, v in {**TINY_PARAMS["emrwgan"], "lr_d": 1e6, "lr_g": 1e6}.items()}
    cfg = compose(["model=emrwgan", "trainer=debug", "trainer.max_steps=50", "metrics=fast", "data.n_patients=300",
                   "data.n_codes=30", *[f"model.{k}={v}" for k, v in p.items()]])
    with pytest.raises(TrainingDiverged):
        pipeline.run(cfg, tmp_path)
    status = json.loads((tmp_path / "run.json").read_text())["status"]
    assert status.startswith("error: TrainingDiverged: emrwgan: the '")
