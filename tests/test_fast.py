"""trainer=fast: the sync-free step falls back cleanly on CPU, matches the default losses, never saves a NaN step."""
import json
import warnings

import numpy as np
import pytest
import torch

from ehrbench.models import Trainer, TrainingDiverged, build_synthesizer
from ehrbench.models import guard as guard_mod
from ehrbench.models import step as step_mod
from ehrbench.models.budget import ema_decay_product
from tests.conftest import TINY_PARAMS, compose


def tiny(name: str = "ehrdiff"):
    return build_synthesizer(name, **TINY_PARAMS[name])


def losses(workdir) -> list[dict]:
    return [json.loads(line)["loss"] for line in (workdir / "train_stats.jsonl").read_text().splitlines()]


def inject_nan(m, at_call: int, value: float = float("nan")) -> None:
    """Make the `at_call`-th loss call (1-based) return `value` times the real loss."""
    real, calls = m.loss, {"n": 0}

    def loss(x, key):
        calls["n"] += 1
        return real(x, key) * (value if calls["n"] == at_call else 1.0)

    m.loss = loss


def test_fast_profile_falls_back_on_cpu(tiny_data, tmp_path):
    cfg = dict(compose(["trainer=fast"]).trainer)
    assert cfg["fast"] is True and cfg["precision"] == "auto" and cfg["compile"] == "auto"
    cfg.update(device="cpu", budget="steps", max_steps=4, progress=False, workdir=tmp_path)
    t = Trainer(**cfg)
    assert (t.precision, t.compile, t.fast) == ("fp32", False, True)  # no bf16, no compile on CPU
    m = tiny().fit(tiny_data, t)
    assert t.steps_done == 4
    assert all(g["fused"] for g in m.optimizers_["net"].param_groups)  # fused Adam(W) on CPU too
    assert not hasattr(m.optimizers_["net"], "found_inf")  # no skip flag left behind for later plain steps
    assert all(np.isfinite(v.numpy()).all() for v in m.state_tensors().values())


def test_option_errors_list_the_choices():
    with pytest.raises(ValueError, match="unknown trainer.compile 'sometimes'; valid choices: true, false, auto"):
        Trainer(device="cpu", compile="sometimes")
    with pytest.raises(ValueError, match="unknown trainer.precision 'fp8'; valid choices: fp32, bf16, fp16, auto"):
        Trainer(device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="trainer.fast must be bool, got 'sometimes'"):
        Trainer(device="cpu", fast="sometimes")


@pytest.mark.parametrize("name", ["ehrdiff", "vae", "medgan"])
def test_fast_and_default_give_the_same_losses_on_cpu(name, tiny_data, tmp_path):
    runs = {}
    for fast in (False, True):
        t = Trainer(device="cpu", max_steps=6, log_every=1, checkpoint_every=3, progress=False, seed=2, fast=fast,
                    workdir=tmp_path / str(fast))
        runs[fast] = (tiny(name).fit(tiny_data, t), losses(tmp_path / str(fast)))
    (ref, ref_losses), (got, got_losses) = runs[False], runs[True]
    assert len(ref_losses) == len(got_losses) >= 6
    for a, b in zip(ref_losses, got_losses):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-6)
    for k, v in ref.state_tensors().items():
        torch.testing.assert_close(got.state_tensors()[k], v, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["ehrdiff", "vae"])
def test_fused_adam_on_cpu_trains_as_the_for_loop_update(name, tiny_data, monkeypatch):
    """Fused Adam(W) on CPU (every profile) gives the weights of torch's for-loop update up to float rounding."""
    ref = tiny(name).fit(tiny_data, Trainer(device="cpu", max_steps=8, progress=False, seed=1))
    assert all(g["fused"] for o in ref.optimizers_.values() if isinstance(o, torch.optim.Adam)
               for g in o.param_groups)
    monkeypatch.setattr(step_mod, "FUSED_DEVICES", ("cuda",))
    loop = tiny(name).fit(tiny_data, Trainer(device="cpu", max_steps=8, progress=False, seed=1))
    assert not any(g.get("fused") for o in loop.optimizers_.values() for g in o.param_groups)
    for k, v in loop.state_tensors().items():
        torch.testing.assert_close(ref.state_tensors()[k], v, rtol=1e-5, atol=1e-6)


def test_foreach_ema_matches_the_per_parameter_loop():
    m = tiny()
    m.init_training(12)
    ref = {k: v.clone() for k, v in m.ema_.state_dict().items()}
    stride = 2.5
    for n in range(5):
        with torch.no_grad():
            for p in m.modules_.parameters():
                p.add_(torch.randn_like(p))
        decay = ema_decay_product(n * stride, (n + 1) * stride, m.ema_decay)  # the loop the foreach lerp replaced
        live = dict(m.modules_.named_parameters())
        for k in ref:
            ref[k].lerp_(live[k].detach(), 1 - decay) if k in live else ref[k].copy_(m.modules_.state_dict()[k])
        Trainer._update_ema(m, stride)
    assert m.n_ema_ == 5
    for k, v in m.ema_.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_nothing_of_a_bad_loss_reaches_the_weights_or_moments():
    """CPU: the bad loss's step is skipped outright (no gradients, so AdamW leaves weights and state alone)."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    loss = (p * float("nan")).sum()
    loss.backward()
    guard = guard_mod.LossGuard("m", 1e9, deferred=True)
    guard.observe(loss, opt, 0, "k", "train")
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state[p]
    assert guard.flush() and "the 'k' loss became nan at step 0 of phase 'train'" in guard.problem


def test_gpu_style_skip_zeroes_the_gradients_on_the_device():
    """Non-fused optimisers on CUDA: gradients zeroed where the device flag is set, left alone where it is not."""
    grads = [torch.full((2, 2), float("nan")), torch.tensor([1.0, float("inf")])]
    kept = [_with_grad(g) for g in grads]
    guard_mod.zero_grads_where(kept, torch.tensor(False))
    for p, g in zip(kept, grads):
        torch.testing.assert_close(p.grad, g, equal_nan=True)
    zeroed = [_with_grad(g) for g in grads]
    guard_mod.zero_grads_where(zeroed, torch.tensor(True))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in zeroed)


def _with_grad(g: torch.Tensor) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros_like(g))
    p.grad = g.clone()
    return p


@pytest.mark.parametrize("factor,message", [(float("nan"), "became nan"), (1e12, "ran away to")])
def test_deferred_check_stops_before_a_bad_step_is_saved(tiny_data, tmp_path, factor, message):
    m = tiny()
    inject_nan(m, at_call=6, value=factor)  # step 5 (0-based); the next check is after step 8
    t = Trainer(device="cpu", max_steps=12, checkpoint_every=4, log_every=4, progress=False, workdir=tmp_path,
                fast=True)
    with pytest.raises(TrainingDiverged, match=f"ehrdiff: the 'net' loss {message}.* at step 5 of phase 'train'"
                                               ".*found at the check after step 8.*rolled back") as e:
        m.fit(tiny_data, t)
    assert "step 4" in str(e.value)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 < 5  # the last checkpoint precedes the bad step
    assert all(torch.isfinite(v).all() for v in ckpt["state"].values())
    for state in ckpt["optimizers"]["net"]["state"].values():
        assert all(torch.isfinite(v).all() for v in state.values())
    for k, v in m.state_tensors().items():  # the live model was rolled back to that checkpoint
        assert torch.equal(v, ckpt["state"][k]), k
    assert [json.loads(r)["step"] for r in (tmp_path / "train_stats.jsonl").read_text().splitlines()] == [4]


def test_deferred_check_without_a_checkpoint_names_the_step(tiny_data):
    m = tiny()
    inject_nan(m, at_call=2)
    with pytest.raises(TrainingDiverged, match="became nan at step 1 .*no checkpoint had been written yet"):
        m.fit(tiny_data, Trainer(device="cpu", max_steps=5, log_every=50, progress=False, fast=True))


def _one_pass(compile: bool, x: torch.Tensor) -> tuple[float, list[torch.Tensor], bool]:
    """Loss, gradients and whether the pass really ran compiled (False: it fell back to eager)."""
    m = tiny()
    m.init_training(x.shape[1], seed=0)
    fb = step_mod.ForwardBackward(m, "net", torch.amp.GradScaler("cuda", enabled=False), None, torch.device("cpu"),
                                  compile)
    torch.manual_seed(7)
    with warnings.catch_warnings(record=True):
        loss = fb(x)
    return float(loss), [p.grad.clone() for p in m.modules_.parameters()], fb.compiled is not None


def _compiled_matches_eager(monkeypatch, backend: str) -> None:
    pytest.importorskip("torch._dynamo")
    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", backend)
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    x = (torch.rand(64, 12, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    eager_loss, eager_grads, _ = _one_pass(False, x)
    # compiled randn = eager randn; config.patch restores the setting (monkeypatch's undo deleted it, which broke
    # every later torch.compile in the process)
    with inductor_config.patch(fallback_random=True):
        comp_loss, comp_grads, compiled = _one_pass(True, x)
    if not compiled:  # the fallback to eager ran (tested below): nothing compiled to compare
        pytest.skip(f"torch.compile with backend {backend} is unavailable here")
    assert comp_loss == pytest.approx(eager_loss, rel=1e-5)
    for a, b in zip(comp_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_step_matches_eager_aot(monkeypatch):
    """Dynamo + AOTAutograd without code generation: seconds on CPU."""
    _compiled_matches_eager(monkeypatch, "aot_eager")


@pytest.mark.slow
def test_compiled_step_matches_eager_inductor(monkeypatch):
    """The real backend; its first C++ build takes over a minute on the 2-core CPU."""
    _compiled_matches_eager(monkeypatch, "inductor")


def test_compile_failure_warns_and_runs_eagerly(tiny_data, monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k):
            torch.randn(100)  # consumes randomness before failing: the eager replay must not see it
            raise RuntimeError("no C++ compiler found\nlong traceback")
        return call

    ref = tiny().fit(tiny_data, Trainer(device="cpu", max_steps=3, progress=False))
    monkeypatch.setattr(step_mod.torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="ehrdiff: torch.compile failed for the 'net' step \\(RuntimeError: no C"
                                            "\\+\\+ compiler found\\); running it eagerly"):
        got = tiny().fit(tiny_data, Trainer(device="cpu", max_steps=3, progress=False, compile=True, fast=True))
    for k, v in ref.state_tensors().items():
        assert torch.equal(got.state_tensors()[k], v), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_on_cuda_fuses_adam_and_skips_bad_steps_on_device(tiny_data, tmp_path):
    t = Trainer(device="cuda", max_steps=6, log_every=3, checkpoint_every=3, progress=False, fast=True,
                precision="auto", compile=False, workdir=tmp_path)
    assert t.precision == "bf16"
    m = tiny().fit(tiny_data, t)
    assert all(g["fused"] for g in m.optimizers_["net"].param_groups)
    p = torch.nn.Parameter(torch.ones(3, device="cuda"))
    opt = torch.optim.AdamW([p], lr=0.1)
    step_mod.use_fused({"p": opt}, torch.device("cuda"))
    (p * float("nan")).sum().backward()
    guard_mod.skip_update(opt, torch.tensor(True, device="cuda"))
    opt.step()
    assert torch.equal(p.detach().cpu(), torch.ones(3))  # the fused kernel skipped the whole update


def test_run_benchmark_checks_the_fast_options_before_any_work():
    from ehrbench.models import pipeline

    assert pipeline.validate(compose(["trainer=fast"]))["trainer"]["fast"] is True
    with pytest.raises(ValueError, match="unknown trainer.compile 'sometimes'; valid choices: true, false, auto"):
        pipeline.validate(compose(["trainer=fast", "trainer.compile=sometimes"]))
    if not torch.cuda.is_available():  # auto is fp32 on a CPU, which DP accepts
        assert pipeline.validate(compose(["trainer=fast", "trainer.dp={epsilon:10,delta:1e-5}"]))


def _tiny_ehrdiff(tiny_data):
    return tiny().fit(tiny_data, Trainer(device="cpu", max_steps=3, progress=False))


def test_compiled_sampler_matches_the_eager_one(tiny_data, monkeypatch):
    """trainer.compile reaches the sampler (compile_sampler); the compiled network call (aot_eager here, inductor on
    CUDA) gives the eager Heun sampler's output, float64 state included."""
    m = _tiny_ehrdiff(tiny_data)
    assert m.compile_sampler is False
    eager = m.generate(300, seed=3)
    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", "aot_eager")
    m.compile_sampler = True
    calls = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or real(fn, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
        compiled = m.generate(300, seed=3)
    assert calls and calls[0]["backend"] == "aot_eager"
    assert compiled.dtype == np.float64
    np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-6)


def test_sampler_compile_failure_warns_and_samples_eagerly(tiny_data, monkeypatch):
    m = _tiny_ehrdiff(tiny_data)
    eager = m.generate(200, seed=1)

    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    m.compile_sampler = True
    with pytest.warns(RuntimeWarning, match="torch.compile failed for the sampler"):
        out = m.generate(200, seed=1)
    np.testing.assert_array_equal(out, eager)
