"""The one-run canary audit: its bound against independent computations, and its power on copied and broken runs."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from ehrbench.models import pipeline
from ehrbench.data import load_dataset
from ehrbench.models import SYNTHESIZERS, TorchSynthesizer
from ehrbench.metrics import canary
from ehrbench.reports import build_tables, load_runs
from ehrbench.reports.render import sections
from tests.conftest import TINY_PARAMS, compose, skip_unavailable


def brute_p_value(m, r, v, eps, delta):
    """Theorem 3.2 of Steinke, Nasr & Jagielski (2023) term by term."""
    q = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(stats.binom.pmf(j, r, q) for j in range(v, r + 1))
    alpha = max(sum(stats.binom.pmf(j, r, q) for j in range(v - i, v)) / i for i in range(1, v + 1))
    return min(1.0, tail + 2 * m * delta * alpha)


@pytest.mark.parametrize("m, r, v, eps, delta", [(100, 20, 18, 0.5, 1e-5), (512, 64, 60, 1.0, 1e-3),
                                                 (64, 8, 8, 2.0, 0.0), (200, 50, 20, 0.0, 1e-5)])
def test_p_value_matches_the_theorem_term_by_term(m, r, v, eps, delta):
    assert canary.audit_p_value(m, r, v, eps, delta) == pytest.approx(brute_p_value(m, r, v, eps, delta), rel=1e-9)


def test_lower_bound_has_the_closed_form_for_all_correct_guesses():
    """delta = 0, r of r correct: q^r = beta, so epsilon = log(q / (1 - q)) with q = beta^(1/r)."""
    for r in (10, 64, 256):
        q = 0.05 ** (1 / r)
        assert canary.epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert canary.epsilon_lower_bound(100, 100, 50, 1e-5) == 0.0  # chance accuracy rejects nothing


def test_guesses_take_the_best_k_at_a_bonferroni_level():
    included = np.array([True] * 40 + [False] * 88)
    perfect = canary.guess_bound(np.r_[np.ones(40), np.zeros(88)] + np.linspace(0, 0.1, 128), included, 1e-5)
    # k = 1, 2, ..., 64 (7 counts); the best is the largest k with every guess right: 32
    assert perfect["guesses"] == 32 and perfect["correct"] == 32
    assert perfect["value"] == pytest.approx(canary.epsilon_lower_bound(128, 32, 32, 1e-5, 0.05 / 7))
    blind = canary.guess_bound(np.random.default_rng(0).random(128), included, 1e-5)
    assert blind["value"] == 0.0


def test_canaries_are_far_records_half_of_them_in_training():
    data = load_dataset("synthetic", n_patients=400, n_codes=40)
    C, inc = canary.make_canaries(data, 200, seed=3)
    b = data.binary_mask
    width = round(float(data.train[:, b].sum(1).mean()))
    assert C.shape == (200, data.n_features) and (C[:, b].sum(1) == width).all()
    assert 70 < inc.sum() < 130
    C2, inc2 = canary.make_canaries(data, 200, seed=3)
    assert (C == C2).all() and (inc == inc2).all()
    fit = canary.with_canaries(data, C, inc)
    assert len(fit.train) == len(data.train) + inc.sum() and (fit.holdout == data.holdout).all()
    with pytest.raises(ValueError, match="at least 2"):
        canary.make_canaries(data, 1, seed=0)


TINY = ["data.n_patients=100", "data.n_codes=30", "metrics=fast", "canaries=64"]
VAE = ["model=vae", "model.hidden_dim=256", "model.latent_dim=64", "model.lr=3e-3", "model.batch_size=64",
       "trainer=dp", "trainer.dp.epsilon=0.5", "trainer.budget=steps", "trainer.max_steps=1000", "trainer.device=cpu"]


def test_the_audit_flags_a_copy_of_train_and_a_noise_free_private_run_but_not_a_correct_one(tmp_path, monkeypatch):
    pipeline.run(compose(["model=real", "trainer=debug", *TINY[:2], "metrics=fast", "canaries=512",
                               "tag=copy"]), tmp_path / "copy")
    pipeline.run(compose([*VAE, *TINY, "tag=dp"]), tmp_path / "dp" / "correct")
    import ehrbench.models.step as step

    honest = step.private_step
    monkeypatch.setattr(step, "private_step", lambda *a: honest(*a[:6], 0.0, *a[7:]))  # sigma 0, same accounting
    pipeline.run(compose([*VAE, *TINY, "tag=dp", "seed=1"]), tmp_path / "dp" / "broken")
    rs = load_runs(tmp_path)
    lb = rs.results[rs.results["metric"] == "canary_epsilon"].set_index("path")["value"]
    eps = rs.runs.set_index("path")["epsilon"]
    assert lb["copy"] > 1.0  # a verbatim copy of train is flagged above epsilon = 1
    assert lb["dp/broken"] > eps["dp/broken"] and lb["dp/correct"] <= eps["dp/correct"]
    f = rs.failures[rs.failures["metric"] == "canary_epsilon"]
    assert list(f["path"]) == ["dp/broken"] and "not as private as it reports" in f["reason"].iloc[0]
    tables = build_tables(rs)
    notes = [n for t in tables for n in t.notes if n.startswith("canary audit")]
    assert any("1 above it (dp/broken)" in n for n in notes)
    (dp,) = [t for t in tables if t.tag == "dp"]
    (frame,) = [f for title, f, _ in sections(dp) if title.startswith("Privacy audit (canaries")]
    assert frame["above the accounted ε"].tolist() == ["**yes**"] and frame.index.tolist() == ["vae (ε=0.5)"]
    assert frame["empirical ε lower bound (per seed)"].iloc[0] == f"{lb['dp/correct']:.2f} / {lb['dp/broken']:.2f}"


@pytest.mark.parametrize("name", sorted(n for n in SYNTHESIZERS if n != "external"))
def test_every_generator_can_be_audited(name, tmp_path):
    """The audit row comes out of every registered generator (GANs with a gradient penalty or a DP refusal too),
    with the white-box attack wherever there is a torch loss."""
    skip_unavailable(name)
    tiny = [f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_PARAMS.get(name, {}).items()]
    info = pipeline.run(compose([f"model={name}", "trainer=debug", "metrics={}", "data.n_patients=200",
                                      "data.n_codes=20", "canaries=16", *tiny]), tmp_path)
    (row,) = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines() if "canary_epsilon" in l]
    assert info["status"] == "ok" and row["status"] == "ok" and row["value"] >= 0 and row["canaries"] == 16
    torch_model = isinstance(SYNTHESIZERS[name](), TorchSynthesizer)
    assert row["attacks"] == (["distance", "loss"] if torch_model else ["distance"])


def test_bad_canary_counts_are_refused_before_any_work():
    for bad in ("1", "-4", "2.5"):
        with pytest.raises(ValueError, match="canaries must be 0 .no audit. or an integer of at least 2"):
            pipeline.validate(compose([f"canaries={bad}"]))
