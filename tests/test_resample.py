"""resample_from (models/resample.py): a trained run's generator sampled and scored again with new sampling settings."""
import json

import numpy as np
import pytest

from ehrbench.models import pipeline
from ehrbench.models.resample import load_trained
from tests.conftest import TINY_PARAMS, compose

TINY = ["trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=30", "model=ehrdiff_cond",
        *[f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_PARAMS["ehrdiff"].items()]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    assert pipeline.run(compose(TINY), d)["status"] == "ok"
    return d


def test_resampling_with_guidance_skips_training_and_keeps_the_source_budget(trained, tmp_path):
    src = json.loads((trained / "run.json").read_text())
    cfg = compose([*TINY, f"resample_from={trained}", "model.guidance_scale=2", "model.label=ehrdiff_cond_w2"])
    info = pipeline.run(cfg, tmp_path)
    assert info["status"] == "ok" and info["resampled_from"]["path"] == str(trained.resolve())
    assert info["fit_seconds"] == src["fit_seconds"] and info["phases"] == src["phases"]
    assert not (tmp_path / "synthesizer").exists() and not (tmp_path / "train_stats.jsonl").exists()
    guided = np.load(tmp_path / "synthetic.npz")["X"]
    assert guided.shape == np.load(trained / "synthetic.npz")["X"].shape
    assert not np.array_equal(guided, np.load(trained / "synthetic.npz")["X"])  # w = 2 changes the samples
    rows = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["model"] == "ehrdiff_cond_w2" for r in rows)


def test_resampling_at_the_trained_settings_reproduces_the_samples(trained, tmp_path):
    info = pipeline.run(compose([*TINY, f"resample_from={trained}"]), tmp_path)
    assert info["status"] == "ok"
    assert np.array_equal(np.load(tmp_path / "synthetic.npz")["X"], np.load(trained / "synthetic.npz")["X"])


@pytest.mark.parametrize("overrides, match", [
    ([*TINY, "model.lr=0.5"], "only sampling parameters may change: guidance_scale"),
    ([*TINY, "data.n_codes=31"], "another data configuration"),
    ([*TINY[:4], "model=vae"], "trained model 'ehrdiff', not 'vae'"),
    ([*TINY, "model.guidance_scale=-1"], "guidance_scale must be >= 0"),  # refused by validate, before any work
    ([*TINY, "canaries=8"], "trained with canaries=0, not 8: an audit needs the canaries of its own training"),
])
def test_a_mismatch_is_one_sentence(trained, overrides, match):
    with pytest.raises(ValueError, match=match):
        load_trained(trained, pipeline.validate(compose(overrides)))


def test_an_incomplete_source_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete run directory"):
        load_trained(tmp_path, pipeline.validate(compose(TINY)))
    with pytest.raises(ValueError, match="resample_from must be a run directory"):
        pipeline.validate(compose([*TINY, "resample_from=3", "curve.eval_at=[0.5]"]))
