"""Chunked distance engine shared by the metrics: squared-L2 (= Hamming on 0/1) blocks, k-NN, radius counts, kernel sums."""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from ehrbench.data import EHRData

# Queries are cut into chunks of QUERY_CHUNK rows and references into chunks of REF_CHUNK_CPU rows on CPU (a
# 8,192 x 512 float32 block = 16 MB stays in cache while it is reduced) or REF_CHUNK_CUDA rows on CUDA. Nothing
# n x n is ever held.
QUERY_CHUNK = 8192
REF_CHUNK_CPU = 512
REF_CHUNK_CUDA = 8192
# On CPU a reference matrix with fewer non-zeros than this share is multiplied as a sparse CSR matrix: EHR code
# matrices are ~1% dense, so x @ y.T touches ~100x fewer numbers (benchmarks/bench_metrics.py). On CUDA blocks
# are dense cuBLAS.
SPARSE_DENSITY = 0.10


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; an explicitly requested but missing CUDA device is an error."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(device, str) and device.split(":")[0] in ("cpu", "cuda"):
        dev = torch.device(device)
    else:
        raise ValueError(f"metric device must be one of auto, cpu, cuda[:i]; got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("metric device 'cuda' was requested but CUDA is not available; use device=auto or cpu")
    return dev


def encode(data: EHRData, *mats: np.ndarray) -> list[np.ndarray]:
    """Distance features: binary columns stay 0/1, continuous columns are z-scored with the real train mean/std.

    On all-binary data the matrices are returned unchanged as float32, so squared L2 distance is exactly the
    Hamming distance on the fast float32 path. With continuous columns the result is float64, and every distance
    computed from it stays float64: |a|^2 - 2ab + |b|^2 in float32 turned near-copies with true d^2 = 1e-4 into
    0 in half of the cases (version 1). A continuous column with zero train std is only centred (divided by 1).
    """
    cont = ~data.binary_mask
    if not cont.any():
        return [np.asarray(m, dtype=np.float32) for m in mats]
    mu = data.train[:, cont].mean(0, dtype=np.float64)
    sd = data.train[:, cont].std(0, dtype=np.float64)
    sd[sd == 0] = 1.0
    out = []
    for m in mats:
        m = np.array(m, dtype=np.float64, copy=True)
        m[:, cont] = (m[:, cont] - mu) / sd
        out.append(m)
    return out


def _dtype(*mats: np.ndarray) -> type:
    """float64 when any input is float64 (continuous features), else float32 (exact on 0/1 codes)."""
    return np.float64 if any(np.asarray(m).dtype == np.float64 for m in mats) else np.float32


def is_hamming(data: EHRData) -> bool:
    """True when every column is binary, so squared L2 distances are integer Hamming distances."""
    return bool(data.binary_mask.all())


def to_distance(sq: np.ndarray, hamming: bool) -> np.ndarray:
    """Squared L2 -> the reported distance: Hamming (unchanged) on binary data, L2 (square root) otherwise."""
    return sq if hamming else np.sqrt(sq)


class _Side:
    """The reference matrix on the device: dense row chunks or CPU CSR chunks, plus squared row norms."""

    def __init__(self, X: np.ndarray, dev: torch.device, dtype: type = np.float32) -> None:
        X = np.ascontiguousarray(X, dtype=dtype)
        self.n = len(X)
        self.norms = torch.from_numpy(_sq_norms(X)).to(dev)
        self.sparse = dev.type == "cpu" and np.count_nonzero(X) < SPARSE_DENSITY * X.size
        rows = REF_CHUNK_CPU if dev.type == "cpu" else REF_CHUNK_CUDA
        self.bounds = [(j, min(j + rows, self.n)) for j in range(0, self.n, rows)]
        if self.sparse:
            S = sp.csr_matrix(X)
            self.chunks = [_torch_csr(S[a:b]) for a, b in self.bounds]
        else:
            T = torch.from_numpy(X).to(dev)
            self.chunks = [T[a:b] for a, b in self.bounds]


def _sq_norms(X: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", X, X, dtype=np.float64).astype(X.dtype)


def _torch_csr(S: sp.csr_matrix) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": only CSR @ dense is used, tested here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(S.indptr.astype(np.int64)),
                                       torch.from_numpy(S.indices.astype(np.int64)),
                                       torch.from_numpy(S.data), size=S.shape,
                                       check_invariants=False)


def partial_blocks(Q: np.ndarray, R: np.ndarray, device: str | torch.device = "auto"
                   ) -> Iterator[tuple[int, int, int, int, torch.Tensor, torch.Tensor]]:
    """Yield (i0, i1, j0, j1, P, qn): P[a, b] = |R[j0+b]|^2 - 2 Q[i0+a] . R[j0+b] and qn[a] = |Q[i0+a]|^2.

    The squared distance is D = P + qn[:, None] (binary Hamming via x @ y.T and row sums; exact on 0/1 data
    below 2^24 codes per record). Blocks are float32, or float64 when Q or R is float64 (continuous features).
    Reductions over references (min, top-k, counts) are done on P and the per-query constant qn is added
    afterwards, saving full passes over the block. P may be a transposed view.
    """
    dev = resolve_device(device)
    if Q.shape[1] != R.shape[1]:
        raise ValueError(f"distance between matrices of widths {Q.shape[1]} and {R.shape[1]}")
    dtype = _dtype(Q, R)
    ref = _Side(R, dev, dtype)
    for i0 in range(0, len(Q), QUERY_CHUNK):
        i1 = min(i0 + QUERY_CHUNK, len(Q))
        qnp = np.ascontiguousarray(Q[i0:i1], dtype=dtype)
        qn = torch.from_numpy(_sq_norms(qnp)).to(dev)
        q = torch.from_numpy(qnp).to(dev)
        qT = q.T.contiguous() if ref.sparse else None
        for (j0, j1), chunk in zip(ref.bounds, ref.chunks):
            nr = ref.norms[j0:j1]
            if ref.sparse:  # (rows of R) x (rows of Q): |r|^2 - 2 r.q fused in one sparse addmm
                P = torch.addmm(nr[:, None].expand(j1 - j0, i1 - i0), chunk, qT, alpha=-2.0).T
            else:
                P = torch.addmm(nr[None, :].expand(i1 - i0, j1 - j0), q, chunk.T, alpha=-2.0)
            yield i0, i1, j0, j1, P, qn


def sq_dist_blocks(Q: np.ndarray, R: np.ndarray, device: str | torch.device = "auto"
                   ) -> Iterator[tuple[int, int, int, int, torch.Tensor]]:
    """Yield (i0, i1, j0, j1, D) with D[a, b] = ||Q[i0+a] - R[j0+b]||^2 (clamped at 0; dtype as partial_blocks)."""
    for i0, i1, j0, j1, P, qn in partial_blocks(Q, R, device):
        yield i0, i1, j0, j1, (P + qn[:, None]).clamp_(min=0.0)


def _mask_self(P: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
    """Set P to +inf where the query and reference row are the same record (Q is R)."""
    lo, hi = max(i0, j0), min(i1, j1)
    if lo < hi:
        a = torch.arange(lo, hi, device=P.device)
        P[a - i0, a - j0] = float("inf")


def knn(Q: np.ndarray, R: np.ndarray, k: int = 1, *, exclude_self: bool = False, return_index: bool = False,
        hamming: bool = False, device: str | torch.device = "auto") -> tuple[np.ndarray, np.ndarray | None]:
    """Squared distances (n_Q, k), ascending, from each Q row to its k nearest R rows (+ indices if asked).

    exclude_self: Q is R and a record is not its own neighbour (leave-one-out; duplicates still count).
    Ties between equally distant references go to the lower R index (k = 1: torch's documented first-index
    rule for min; k > 1 with hamming=True: exact int64 keys distance * n_R + index), so the chosen neighbours
    are the same on CPU and CUDA. Without hamming, k > 1 ties (measure zero for continuous data) are arbitrary.
    """
    if k < 1 or k > len(R) - int(exclude_self):
        raise ValueError(f"k-NN needs 1 <= k <= {len(R) - int(exclude_self)} reference rows, got k={k}")
    dist = np.empty((len(Q), k), _dtype(Q, R))
    index = np.empty((len(Q), k), np.int64) if return_index else None
    n_ref = len(R)
    bv = bi = None
    for i0, i1, j0, j1, P, qn in partial_blocks(Q, R, device):
        if exclude_self:
            _mask_self(P, i0, i1, j0, j1)
        if k == 1 and not return_index:
            v = P.amin(1, keepdim=True)
            bv = v if j0 == 0 else torch.minimum(bv, v)
        elif k == 1:
            v, ix = P.contiguous().min(1, keepdim=True)
            ix += j0
            if j0 == 0:
                bv, bi = v, ix
            else:
                better = v < bv  # strict: an equal distance keeps the earlier (lower) index
                bv, bi = torch.where(better, v, bv), torch.where(better, ix, bi)
        elif hamming and return_index:
            key = (P + qn[:, None]).round_().nan_to_num_(posinf=2.0**40).to(torch.int64) * n_ref
            key += torch.arange(j0, j1, device=P.device)[None, :]
            v = key.topk(min(k, j1 - j0), dim=1, largest=False).values
            bv = v if j0 == 0 else torch.cat([bv, v], 1).topk(min(k, bv.shape[1] + v.shape[1]), dim=1, largest=False).values
        else:
            v, ix = P.contiguous().topk(min(k, j1 - j0), dim=1, largest=False)
            ix += j0
            if j0 == 0:
                bv, bi = v, ix
            else:
                v, ix = torch.cat([bv, v], 1), torch.cat([bi, ix], 1)
                o = v.topk(min(k, v.shape[1]), dim=1, largest=False).indices
                bv, bi = v.gather(1, o), ix.gather(1, o)
        if j1 == n_ref:
            if hamming and return_index and k > 1:
                key = bv.sort(1).values
                dist[i0:i1] = (key // n_ref).cpu().numpy()
                index[i0:i1] = (key % n_ref).cpu().numpy()
            else:
                if k > 1:
                    bv, o = bv.sort(1)
                    bi = bi.gather(1, o) if bi is not None else None
                dist[i0:i1] = (bv + qn[:, None]).clamp_(min=0.0).cpu().numpy()
                if return_index:
                    index[i0:i1] = bi.cpu().numpy()
            bv = bi = None
    return dist, index


def count_within(Q: np.ndarray, R: np.ndarray, radii: np.ndarray, *, strict: bool = False,
                 device: str | torch.device = "auto") -> np.ndarray:
    """For each Q row, the number of R rows r with ||q - r||^2 <= radii[r] (< with strict; squared radii)."""
    dev = resolve_device(device)
    rad = torch.from_numpy(np.asarray(radii, np.float64)).to(dev)
    counts = torch.zeros(len(Q), dtype=torch.int64, device=dev)
    for i0, i1, j0, j1, P, qn in partial_blocks(Q, R, dev):
        inside = torch.lt if strict else torch.le
        counts[i0:i1] += inside(P.sub_(rad[None, j0:j1].to(P.dtype)), -qn[:, None]).sum(1)
    return counts.cpu().numpy()


def kernel_sum(Q: np.ndarray, R: np.ndarray, gamma: float, *, exclude_self: bool = False,
               device: str | torch.device = "auto") -> float:
    """sum_{a,b} exp(-||Q_a - R_b||^2 / gamma) in float64 accumulation (exclude_self drops a == b when Q is R)."""
    total = 0.0
    for i0, i1, j0, j1, P, qn in partial_blocks(Q, R, device):
        K = P.add_(qn[:, None]).clamp_(min=0.0).mul_(-1.0 / gamma).exp_()
        if exclude_self:
            lo, hi = max(i0, j0), min(i1, j1)
            if lo < hi:
                a = torch.arange(lo, hi, device=K.device)
                K[a - i0, a - j0] = 0.0
        total += float(K.sum(dtype=torch.float64))
    return total


def gram(X: np.ndarray, device: str | torch.device = "auto") -> np.ndarray:
    """X.T @ X as float64 (d x d): a sparse product on CPU for sparse data, one float32 matmul otherwise."""
    dev = resolve_device(device)
    X = np.asarray(X, dtype=np.float32)
    if dev.type == "cpu" and np.count_nonzero(X) < SPARSE_DENSITY * X.size:
        S = sp.csr_matrix(X)
        return np.asarray((S.T @ S).todense(), dtype=np.float64)
    T = torch.from_numpy(X).to(dev)
    return (T.T @ T).double().cpu().numpy()
