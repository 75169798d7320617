"""EHRDiff label conditioning with classifier-free guidance: network, loss, sampler, persistence, configs, bad input."""
import json

import numpy as np
import pytest
import torch

from ehrbench.models import pipeline
from ehrbench.data import EHRData
from ehrbench.models import Trainer, build_synthesizer, check_data, check_synthesizer
from ehrbench.models.ehrdiff_net import LinearModel
from ehrbench.models.rundir import settings_hash
from tests.conftest import TINY_PARAMS, compose

COND = {**TINY_PARAMS["ehrdiff"], "cond_label": True}


def fit(params: dict, data: EHRData, steps: int = 5):
    return build_synthesizer("ehrdiff", **params).fit(data, Trainer(device="cpu", budget="steps", max_steps=steps,
                                                                     progress=False, seed=0))


def test_conditional_ehrdiff_keeps_the_synthesizer_contract():
    report = check_synthesizer("ehrdiff", {**COND, "guidance_scale": 1.0}, fresh_process=False)
    assert "save/load" in report["checks"] and report["n_params"] > 0


def test_cfg_network_parameter_count_by_hand():
    """The official cfg CinC network (configs/cinc/cfg/train_cfg.yaml: z_dim 114, time_dim 128, unit_dims
    [512, 768, 1024, 768, 512], random Fourier features 32, num_classes 2, class_dim 128), counted layer by layer."""
    def linear(a, b):
        return a * b + b

    dims = [114, 512, 768, 1024, 768, 512, 114]
    time_mlp = linear(33, 128) + linear(128, 128)
    blocks = sum(linear(128, a) + linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
    label = 3 * 128 + linear(128, 128) + linear(128, 128)  # Embedding(num_classes + 1, class_dim) and its MLP
    net = LinearModel(114, (512, 768, 1024, 768, 512), 128, random_fourier_features=True, n_classes=2, class_dim=128)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == time_mlp + blocks + label
    cfg = compose(["model=ehrdiff_cinc_cond", "data=physionet2012"])
    m = build_synthesizer("ehrdiff", **{k: v for k, v in cfg.model.items() if k not in ("name", "label")})
    m.n_features_ = 115  # 114 features + the label column, as the official CinC matrix
    m.init_modules(115)
    assert m.n_params == time_mlp + blocks + label


def test_guided_denoiser_is_the_official_combination():
    """(1 + w) D(x | y) - w D(x | no label), w = guidance_scale; w = 0 is the conditional denoiser."""
    m = fit({**COND, "guidance_scale": 2.5}, check_data())
    net = m.sampling_modules()["net"]
    torch.manual_seed(1)
    x, sigma = torch.randn(6, m.n_features_ - 1), torch.full((6,), 0.7)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    cond, uncond = m.denoise(net, x, sigma, y), m.denoise(net, x, sigma, torch.full_like(y, 2))
    with torch.no_grad():
        assert torch.allclose(m.guided_denoise(net, x, sigma, y), 3.5 * cond - 2.5 * uncond, atol=1e-5)
        m.guidance_scale = 0.0
        assert torch.allclose(m.guided_denoise(net, x, sigma, y), cond)
        assert not torch.allclose(cond, uncond)  # the label reaches the network


def test_training_drops_labels_at_the_official_rate_and_reads_the_label_last():
    m = fit(COND, check_data(), steps=1)
    seen = []
    m.modules_["net"].class_emb.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    x = torch.cat([torch.zeros(20000, m.n_features_ - 1), torch.ones(20000, 1)], dim=1)
    torch.manual_seed(0)
    m.loss(x, "net")
    labels = seen[0]
    assert set(labels.unique().tolist()) <= {1, 2}  # the last column is the label; 2 = "no label"
    assert abs((labels == 2).float().mean().item() - 0.1) < 0.01


def test_samples_keep_the_requested_label_prevalence_in_the_label_column():
    data = check_data()
    j = data.columns.index(data.label_columns[0])
    m = fit(COND, data)
    S = m.sample(1001, seed=4)
    assert S.shape == (1001, data.n_features) and set(np.unique(S[:, j])) <= {0.0, 1.0}
    assert S[:, j].sum() == round(data.train[:, j].mean() * 1001)
    m.label_prevalence = 0.3
    assert m.sample(1001, seed=4)[:, j].sum() == round(0.3 * 1001)
    assert np.array_equal(m.sample(50, seed=9), m.sample(50, seed=9))


def test_conditioning_is_learned():
    """Two codes copy the label: samples drawn with label 1 carry them far more often than with label 0."""
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.5).astype(np.float32)
    X = np.c_[y, 1 - y, (rng.random((2000, 6)) < 0.3), y].astype(np.float32)
    cols = tuple(f"c{i}" for i in range(8)) + ("Y",)
    data = EHRData(X, X[:10], X[:10], cols, ("binary",) * 9, ("Y",), name="toy")
    params = {**COND, "unit_dims": [64, 64], "time_dim": 32, "batch_size": 128, "epochs": 10, "warmup_steps": 20,
              "num_steps": 12, "lr": 1e-3, "guidance_scale": 1.0}
    m = build_synthesizer("ehrdiff", **params).fit(data, Trainer(device="cpu", budget="paper", progress=False))
    for prevalence, code in ((1.0, 0), (0.0, 1)):
        m.label_prevalence = prevalence
        S = m.sample(400, seed=1)
        assert S[:, 8].mean() == prevalence
        assert S[:, code].mean() > 0.8 and S[:, 1 - code].mean() < 0.2


def test_save_and_load_keep_the_label_column_and_prevalence(tmp_path):
    data = check_data()
    m = fit(COND, data)
    m.save(tmp_path)
    loaded = type(m).load(tmp_path)
    assert loaded.cond_index_ == m.cond_index_ and loaded.train_prevalence_ == pytest.approx(m.train_prevalence_)
    assert np.array_equal(loaded.sample(40, seed=2), m.sample(40, seed=2))


def test_bad_conditioning_input_is_one_clear_sentence():
    data = check_data()
    nolabel = EHRData(data.train, data.holdout, data.test, data.columns, data.kinds, (), name="nolabel")
    cases = [({"cond_label": True}, nolabel, "has no label column"),
             ({"cond_label": "LAB_A"}, data, "is continuous"),
             ({"cond_label": "NOPE"}, data, "valid choices: "),
             ({"cond_label": True, "label_dropout": 1.0}, data, "label_dropout must be in [0, 1)"),
             ({"cond_label": True, "guidance_scale": -1.0}, data, "guidance_scale must be >= 0"),
             ({"cond_label": True, "label_prevalence": 1.5}, data, "label_prevalence must be in [0, 1]"),
             ({"cond_label": True}, data.train[:, :-2], "needs an EHRData")]
    for params, d, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
            fit({**TINY_PARAMS["ehrdiff"], **params}, d)


def test_cli_conditional_run_is_its_own_row(tmp_path):
    tiny = [f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_PARAMS["ehrdiff"].items()]
    cfg = compose(["model=ehrdiff_cond", "trainer=debug", "metrics=fast", "data.n_patients=300", "data.n_codes=30",
                   *tiny])
    pipeline.validate(cfg)
    info = pipeline.run(cfg, tmp_path)
    assert info["status"] == "ok" and info["model"] == "ehrdiff_cond" and info["generator"] == "ehrdiff"
    npz = np.load(tmp_path / "synthetic.npz")
    y = npz["X"][:, list(npz["columns"]).index("MORTALITY")]
    synth = build_synthesizer("ehrdiff").load(tmp_path / "synthesizer")
    assert synth.cond_label is True and y.sum() == round(synth.train_prevalence_ * len(y))


def test_unconditional_settings_are_unchanged_by_the_new_keys():
    """Runs recorded before the conditioning keys existed keep their settings hash (and resume/compare)."""
    cfg = pipeline.validate(compose(["model=ehrdiff"]))
    old = json.loads(json.dumps(cfg))
    for key in ("cond_label", "guidance_scale", "label_dropout", "class_dim", "label_prevalence"):
        old["model"].pop(key)
    assert settings_hash(old) == settings_hash(cfg)
    cond = pipeline.validate(compose(["model=ehrdiff_cond"]))
    assert settings_hash(cond) != settings_hash(cfg)
