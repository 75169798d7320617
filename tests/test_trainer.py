"""The shared Trainer: devices, EMA warm-up, NaN guard, atomic checkpoints and exact resumption."""
import json

import numpy as np
import pytest
import torch

from ehrbench.models import Trainer, TrainingDiverged, build_synthesizer, resolve_device
from tests.conftest import TINY_PARAMS


def tiny():
    return build_synthesizer("ehrdiff", **TINY_PARAMS["ehrdiff"])


def test_device_choices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'; valid choices: auto, cpu, cuda, mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda was requested but CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="precision=bf16 needs CUDA"):
            Trainer(device="cpu", precision="bf16")


def test_ema_warmup_decay():
    m = tiny()
    m.init_training(4)
    p = next(m.modules_.parameters())
    e = next(m.ema_.parameters())
    decays = []
    for n in range(3):
        with torch.no_grad():
            e.fill_(0.0)
            p.fill_(1.0)
        Trainer._update_ema(m)
        decays.append(1 - float(e.flatten()[0]))          # ema = decay*0 + (1-decay)*1
    # the official ema.py counts the update first: the n-th update (n = 1, 2, ...) uses (1 + n) / (10 + n)
    np.testing.assert_allclose(decays, [2 / 11, 3 / 12, 4 / 13], rtol=1e-6)
    m.n_ema_ = 100_000
    with torch.no_grad():
        e.fill_(0.0)
    Trainer._update_ema(m)
    assert 1 - float(e.flatten()[0]) == pytest.approx(0.999)


def test_nan_guard_stops_with_clear_message(tiny_data, tmp_path, monkeypatch):
    m = tiny()
    real_loss = m.loss
    calls = {"n": 0}

    def loss(x, key):
        calls["n"] += 1
        return real_loss(x, key) * (float("nan") if calls["n"] == 4 else 1.0)

    monkeypatch.setattr(m, "loss", loss)
    t = Trainer(device="cpu", max_steps=10, checkpoint_every=2, progress=False, workdir=tmp_path)
    with pytest.raises(TrainingDiverged, match="ehrdiff: the 'net' loss became nan at step 3 of phase 'train'"):
        m.fit(tiny_data, t)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2   # last good checkpoint kept


def test_crash_and_resume_gives_identical_weights(tiny_data, tmp_path, monkeypatch):
    ref = tiny().fit(tiny_data, Trainer(device="cpu", max_steps=10, checkpoint_every=3, progress=False,
                                        workdir=tmp_path / "ref", log_every=1))
    crashing = tiny()
    real_loss = crashing.loss
    calls = {"n": 0}

    def loss(x, key):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # killed mid-training after the step-6 checkpoint
        return real_loss(x, key)

    monkeypatch.setattr(crashing, "loss", loss)
    kw = dict(device="cpu", max_steps=10, checkpoint_every=3, progress=False, workdir=tmp_path / "run", log_every=1)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(tiny_data, Trainer(**kw))
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["clock"]
    trainer = Trainer(**kw)
    resumed = tiny().fit(tiny_data, trainer)
    # the cost is the whole run's: the 6 steps before the crash (and their seconds) count, once
    assert saved["steps_done"] == 6 and trainer.steps_done == 10 and trainer.resumed_seconds_ == saved["train_seconds"] > 0
    assert trainer.train_seconds > saved["train_seconds"]
    for k, v in ref.state_tensors().items():
        assert torch.equal(v, resumed.state_tensors()[k]), k
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "train_stats.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))
    assert np.array_equal(ref.sample(64, seed=1), resumed.sample(64, seed=1))


def test_checkpoint_of_other_model_is_refused(tiny_data, tmp_path):
    tiny().fit(tiny_data, Trainer(device="cpu", max_steps=2, progress=False, workdir=tmp_path))
    other = build_synthesizer("ehrdiff", **{**TINY_PARAMS["ehrdiff"], "unit_dims": [16]})
    with pytest.raises(ValueError, match="trained with other hyperparameters \\(unit_dims\\)"):
        other.fit(tiny_data, Trainer(device="cpu", max_steps=2, progress=False, workdir=tmp_path))


def test_compressed_schedule_reaches_zero_lr(tiny_data):
    t = Trainer(device="cpu", max_steps=5, progress=False)
    m = tiny().fit(tiny_data, t)
    assert t.steps_done == 5
    total = 2 * 8  # epochs x ceil(480 / 64): the paper-time schedule that 5 steps compress
    assert m.optimizers_["net"].param_groups[0]["lr"] == pytest.approx(3e-4 * m.lr_scale(int(4 * total / 5), total))


def test_peak_memory_window_resets_between_runs():
    """A sweep worker runs many cells: each cell's peak must not include an earlier cell's (Linux VmHWM reset)."""
    from ehrbench.models.device import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    if reset_peak_memory() != "run":
        pytest.skip("this OS cannot reset the peak resident set size")
    base = peak_memory_mb(cpu)
    a = np.ones(400 * 2**20 // 8)  # 400 MiB, every page touched
    high = peak_memory_mb(cpu)
    del a
    assert high - base > 350
    assert reset_peak_memory() == "run"
    assert peak_memory_mb(cpu) < high - 350  # the 400 MiB peak belongs to the previous window


def test_cpu_training_flushes_denormals(tiny_data):
    """Denormal floats made medGAN's GAN steps 12x slower on CPU; the trainer turns on flush-to-zero there."""
    torch.set_flush_denormal(False)
    tiny().fit(tiny_data, Trainer(device="cpu", max_steps=1, progress=False))
    assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0.0  # 1e-40 is a denormal float32
