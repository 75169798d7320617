"""The shared distance engine against naive numpy: k-NN (values, tie-broken indices), radius counts, kernel sums, Gram."""
import numpy as np
import pytest
import torch

import ehrbench.metrics.neighbors as nb


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Tiny chunks so every test crosses query and reference block boundaries."""
    monkeypatch.setattr(nb, "QUERY_CHUNK", 64)
    monkeypatch.setattr(nb, "REF_CHUNK_CPU", 50)
    monkeypatch.setattr(nb, "REF_CHUNK_CUDA", 50)


def _binary(rng, n, d, p):
    return (rng.random((n, d)) < p).astype(np.float32)


def _naive(Q, R):
    return ((Q[:, None, :].astype(np.float64) - R[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("p", [0.05, 0.5])  # sparse CSR path and dense path
def test_knn_matches_naive_with_lowest_index_ties(p):
    rng = np.random.default_rng(0)
    Q, R = _binary(rng, 150, 30, p), _binary(rng, 170, 30, p)
    D = _naive(Q, R)
    for k in (1, 3):
        d, i = nb.knn(Q, R, k, return_index=True, hamming=True, device="cpu")
        assert np.array_equal(d, np.sort(D, 1)[:, :k])
        assert np.array_equal(i, np.argsort(D, 1, kind="stable")[:, :k])  # ties -> lower index
        assert np.array_equal(nb.knn(Q, R, k, device="cpu")[0], d)


def test_knn_exclude_self_and_continuous():
    rng = np.random.default_rng(1)
    Q = _binary(rng, 120, 20, 0.1)
    D = _naive(Q, Q)
    np.fill_diagonal(D, np.inf)
    d, i = nb.knn(Q, Q, 2, exclude_self=True, return_index=True, hamming=True, device="cpu")
    assert np.array_equal(d, np.sort(D, 1)[:, :2]) and np.array_equal(i, np.argsort(D, 1, kind="stable")[:, :2])
    C, E = rng.normal(size=(90, 6)).astype(np.float32), rng.normal(size=(110, 6)).astype(np.float32)
    d, i = nb.knn(C, E, 4, return_index=True, device="cpu")
    assert np.allclose(d, np.sort(_naive(C, E), 1)[:, :4], atol=1e-4)
    assert np.array_equal(i, np.argsort(_naive(C, E), 1)[:, :4])


def test_count_within_and_kernel_sum():
    rng = np.random.default_rng(2)
    Q, R = _binary(rng, 100, 25, 0.1), _binary(rng, 130, 25, 0.1)
    D = _naive(Q, R)
    rad = rng.integers(0, 5, len(R)).astype(np.float32)
    assert np.array_equal(nb.count_within(Q, R, rad, device="cpu"), (D <= rad[None, :]).sum(1))
    assert nb.kernel_sum(Q, R, 3.0, device="cpu") == pytest.approx(np.exp(-D / 3).sum(), rel=1e-5)
    DQ = _naive(Q, Q)
    expect = np.exp(-DQ / 3).sum() - len(Q)  # minus the diagonal
    assert nb.kernel_sum(Q, Q, 3.0, exclude_self=True, device="cpu") == pytest.approx(expect, rel=1e-5)


def test_gram_sparse_and_dense():
    rng = np.random.default_rng(3)
    for X in (_binary(rng, 200, 15, 0.03), rng.normal(size=(200, 15)).astype(np.float32)):
        assert np.allclose(nb.gram(X, "cpu"), X.astype(np.float64).T @ X, rtol=1e-5, atol=1e-4)


def test_encode_keeps_binary_and_zscores_continuous():
    from ehrbench.data import from_matrix

    rng = np.random.default_rng(4)
    X = np.c_[_binary(rng, 300, 4, 0.3), rng.normal(5, 2, (300, 2)).astype(np.float32)]
    data = from_matrix(X, [f"c{j}" for j in range(6)], ["binary"] * 4 + ["continuous"] * 2, name="mixed")
    (e,) = nb.encode(data, data.train)
    assert np.array_equal(e[:, :4], data.train[:, :4])
    assert np.allclose(e[:, 4:].mean(0), 0, atol=1e-5) and np.allclose(e[:, 4:].std(0), 1, atol=1e-4)


def test_device_rules():
    assert nb.resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        nb.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            nb.resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    Q, R = _binary(rng, 300, 40, 0.05), _binary(rng, 400, 40, 0.05)
    for k in (1, 3):
        dc, ic = nb.knn(Q, R, k, return_index=True, hamming=True, device="cpu")
        dg, ig = nb.knn(Q, R, k, return_index=True, hamming=True, device="cuda")
        assert np.array_equal(dc, dg) and np.array_equal(ic, ig)
    rad = np.full(len(R), 3.0, np.float32)
    assert np.array_equal(nb.count_within(Q, R, rad, device="cpu"), nb.count_within(Q, R, rad, device="cuda"))
    assert nb.kernel_sum(Q, R, 2.0, device="cpu") == pytest.approx(nb.kernel_sum(Q, R, 2.0, device="cuda"), rel=1e-5)
