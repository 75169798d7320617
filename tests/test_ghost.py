"""Ghost clipping (models/ghost.py): the same per-record norms and clipped sums as explicit per-record gradients."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ehrbench.models import Trainer, build_synthesizer
from ehrbench.models.dp import DPConfig, per_record_path, private_gradient
from ehrbench.models.ghost import ghost_clipped_sum
from tests.conftest import TINY_PARAMS


class Net(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear, an Embedding over 2 positions, a Linear called twice (once on a
    3-D input), and a frozen Linear."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin1, self.ln, self.lin2 = nn.Linear(d, 6), nn.LayerNorm(6), nn.Linear(6, 3)
        self.emb = nn.Embedding(5, 4, padding_idx=0)
        self.shared = nn.Linear(4, 3)
        self.frozen = nn.Linear(d, 4).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin2(torch.relu(self.ln(self.lin1(x))))
        e = self.emb((x[:, :2] * 5).long().clamp(0, 4))  # (rows, 2, 4)
        return h + self.shared(e).sum(1) + self.shared(torch.tanh(self.frozen(x)))


class ToySynth:
    """A deterministic per-row loss; copy k of a record (row j, k = j mod K) gets a fixed offset pert[k]."""
    name = "toy"

    def __init__(self, d: int, K: int, reduction: str, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.modules_ = nn.ModuleDict({"net": Net(d)}).double()
        self.pert = 0.3 * torch.randn(K, d, dtype=torch.float64)
        self.K, self.row_reduction = K, reduction

    def loss(self, x: torch.Tensor, key: str) -> torch.Tensor:
        xp = x + self.pert[torch.arange(len(x)) % self.K]
        rows = ((self.modules_["net"](xp) - x[:, :3]) ** 2).sum(1)
        return rows.mean() if self.row_reduction == "mean" else rows.sum()


def explicit(synth, X, params, K):
    """Per-record gradients by a plain autograd loop: grad of the mean of the K copies' terms of record r (a "sum"
    loss of its K rows divided by K), flattened."""
    per_copy = 1 / K if synth.row_reduction == "sum" else 1
    return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        synth.loss(X[r:r + 1].repeat(K, 1), "net") * per_copy, params)]) for r in range(len(X))])


def close(a, b, rel):
    return float((a - b).norm()) <= rel * float(b.norm()) + 1e-12


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("K", [1, 4])
def test_toy_norms_and_clipped_sums_equal_explicit_per_record_gradients(K, reduction):
    toy = ToySynth(7, K, reduction)
    params = [p for p in toy.modules_.parameters() if p.requires_grad]
    X = torch.rand(9, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per = explicit(toy, X, params, K)
    norms = per.norm(dim=1)
    for C in (1e-6, float(norms.median()), 1e6):
        sums, value, ghost_norms = ghost_clipped_sum(toy, "net", X, params, K, C)
        assert close(ghost_norms, norms, 1e-5)
        factor = (C / (norms + 1e-6)).clamp(max=1.0)
        assert close(torch.cat([s.flatten() for s in sums]), factor @ per, 1e-5)
        records = [float(toy.loss(X[r:r + 1].repeat(K, 1), "net").detach()) / (K if reduction == "sum" else 1)
                   for r in range(9)]
        assert float(value) == pytest.approx(sum(records))
    s = len(X) if reduction == "mean" else 1 / K  # C huge: nothing clipped, the sum is s x the batch gradient
    batch = torch.autograd.grad(toy.loss(X.repeat_interleave(K, 0), "net"), params)
    assert close(torch.cat([g.flatten() for g in sums]), s * torch.cat([g.flatten() for g in batch]), 1e-5)


def model(name, tiny_data):
    base, extra = (name, {}) if name != "ehrdiff_cond" else ("ehrdiff", {"cond_label": True})
    m = build_synthesizer(base, **TINY_PARAMS[base], **extra)
    m._prepare_fit(tiny_data)
    m.init_training(m.n_features_, 0)
    return m, [p for g in m.optimizers_[next(iter(m.optimizers_))].param_groups for p in g["params"]]


@pytest.mark.parametrize("name", ["ehrdiff", "ehrdiff_cond", "vae", "tabddpm"])
def test_with_nothing_clipped_the_ghost_sum_is_the_batch_gradient(name, tiny_data):
    m, params = model(name, tiny_data)
    key, K, X = next(iter(m.optimizers_)), 3, torch.as_tensor(tiny_data.train[:8])
    torch.manual_seed(5)
    sums, _, _ = ghost_clipped_sum(m, key, X, params, K, 1e9)
    torch.manual_seed(5)
    batch = torch.autograd.grad(m.loss(X.repeat_interleave(K, 0), key), params)
    s = len(X) if m.row_reduction == "mean" else 1 / K
    assert close(torch.cat([g.flatten() for g in sums]) / s, torch.cat([g.flatten() for g in batch]), 1e-5)


def row_losses(m, x):
    """synth.loss's per-row terms, the same draws in the same order (ehrdiff.loss and vae.loss, unreduced)."""
    if m.name == "vae":
        net = m.modules_["vae"]
        eps = torch.randn(len(x), m.latent_dim)
        mu, logvar = net.encode(x)
        bce = F.binary_cross_entropy_with_logits(net.decode_logits(mu + eps * torch.exp(0.5 * logvar)), x,
                                                 reduction="none").sum(1)
        return bce - 0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    x, labels = m.split_label(x)
    if labels is not None:
        labels = torch.where(torch.rand(len(labels)) < m.label_dropout, torch.full_like(labels, 2), labels)
    sigma = (torch.randn(len(x), 1) * m.p_std + m.p_mean).exp()
    weight = (sigma ** 2 + m.sigma_data ** 2) / (sigma * m.sigma_data) ** 2
    D = m.denoise(m.modules_["net"], x + torch.randn_like(x) * sigma, sigma, labels)
    return (weight * (D - x) ** 2).mean(dim=1)


@pytest.mark.parametrize("name", ["ehrdiff", "ehrdiff_cond", "vae"])
@pytest.mark.parametrize("K", [1, 4])
def test_model_norms_equal_a_per_record_loop_over_the_same_draws(name, K, tiny_data):
    m, params = model(name, tiny_data)
    key, X = next(iter(m.optimizers_)), torch.as_tensor(tiny_data.train[:6])
    torch.manual_seed(7)
    _, _, norms = ghost_clipped_sum(m, key, X, params, K, 1.0)
    torch.manual_seed(7)
    rows = row_losses(m, X.repeat_interleave(K, 0)).reshape(len(X), K)
    torch.manual_seed(7)
    assert float((rows.mean() if m.row_reduction == "mean" else rows.sum()).detach()) == pytest.approx(
        float(m.loss(X.repeat_interleave(K, 0), key).detach()), rel=1e-6)  # the replay draws what loss drew
    shares = rows.mean(1)  # each record's K-copy loss: the mean of its copies' terms (a "sum" loss too)
    ref = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(v, params, retain_graph=True)]).norm()
                       for v in shares])
    assert close(norms, ref, 1e-4)


@pytest.mark.parametrize("name, key, path", [("ehrdiff", "net", "ghost"), ("vae", "vae", "ghost"),
                                             ("tabddpm", "net", "ghost"), ("emrwgan", "d", "loop")])
def test_auto_takes_ghost_where_it_applies(name, key, path, tiny_data):
    m, _ = model(name, tiny_data)
    params = [p for g in m.optimizers_[key].param_groups for p in g["params"]]
    assert per_record_path(m, key, params, "auto") == path
    assert per_record_path(m, key, params, "vmap") == ("loop" if name == "emrwgan" else "vmap")


def test_forcing_ghost_on_a_gradient_penalty_is_refused_before_training(tiny_data, tmp_path):
    t = Trainer(device="cpu", progress=False, budget="steps", max_steps=2, workdir=tmp_path,
                dp={"epsilon": 5.0, "delta": 1e-4, "per_record": "ghost"})
    with pytest.raises(ValueError, match=r"^emrwgan: trainer.dp.per_record=ghost cannot clip the 'd' loss, because its "
                                         r"loss differentiates inside itself \(a gradient penalty\); use per_record"):
        build_synthesizer("emrwgan", **TINY_PARAMS["emrwgan"]).fit(tiny_data, t)
    assert not (tmp_path / "train_stats.jsonl").exists()


class Sneaky(ToySynth):
    """lin1's weight also enters the loss outside lin1's forward: only the run-time check can see it."""

    def loss(self, x, key):
        return super().loss(x, key) + (self.modules_["net"].lin1.weight ** 2).sum() * 0.1


def test_a_failed_run_time_check_falls_back_to_vmap_or_is_refused_when_forced():
    X = torch.rand(5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    toy = Sneaky(7, 1, "mean")
    params = [p for p in toy.modules_.parameters() if p.requires_grad]
    with pytest.raises(ValueError, match="per_record=ghost cannot clip the 'net' loss, because its per-record "
                                         "gradients do not add up to the batch gradient"):
        private_gradient(toy, "net", X, params, DPConfig(1.0, 1e-5, per_record="ghost"), 0.0, 5.0, torch.Generator())
    paths = {}
    toy = Sneaky(7, 1, "mean")
    params = [p for p in toy.modules_.parameters() if p.requires_grad]
    private_gradient(toy, "net", X, params, DPConfig(1.0, 1e-5), 0.0, 5.0, torch.Generator(), paths)
    assert paths == {"net": "vmap"}
    assert per_record_path(toy, "net", params, "auto") == "vmap"  # remembered: later steps skip ghost


def test_a_dp_run_records_the_path_it_took(tiny_data):
    t = Trainer(device="cpu", progress=False, budget="steps", max_steps=2, dp={"epsilon": 5.0, "delta": 1e-4})
    build_synthesizer("vae", **TINY_PARAMS["vae"]).fit(tiny_data, t)
    assert t.dp_report()["dp"]["per_record_path"] == {"vae": "ghost"}
    assert t.dp_report()["dp"]["per_record"] == "auto"
