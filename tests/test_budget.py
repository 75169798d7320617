"""Training budgets: paper = fraction 1.0 step for step, lr and EMA in paper time, equal compute, one-sentence errors."""
import json

import numpy as np
import pytest
import torch

from ehrbench.models import SYNTHESIZERS, Trainer, build_synthesizer
from ehrbench.models.base import TorchSynthesizer
from ehrbench.models.budget import ema_decay_product
from tests.conftest import TINY_PARAMS

TORCH_MODELS = sorted(n for n in TINY_PARAMS if issubclass(SYNTHESIZERS[n], TorchSynthesizer))


def fit(name, data, tmp_path, **budget):
    m = build_synthesizer(name, **TINY_PARAMS[name])
    t = Trainer(device="cpu", progress=False, log_every=1, checkpoint_every=10_000, workdir=tmp_path, **budget)
    m.fit(data, t)
    stats = [json.loads(line) for line in (tmp_path / "train_stats.jsonl").read_text().splitlines()]
    return m, t, stats


def test_ema_decay_product_is_the_official_warmup():
    """Integer intervals give the per-update product of min(cap, (1 + n) / (10 + n)), n = 1, 2, ... (first 2/11)."""
    per_update = [min(0.999, (1 + n) / (10 + n)) for n in range(1, 20001)]
    assert ema_decay_product(0, 1, 0.999) == pytest.approx(2 / 11, rel=1e-12)
    for a, b in ((0, 5), (3, 40), (8980, 9000), (100, 20000)):
        assert ema_decay_product(a, b, 0.999) == pytest.approx(np.prod(per_update[a:b]), rel=1e-9)
    # a step that stands for s paper updates applies their product: 10 steps of stride 5 = 50 updates
    prod = np.prod([ema_decay_product(5 * k, 5 * (k + 1), 0.999) for k in range(10)])
    assert prod == pytest.approx(np.prod(per_update[:50]), rel=1e-9)


def test_fraction_one_reproduces_paper_step_for_step(tiny_data, tmp_path):
    a, ta, sa = fit("ehrdiff", tiny_data, tmp_path / "paper", budget="paper")
    b, tb, sb = fit("ehrdiff", tiny_data, tmp_path / "frac", budget="fraction", fraction=1.0)
    assert [r["lr"] for r in sa] == [r["lr"] for r in sb] and len(sa) == ta.phases_["train"]["paper_steps"]
    for k, v in a.state_tensors().items():
        assert torch.equal(v, b.state_tensors()[k]), k  # weights and EMA weights (hence every EMA decay)
    assert ta.budget_report()["fraction_of_paper"] == tb.budget_report()["fraction_of_paper"] == 1.0


def test_lr_under_a_fraction_is_the_paper_lr_at_paper_time(tiny_data, tmp_path):
    m, t, stats = fit("ehrdiff", tiny_data, tmp_path, budget="fraction", fraction=0.5)
    ph = t.phases_["train"]
    total, steps = ph["paper_steps"], ph["steps"]
    assert steps == round(0.5 * total)
    lr0 = m.lr
    for row in stats:  # row logged after step `done`; that step's lr was set at paper time (done - 1) * total / steps
        paper_t = int((row["step"] - 1) * total / steps)
        assert row["lr"]["net"] == pytest.approx(lr0 * m.lr_scale(paper_t, total), rel=1e-12)


def test_ema_horizon_is_in_paper_time(tiny_data, tmp_path):
    """Half the steps, each standing for two paper updates: the EMA decays of the run multiply to the paper's."""
    m, t, _ = fit("ehrdiff", tiny_data, tmp_path, budget="fraction", fraction=0.5)
    total, steps = t.phases_["train"]["paper_steps"], t.phases_["train"]["steps"]
    stride = total / steps
    run = np.prod([ema_decay_product(k * stride, (k + 1) * stride, 0.999) for k in range(steps)])
    assert run == pytest.approx(np.prod([min(0.999, (1 + n) / (10 + n)) for n in range(1, total + 1)]), rel=1e-9)
    assert m.n_ema_ == steps


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_equal_compute_gives_the_same_flops_within_one_step(tiny_data, tmp_path, name):
    F = 4e7
    _, t, _ = fit(name, tiny_data, tmp_path, budget="compute", flops=F)
    r = t.budget_report()
    per_step = [p["flops_per_step"] for p in r["phases"].values()]
    assert min(per_step) > 0 and abs(r["train_flops"] - F) <= max(per_step), (r["train_flops"], per_step)
    assert all(p["steps"] == round(r["budget_fraction"] * p["paper_steps"]) for p in r["phases"].values())
    assert r["fraction_of_paper"] == pytest.approx(r["train_flops"] / r["paper_flops"])


def test_flops_are_counted_by_torch_not_by_hand(tiny_data):
    """One EHRDiff step at batch B: forward 2 B (in x out) per Linear, backward twice that (FlopCounterMode)."""
    from ehrbench.models.budget import Phase, step_flops

    m = build_synthesizer("ehrdiff", **TINY_PARAMS["ehrdiff"])
    d = tiny_data.n_features
    m.init_training(d)
    X = torch.as_tensor(tiny_data.train, dtype=torch.float32)
    B = 64
    dims = [d, 32, 16, 32, d]
    linears = [(d, 16), (16, 16)] + [(16, a) for a in dims[:-1]] + list(zip(dims[:-1], dims[1:]))
    fwd = sum(2 * B * a * b for a, b in linears)
    # backward: input and weight gradients (2x forward) except the first time-MLP layer, whose input needs none
    bwd = 2 * fwd - 2 * B * d * 16
    assert step_flops(m, X, Phase("train", 10, B, ("net",))) == fwd + bwd


def test_reference_budget_is_the_reference_generators_flops(tiny_data):
    """budget=compute with reference=ehrdiff, reference_steps=2: a tiny VAE gets the FLOPs of two paper-default
    EHRDiff steps on this data (measured separately here), within one of its own steps."""
    from ehrbench.models.budget import step_flops

    X = torch.as_tensor(tiny_data.train, dtype=torch.float32)
    ref = build_synthesizer("ehrdiff")
    ref.init_training(X.shape[1])
    F = 2 * step_flops(ref, X, ref.plan(len(X))[0])
    m = build_synthesizer("vae", **TINY_PARAMS["vae"])
    m.init_training(X.shape[1])
    t = Trainer(device="cpu", budget="compute", reference="ehrdiff", reference_steps=2)
    steps = t._resolve_budget(m, X, m.plan(len(X))[0])
    c = t.phases_["train"]["flops_per_step"]
    assert abs(steps * c - F) <= c and t.budget_report()["budget_reference"] == "2 x ehrdiff"


@pytest.mark.parametrize("kw, match", [
    (dict(budget="weekly"), "unknown trainer.budget 'weekly'; valid choices: paper, fraction, compute, steps"),
    (dict(budget="fraction"), "trainer.budget=fraction needs trainer.fraction > 0"),
    (dict(budget="compute"), "trainer.budget=compute needs trainer.flops"),
    (dict(budget="paper", max_steps=5), "trainer.max_steps=5 only applies with trainer.budget=steps"),
])
def test_bad_budgets_fail_in_one_sentence(kw, match):
    with pytest.raises(ValueError, match=match):
        Trainer(device="cpu", **kw)


@pytest.mark.parametrize("name, phase", [("medgan", "pretrain"), ("ehrdiff", "train"), ("vae", "train"),
                                         ("emrwgan", "train")])
@pytest.mark.parametrize("mode", ["fraction", "compute"])
def test_a_budget_below_one_step_names_the_generator_and_numbers(name, phase, mode, tiny_data, tmp_path):
    m = build_synthesizer(name, **TINY_PARAMS[name])
    kw = dict(fraction=1e-6) if mode == "fraction" else dict(flops=1.0)
    t = Trainer(device="cpu", progress=False, workdir=tmp_path, budget=mode, **kw)
    share = "trainer.fraction" if mode == "fraction" else "its share of trainer.flops"
    with pytest.raises(ValueError, match=rf"{name}: the budget gives phase '{phase}' .* x [\d,]+ paper steps = .* "
                                         rf"fewer than one \(budget={mode}, .* = {share}\); raise the budget"):
        m.fit(tiny_data, t)
    assert not (tmp_path / "train_stats.jsonl").exists() or not (tmp_path / "train_stats.jsonl").read_text()


def test_curve_points_leave_training_untouched(tiny_data, tmp_path):
    """Sampling and scoring at eval_at points must not change the trained model (training randomness is per
    step, and the sampler's generator is its own); the points arrive at the requested shares of the FLOPs."""
    a, ta, _ = fit("ehrdiff", tiny_data, tmp_path / "plain", budget="fraction", fraction=0.5)
    m = build_synthesizer("ehrdiff", **TINY_PARAMS["ehrdiff"])
    t = Trainer(device="cpu", progress=False, checkpoint_every=10_000, workdir=tmp_path / "curve", budget="fraction",
                fraction=0.5)
    points = []
    t.eval_at = [0.25, 0.5, 1.0]
    t.on_eval = lambda synth, p: points.append((p, synth.sample(50, seed=0).mean()))
    m.fit(tiny_data, t)
    for k, v in a.state_tensors().items():
        assert torch.equal(v, m.state_tensors()[k]), k
    total = t.budget_report()["train_flops"]
    assert [p["fraction"] for p, _ in points] == [0.25, 0.5, 1.0]
    c = t.phases_["train"]["flops_per_step"]
    assert all(q * total <= p["train_flops"] < q * total + c for (p, _), q in zip(points, [0.25, 0.5, 1.0]))
    assert points[-1][0]["train_flops"] == total and points[-1][0]["step"] == t.phases_["train"]["steps"]


def test_the_reference_itself_is_measured_once(tiny_data, monkeypatch):
    """Training the reference at paper defaults sizes its budget from its own FLOPs per step: no second model is
    built (one FlopCounter pass per phase), and the budget equals the one sized from a separate reference model."""
    import ehrbench.models.budget as budget

    X = torch.as_tensor(tiny_data.train, dtype=torch.float32)
    separate = budget.reference_flops("ehrdiff", 3, X, 0)
    calls = []
    counted = budget.step_flops
    monkeypatch.setattr(budget, "step_flops", lambda *a: calls.append(1) or counted(*a))
    import ehrbench.models.trainer as trainer_mod
    monkeypatch.setattr(trainer_mod, "step_flops", budget.step_flops)
    m = build_synthesizer("ehrdiff")
    m.init_training(X.shape[1])
    t = Trainer(device="cpu", budget="compute", reference="ehrdiff", reference_steps=3)
    t._resolve_budget(m, X, m.plan(len(X))[0])
    assert len(calls) == 1
    assert t.fraction_ == pytest.approx(separate / (t.phases_["train"]["paper_steps"]
                                                    * t.phases_["train"]["flops_per_step"]))


def test_sampling_flops_per_1000_records_by_hand():
    """A generator whose sample() is one Linear(4 -> 3) on n noise rows: 2 * 4 * 3 FLOPs per record, 24,000 per
    1,000; a generator without torch modules records None."""
    from ehrbench.models.budget import sample_flops

    class OneLayer:
        modules_ = torch.nn.ModuleDict({"net": torch.nn.Linear(4, 3)})

        def sample(self, n, seed=0):
            return self.modules_["net"](torch.randn(n, 4)).detach().numpy()

    assert sample_flops(OneLayer(), n=50) == pytest.approx(24_000)
    assert sample_flops(object()) is None
    state = torch.random.get_rng_state()
    sample_flops(OneLayer())
    assert torch.equal(state, torch.random.get_rng_state())  # counting leaves the global randomness untouched


def test_reports_price_sampling_per_1000_records_and_in_total():
    import pandas as pd

    from ehrbench.reports.load import cost_columns

    runs = pd.DataFrame({"n_samples": [2000, 500, None], "sample_seconds": [4.0, 1.0, 3.0],
                         "train_flops": [1e12, 0.0, 5e11], "sample_flops_per_1000": [3e9, None, 1e9]})
    c = cost_columns(runs)
    assert c["sample_seconds_per_1000"].tolist()[:2] == [2.0, 2.0] and np.isnan(c["sample_seconds_per_1000"][2])
    assert c["total_flops"][0] == 1e12 + 6e9 and np.isnan(c["total_flops"][1]) and np.isnan(c["total_flops"][2])
