"""Differential privacy: calibration, per-record clipping, equality with opacus, bad input, recording of epsilon."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ehrbench.models import SYNTHESIZERS, Trainer, TorchSynthesizer, build_synthesizer
from ehrbench.models.dp import DPConfig, calibrate_noise, dp_config, epsilon_spent, private_gradient
from tests.conftest import TINY_PARAMS, skip_unavailable

HISTORIES = [[(0.01, 1000)], [(256 / 41868, 500)], [(0.1, 50), (0.02, 300)]]


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("target", [1.0, 10.0])
def test_calibrated_noise_spends_the_target_epsilon_within_one_percent(history, target):
    cfg = DPConfig(epsilon=target, delta=1e-5)
    sigma = calibrate_noise(cfg, history, "m")
    spent = epsilon_spent(sigma, history, 1e-5, "rdp")
    assert 0.99 * target <= spent <= target


def test_calibration_agrees_with_opacus_and_prv_works():
    from opacus.accountants.utils import get_noise_multiplier

    ours = calibrate_noise(DPConfig(epsilon=3.0, delta=1e-5), [(0.01, 2000)], "m")
    theirs = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.01, steps=2000,
                                  accountant="rdp", epsilon_tolerance=0.01)
    assert ours == pytest.approx(theirs, rel=0.02)
    prv = calibrate_noise(DPConfig(epsilon=3.0, delta=1e-5, accountant="prv"), [(0.01, 2000)], "m")
    assert 0.99 * 3.0 <= epsilon_spent(prv, [(0.01, 2000)], 1e-5, "prv") <= 3.0


def fitted_for_dp(name, tiny_data):
    m = build_synthesizer(name, **TINY_PARAMS[name])
    m._prepare_fit(tiny_data)
    m.init_training(m.n_features_, 0)
    return m


@pytest.mark.parametrize("name", ["ehrdiff", "vae", "emrwgan"])
@pytest.mark.parametrize("K", [1, 4])
def test_every_per_record_gradient_is_clipped_to_C(name, K, tiny_data):
    """With no noise, a one-record batch's gradient times the batch size is that record's clipped gradient;
    with C far below the raw norms every record lands exactly on norm C."""
    m = fitted_for_dp(name, tiny_data)
    key = "d" if name == "emrwgan" else next(iter(m.optimizers_))
    params = [p for g in m.optimizers_[key].param_groups for p in g["params"]]
    X = torch.as_tensor(tiny_data.train[:6])
    for C in (1e-3, 1e3):
        cfg = DPConfig(epsilon=1.0, delta=1e-5, max_grad_norm=C, noise_multiplicity=K)
        norms = []
        for r in range(len(X)):
            torch.manual_seed(r)
            private_gradient(m, key, X[r:r + 1], params, cfg, 0.0, 1.0, torch.Generator().manual_seed(0))
            norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params)))
        assert max(norms) <= C * (1 + 1e-5)
        if C == 1e-3:
            assert min(norms) >= C * 0.999


class Toy(TorchSynthesizer):
    """A deterministic per-record loss (mean squared error of a small MLP to a fixed target)."""
    row_reduction = "mean"

    def __init__(self) -> None:
        pass

    def build(self, n_features):
        return nn.ModuleDict({"net": nn.Sequential(nn.Linear(n_features, 8), nn.Tanh(), nn.Linear(8, 1))})

    def optimizers(self):
        return {"net": torch.optim.SGD(self.modules_.parameters(), lr=1.0)}

    def loss(self, x, key):
        return ((self.modules_["net"](x).squeeze(1) - x.sum(1)) ** 2).mean()


@pytest.mark.parametrize("per_record", ["vmap", "ghost"])
def test_with_one_draw_the_mechanism_equals_opacus_make_private(per_record):
    """The same clipped sum and, from the same seed, the same Gaussian noise (sigma 0.7) as opacus."""
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    X = (torch.rand(32, 5) < 0.4).float()
    ours = Toy()
    ours.name = "toy"
    ours.n_features_ = 5
    ours.init_training(5, seed=1)
    net = ours.modules_["net"]
    theirs = Toy()
    theirs.init_training(5, seed=1)
    params = list(ours.modules_.parameters())
    cfg = DPConfig(epsilon=1.0, delta=1e-5, max_grad_norm=0.5, per_record=per_record)
    paths = {}
    private_gradient(ours, "net", X, params, cfg, 0.7, float(len(X)), torch.Generator().manual_seed(0), paths)
    assert paths == {"net": per_record}
    model = theirs.modules_["net"]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=len(X))
    model, opt, loader = PrivacyEngine().make_private(module=model, optimizer=opt, data_loader=loader,
                                                      noise_multiplier=0.7, max_grad_norm=0.5, poisson_sampling=False,
                                                      noise_generator=torch.Generator().manual_seed(0))
    opt.zero_grad()
    ((model(X).squeeze(1) - X.sum(1)) ** 2).mean().backward()
    opt.step()
    with torch.no_grad():
        for p in params:
            p -= p.grad  # the same SGD step, lr 1
    for a, b in zip(net.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a, b)


class SummedToy(Toy):
    """Toy's loss summed over rows instead of averaged."""
    row_reduction = "sum"

    def loss(self, x, key):
        return ((self.modules_["net"](x).squeeze(1) - x.sum(1)) ** 2).sum()


@pytest.mark.parametrize("per_record", ["vmap", "ghost"])
def test_noise_multiplicity_averages_the_copies_of_a_summed_loss(per_record):
    """With K = 4 copies a record's gradient is the mean of its copies' gradients whether the loss sums or averages
    its rows (DPDM averages before clipping), so the two toys get the same private gradient."""
    X = (torch.rand(16, 5, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    cfg = DPConfig(epsilon=1.0, delta=1e-5, max_grad_norm=1e6, noise_multiplicity=4, per_record=per_record)
    grads = []
    for cls in (Toy, SummedToy):
        m = cls()
        m.name = "toy"
        m.init_training(5, seed=1)
        params = list(m.modules_.parameters())
        private_gradient(m, "net", X, params, cfg, 1e-3, float(len(X)), torch.Generator().manual_seed(0))
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_a_dp_run_trains_and_records_epsilon(tiny_data, tmp_path):
    t = Trainer(device="cpu", progress=False, budget="steps", max_steps=8, workdir=tmp_path,
                dp={"epsilon": 5.0, "delta": 1e-4, "noise_multiplicity": 2})
    m = build_synthesizer("vae", **TINY_PARAMS["vae"]).fit(tiny_data, t)
    report = t.budget_report()
    assert 4.95 <= report["epsilon"] <= 5.0 and report["dp"]["dp_steps"] == [8]
    assert report["dp"]["sample_rates"] == [64 / len(tiny_data.train)]
    assert report["dp"]["per_record_path"] == {"vae": "ghost"}
    assert m.sample(10).shape == (10, tiny_data.n_features)
    assert [json.loads(l)["step"] for l in (tmp_path / "train_stats.jsonl").read_text().splitlines()][-1] == 8


REFUSED = {"corgan": "its autoencoder is pretrained on the records with batch norm",
           "medgan": "its discriminator's minibatch averaging", "real": "model 'real' trains nothing under trainer.dp",
           "independent": "model 'independent' trains nothing under trainer.dp",
           "external": "model 'external' trains nothing under trainer.dp"}  # refused before its file is read


PRIVATE_PARAMS = {"tabddpm": {"normalization": "none"}}  # its quantile transform is fitted outside DP-SGD


@pytest.mark.parametrize("name", sorted(SYNTHESIZERS))
def test_every_generator_trains_privately_or_refuses_in_one_sentence(name, tiny_data):
    """trainer.dp on every registered generator: it spends the target epsilon (within 1 %, never above), or it is
    refused before training in one sentence that names the alternative."""
    skip_unavailable(name)
    t = Trainer(device="cpu", progress=False, budget="steps", max_steps=3, dp={"epsilon": 5.0, "delta": 1e-4})
    model = build_synthesizer(name, **TINY_PARAMS.get(name, {}), **PRIVATE_PARAMS.get(name, {}))
    if name in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[name]) as e:
            model.fit(tiny_data, t)
        assert str(e.value).count(". ") == 0 and len(str(e.value).splitlines()) == 1
        return
    model.fit(tiny_data, t)
    assert 4.95 <= t.budget_report()["epsilon"] <= 5.0
    assert model.sample(5, seed=0).shape == (5, tiny_data.n_features)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["ehrdiff", "vae"])
def test_a_dp_run_on_cuda_clips_by_ghost_and_records_epsilon(name, tiny_data, tmp_path):
    t = Trainer(device="cuda", progress=False, budget="steps", max_steps=4, workdir=tmp_path,
                dp={"epsilon": 5.0, "delta": 1e-4, "noise_multiplicity": 2})
    m = build_synthesizer(name, **TINY_PARAMS[name]).fit(tiny_data, t)
    report = t.budget_report()
    assert 4.95 <= report["epsilon"] <= 5.0 and set(report["dp"]["per_record_path"].values()) == {"ghost"}
    assert m.sample(10, seed=0).shape == (10, tiny_data.n_features)


def test_not_private_is_the_unchanged_code_path(tiny_data):
    """epsilon = inf is no DP at all: the same weights as a trainer without trainer.dp, bit for bit."""
    a = build_synthesizer("ehrdiff", **TINY_PARAMS["ehrdiff"]).fit(
        tiny_data, Trainer(device="cpu", progress=False, budget="steps", max_steps=5))
    b = build_synthesizer("ehrdiff", **TINY_PARAMS["ehrdiff"]).fit(
        tiny_data, Trainer(device="cpu", progress=False, budget="steps", max_steps=5,
                           dp={"epsilon": float("inf"), "delta": 1e-5}))
    for k, v in a.state_tensors().items():
        assert torch.equal(v, b.state_tensors()[k]), k


@pytest.mark.parametrize("dp, match", [
    ({"epsilon": 0, "delta": 1e-5}, "trainer.dp.epsilon must be a number > 0"),
    ({"epsilon": 1, "delta": 1.5}, r"trainer.dp.delta must lie in \(0, 1\)"),
    ({"epsilon": 1}, "trainer.dp needs epsilon and delta"),
    ({"epsilon": 1, "delta": 1e-5, "sigma": 2}, "trainer.dp has no option 'sigma'; valid choices: epsilon, delta"),
    ({"epsilon": 1, "delta": 1e-5, "accountant": "gdp"}, "unknown trainer.dp.accountant 'gdp'; valid choices: rdp, prv"),
    ({"epsilon": 1, "delta": 1e-5, "per_record": "opacus"},
     "unknown trainer.dp.per_record 'opacus'; valid choices: auto, vmap, ghost"),
])
def test_bad_dp_options_are_one_sentence(dp, match):
    with pytest.raises(ValueError, match=match):
        dp_config(dp)


def test_dp_with_half_precision_is_refused():
    with pytest.raises(ValueError, match="trainer.dp needs precision fp32"):
        dp_config({"epsilon": 1, "delta": 1e-5}, "fp16")


@pytest.mark.parametrize("name, dp, params, match", [
    ("vae", {"epsilon": 1, "delta": 0.01}, {}, r"vae: trainer.dp.delta 0.01 is not below 1/N = 0.00208"),
    ("vae", {"epsilon": 1, "delta": 1e-5}, {"batch_size": 5000}, "the batch size 5,000 is larger than the 480"),
    ("vae", {"epsilon": 1e-4, "delta": 1e-5}, {"batch_size": 480, "epochs": 400},
     "vae: no noise multiplier reaches epsilon 0.0001"),
    ("medgan", {"epsilon": 1, "delta": 1e-5}, {}, "medgan: its discriminator's minibatch averaging"),
])
def test_impossible_private_runs_fail_before_training(name, dp, params, match, tiny_data, tmp_path):
    t = Trainer(device="cpu", progress=False, budget="paper", workdir=tmp_path, dp=dp)
    with pytest.raises(ValueError, match=match):
        build_synthesizer(name, **{**TINY_PARAMS[name], **params}).fit(tiny_data, t)
    assert not (tmp_path / "train_stats.jsonl").exists()


def test_dp_independent_adds_the_calibrated_noise_and_records_epsilon(tiny_data):
    errors = {}
    for eps in (0.5, 50.0):
        errs = []
        for seed in range(3):
            t = Trainer(device="cpu", seed=seed, dp={"epsilon": eps, "delta": 1e-5})
            m = build_synthesizer("dp_independent").fit(tiny_data, t)
            d = tiny_data.n_features
            sigma = calibrate_noise(DPConfig(epsilon=eps, delta=1e-5), [(1.0, 1)], "m")
            assert m.sigma_ == pytest.approx(sigma * math.sqrt(d + 1))
            assert 0.99 * eps <= t.dp_report()["epsilon"] <= eps
            clean = tiny_data.train.sum(0)
            errs.append(np.abs(m.release_[:-1] - clean).mean())
        errors[eps] = np.mean(errs)
    assert errors[0.5] > 10 * errors[50.0]  # noise falls as epsilon grows (std ratio ~ 60x here)


def test_epsilon_reaches_run_json_every_row_and_the_leaderboard(tmp_path):
    from ehrbench.models import pipeline
    from ehrbench.reports import write_report
    from tests.conftest import compose

    tiny = ["trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=20", "model.hidden_dim=16",
            "model.latent_dim=4", "model.batch_size=32"]
    for sub, extra in (("private", ["trainer.dp={epsilon:5,delta:0.001}"]), ("plain", [])):
        cfg = compose(["model=vae", *tiny, *extra])
        info = pipeline.run(cfg, tmp_path / "runs" / "t" / "synthetic" / sub / "seed_0")
        rows = [json.loads(l) for l in (tmp_path / "runs" / "t" / "synthetic" / sub / "seed_0" /
                                        "results.jsonl").read_text().splitlines()]
        if sub == "private":
            assert 4.95 <= info["epsilon"] <= 5.0 and info["dp"]["noise_multiplier"] > 0
            assert all(r["epsilon"] == info["epsilon"] for r in rows)
        else:
            assert info["epsilon"] is None and all(r["epsilon"] is None for r in rows)
    paths = write_report(tmp_path / "runs", tmp_path / "report", figures=False)
    board = paths["markdown"].read_text()
    assert "| vae (ε=5) |" in board and "| vae |" in board and "ε spent" in board
    row = next(l for l in board.splitlines() if l.startswith("| vae (ε=5) |") and l.endswith("| cpu |"))  # summary
    import re
    assert re.search(r"\| 4\.9\d* \| cpu \|$", row), row  # the spent epsilon, just under the target 5
    plain = next(l for l in board.splitlines() if l.startswith("| vae |") and l.endswith("| cpu |"))
    assert plain.endswith("| — | cpu |")  # not private: no epsilon
