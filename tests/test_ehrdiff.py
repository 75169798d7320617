"""EHRDiff pieces against hand-computed values: EDM coefficients, sampler sigmas, parameter count, schedule, sampler."""
import math

import numpy as np
import pytest
import torch

from ehrbench.models import build_synthesizer
from ehrbench.models.ehrdiff import EHRDiff, edm_coefficients, edm_sigma_steps
from ehrbench.models.ehrdiff_net import sinusoidal_embedding


@pytest.mark.parametrize("sigma, c_skip, c_out, c_in, c_noise", [
    # the EDM preconditioning table for sigma_data = 0.14, and exact values at sigma = sigma_data
    (0.02, 0.98, 0.0198, 7.07, -0.978),
    (0.14, 0.5, 0.14 * 0.14 / math.sqrt(2 * 0.14 ** 2), 1 / math.sqrt(2 * 0.14 ** 2), math.log(0.14) / 4),
    (1.0, 0.019, 0.139, 0.99, 0.0),
    (80.0, 0.0, 0.14, 0.0125, 1.095),
])
def test_edm_preconditioning(sigma, c_skip, c_out, c_in, c_noise):
    got = [float(v) for v in edm_coefficients(torch.tensor(sigma, dtype=torch.float64), 0.14)]
    np.testing.assert_allclose(got, [c_skip, c_out, c_in, c_noise], rtol=6e-3, atol=1e-3)


def test_sampler_sigma_levels():
    expected = [80, 68.27, 58.05, 49.17, 41.48, 34.84, 29.14, 24.25, 20.09, 16.55, 13.56, 11.05, 8.95, 7.20, 5.75,
                4.56, 3.58, 2.80, 2.16, 1.65, 1.25, 0.936, 0.692, 0.505, 0.362, 0.256, 0.178, 0.121, 0.080, 0.052,
                0.033, 0.020, 0.0]
    got = edm_sigma_steps(32, 0.02, 80.0, 7.0)
    assert len(got) == 33
    np.testing.assert_allclose(got, expected, rtol=6e-3, atol=6e-4)


def test_paper_parameter_count():
    m = build_synthesizer("ehrdiff")
    m.init_modules(1782)
    assert m.n_params == 7_486_444


def test_lr_schedule_warmup_then_cosine():
    m = EHRDiff(warmup_steps=100)
    assert m.lr_scale(0, 1000) == 0.0
    assert m.lr_scale(50, 1000) == pytest.approx(0.5)
    assert m.lr_scale(100, 1000) == pytest.approx(1.0)
    assert m.lr_scale(550, 1000) == pytest.approx(0.5)
    assert m.lr_scale(1000, 1000) == pytest.approx(0.0, abs=1e-12)


def test_sinusoidal_embedding_any_width():
    t = torch.tensor([0.0, -0.5])
    for w in (8, 881):
        e = sinusoidal_embedding(t, w)
        assert e.shape == (2, w)
    e = sinusoidal_embedding(torch.tensor([0.3]), 6)  # half = 3 frequencies 1, 1e-2, 1e-4
    np.testing.assert_allclose(e[0, :3], np.sin(0.3 * np.array([1, 1e-2, 1e-4])), rtol=1e-6)
    np.testing.assert_allclose(e[0, 3:], np.cos(0.3 * np.array([1, 1e-2, 1e-4])), rtol=1e-6)


def test_heun_sampler_solves_the_ode_of_a_zero_network():
    """With F = 0, D(x; s) = c_skip(s) x and the probability-flow ODE dx/ds = x s/(s^2 + sd^2) has the exact
    solution x(s) = x0 sqrt((s^2 + sd^2)/(s0^2 + sd^2)); the output is D(x(0.02); 0.02) (63 evaluations)."""
    m = EHRDiff(unit_dims=(8,), time_dim=8)
    m.n_features_, m.kinds_, m.columns_ = 5, ("continuous",) * 5, tuple("abcde")
    m.init_modules(5)
    last = m.modules_["net"].blocks[-1].linear
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    calls = []
    m.modules_["net"].register_forward_hook(lambda *a: calls.append(1))
    m.ema_ = None
    x = m.generate(7, seed=11)
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64).numpy() * 80.0
    sd = 0.14
    c_skip = lambda s: sd ** 2 / (s ** 2 + sd ** 2)  # noqa: E731
    s = edm_sigma_steps(32, 0.02, 80.0, 7.0)
    factor = 1.0  # Heun (EDM Alg. 1) on the scalar linear ODE, by hand
    for i in range(32):
        d = (1 - c_skip(s[i])) / s[i]
        euler = 1 + (s[i + 1] - s[i]) * d
        if i < 31:
            d2 = euler * (1 - c_skip(s[i + 1])) / s[i + 1]
            factor *= 1 + (s[i + 1] - s[i]) * 0.5 * (d + d2)
        else:
            factor *= euler
    np.testing.assert_allclose(x, z * factor, rtol=1e-5)
    exact = c_skip(0.02) * np.sqrt((0.02 ** 2 + sd ** 2) / (80.0 ** 2 + sd ** 2))
    assert abs(factor / exact - 1) < 0.03  # and close to the exact ODE solution
    assert len(calls) == 63


def test_binary_output_is_rint_of_clip():
    m = EHRDiff(unit_dims=(8,), time_dim=8)
    m.n_features_, m.kinds_, m.columns_ = 3, ("binary", "binary", "continuous"), ("a", "b", "c")
    m.init_modules(3)
    raw = np.clip(m.generate(50, seed=0), 0, 1)
    S = m.sample(50, seed=0)
    np.testing.assert_array_equal(S[:, :2], np.rint(raw[:, :2]))
    np.testing.assert_allclose(S[:, 2], raw[:, 2], rtol=1e-6)


def test_random_fourier_features_by_hand():
    """[t, sin(2 pi t w), cos(2 pi t w)] with w fixed (a buffer: saved, not trained, not counted)."""
    import math

    import torch

    from ehrbench.models.ehrdiff_net import LinearModel, RandomFourierFeatures

    torch.manual_seed(0)
    rff = RandomFourierFeatures(32)
    t = torch.tensor([-0.5, 0.0, 0.7])
    out = rff(t)
    w = rff.weights.numpy()
    expect = np.c_[t.numpy()[:, None], np.sin(2 * math.pi * t.numpy()[:, None] * w), np.cos(2 * math.pi * t.numpy()[:, None] * w)]
    assert out.shape == (3, 33) and np.allclose(out.numpy(), expect, atol=1e-6)
    net = LinearModel(115, (512, 768, 1024, 768, 512), 128, random_fourier_features=True)
    assert "rff.weights" in net.state_dict() and not any(n.startswith("rff") for n, _ in net.named_parameters())
    assert net(torch.zeros(4, 115), torch.zeros(4)).shape == (4, 115)


def test_warmup_fraction_is_a_share_of_the_run():
    from ehrbench.models import build_synthesizer

    m = build_synthesizer("ehrdiff", warmup_fraction=0.25)
    assert m.lr_scale(0, 65000) == 0.0 and m.lr_scale(8125, 65000) == pytest.approx(0.5)
    assert m.lr_scale(16250, 65000) == pytest.approx(1.0) and m.lr_scale(65000, 65000) == pytest.approx(0.0)
    assert build_synthesizer("ehrdiff").lr_scale(10000, 65000) == pytest.approx(0.5)  # 20,000 warm-up steps
