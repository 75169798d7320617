"""Data-parallel training over processes (torchrun): the process group, each rank's rows of a batch, the all-reduce."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# rank 0 alone checks the run directory, writes checkpoints and scores curve points; the others wait for it at their
# next collective, so the timeout is generous
TIMEOUT = timedelta(hours=2)
# draws that RowDraws makes for the whole batch and slices: factories, *_like, in-place fills, dropout
FACTORIES = (torch.randn, torch.rand, torch.randint)
LIKE = {torch.randn_like: torch.randn, torch.rand_like: torch.rand}
IN_PLACE = (torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.exponential_,
            torch.Tensor.random_, torch.Tensor.geometric_, torch.Tensor.log_normal_, torch.Tensor.cauchy_)


def world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (RANK; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def setup() -> int:
    """Join torchrun's process group once when WORLD_SIZE > 1: NCCL for CUDA tensors (each rank on its LOCAL_RANK
    GPU) beside gloo for CPU ones, gloo alone without CUDA. Returns the world size."""
    n = world_size()
    if n > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        if cuda:
            torch.cuda.set_device(local_device(torch.device("cuda")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    return n


def teardown() -> None:
    """Leave the process group (at the end of a torchrun process; nothing outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (cuda:LOCAL_RANK) under torchrun; any other device unchanged."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def decide(go: bool | None = None) -> bool:
    """Rank 0 says whether the run goes ahead (after its directory checks); every other rank waits for the answer."""
    box = [go]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous rows [lo, hi) of an n-row batch; the first n % world ranks get one row more."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class RowDraws(TorchFunctionMode):
    """While a rank computes the loss of rows [lo, hi) of an n-row batch, each random draw whose leading dimension
    is the rank's row count (torch.rand/randn/randint and their *_like, in-place fills such as normal_, dropout) is
    made for all n rows and sliced: every row gets the numbers one process would give it, and the random stream
    advances alike on every rank. Other draws are made whole, identical on every rank."""

    def __init__(self, lo: int, hi: int, n: int) -> None:
        super().__init__()
        self.lo, self.hi, self.n = lo, hi, n

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        k, whole = self.hi - self.lo, slice(self.lo, self.hi)
        if func in FACTORIES:
            if "size" in kwargs:
                if self._rows(kwargs["size"]):
                    return func(*args, **{**kwargs, "size": (self.n, *kwargs["size"][1:])})[whole]
            elif func is torch.randint:
                if args and self._rows(args[-1]):
                    return func(*args[:-1], (self.n, *args[-1][1:]), **kwargs)[whole]
            else:
                size = tuple(args[0]) if len(args) == 1 and not isinstance(args[0], int) else args
                if self._rows(size):
                    return func(self.n, *size[1:], **kwargs)[whole]
        elif func in LIKE and args[0].dim() and len(args[0]) == k:
            x = args[0]
            kw = {"dtype": x.dtype, "device": x.device, **kwargs}
            kw.pop("memory_format", None)
            return LIKE[func]((self.n, *x.shape[1:]), **kw)[whole]
        elif func in IN_PLACE and args[0].dim() and len(args[0]) == k:
            x = args[0]
            full = x.new_empty((self.n, *x.shape[1:]))
            func(full, *args[1:], **kwargs)
            return x.copy_(full[whole])
        elif func is F.dropout:
            x, p, training = args[0], kwargs.get("p", args[1] if len(args) > 1 else 0.5), \
                kwargs.get("training", args[2] if len(args) > 2 else True)
            if training and p > 0 and x.dim() and len(x) == k:
                return x * F.dropout(x.new_ones((self.n, *x.shape[1:])), p, True)[whole]
        return func(*args, **kwargs)

    def _rows(self, size) -> bool:
        size = tuple(size)
        return bool(size) and isinstance(size[0], int) and size[0] == self.hi - self.lo and self.n != size[0]


class DataParallel:
    """One rank of a data-parallel job. Every rank draws the same global batch, takes its own contiguous rows, and
    the gradients are summed over the ranks weighted so that the result is one process's gradient of the global
    batch's loss: rows/batch for a mean over rows, 1 for a sum over rows (`row_reduction` "sum"). The loss is
    combined the same way, so every rank steps on the same gradient and logs the global loss."""

    def __init__(self, summed: tuple[str, ...] = ()) -> None:
        self.rank, self.world, self.summed = dist.get_rank(), dist.get_world_size(), set(summed)

    def forward_backward(self, fb: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, idx: torch.Tensor,
                         key: str, params: list[torch.Tensor]) -> torch.Tensor:
        """This rank's forward and backward on its rows of the batch X[idx], then the all-reduce; the global loss."""
        n = len(idx)
        lo, hi = rows(n, self.rank, self.world)
        weight = (1.0 if key in self.summed else (hi - lo) / n) if hi > lo else 0.0
        if hi == lo:  # fewer rows than ranks: a stand-in row, weight 0, keeps this rank's random stream in step
            lo, hi = 0, 1
        with RowDraws(lo, hi, n):
            loss = fb(X[idx[lo:hi]])
        return all_reduce(params, loss, weight)

    def broadcast(self, modules: nn.Module, buffers_only: bool = False) -> None:
        """Rank 0's parameters and buffers (or buffers only: batch-norm running statistics) to every rank."""
        tensors = list(modules.buffers()) + ([] if buffers_only else [p.data for p in modules.parameters()])
        for t in tensors:
            if t.is_floating_point() or not buffers_only:
                dist.broadcast(t, src=0)

    @staticmethod
    def barrier() -> None:
        dist.barrier()


def all_reduce(params: list[torch.Tensor], loss: torch.Tensor, weight: float) -> torch.Tensor:
    """Sum weight x (gradient, loss) over the ranks in one flat buffer; the gradients are replaced in place."""
    grads = [p.grad for p in params if p.grad is not None]  # the same parameters have gradients on every rank
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.reshape(1).float()]) * weight
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1].to(loss.dtype)
