"""Data-parallel training over processes (torchrun): the process group and torch's DistributedDataParallel."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# rank 0 alone checks the run directory, writes checkpoints and scores curve points; the others wait for it at their
# next collective, so the timeout is generous
TIMEOUT = timedelta(hours=2)


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


class LossModule(nn.Module):
    """The generator's `loss(x, key)` as a module's forward over its `modules_`, for DistributedDataParallel."""

    def __init__(self, synth: Any) -> None:
        super().__init__()
        self.net = synth.modules_
        self.loss = synth.loss

    def forward(self, x: torch.Tensor, key: str) -> torch.Tensor:
        return self.loss(x, key)


class DataParallel:
    """One rank of a data-parallel job on torch's DistributedDataParallel (gloo on CPU, NCCL on GPUs). Every rank
    draws the same global batch and computes the loss of its own contiguous rows; DDP averages the gradients over
    the ranks during backward. Each rank's loss is scaled by world x rows/batch (a mean over rows) or world (a sum,
    `row_reduction` "sum"), so the average is one process's gradient of the global batch's loss, and every rank
    takes the same optimiser step. Random draws inside a loss (noise, dropout) are each rank's own, so a stochastic
    loss trains like one process on the same batches without equalling it draw for draw."""

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.module: DistributedDataParallel | None = None
        self.summed = False

    def wrap(self, synth: Any) -> None:
        """Wrap the model once its weights are loaded: DDP starts every rank from rank 0's parameters and buffers
        (and broadcasts rank 0's buffers, e.g. batch-norm statistics, before every forward)."""
        self.summed = getattr(synth, "row_reduction", None) == "sum"
        # find_unused_parameters: a GAN's loss keys each reach only part of the model
        self.module = DistributedDataParallel(LossModule(synth), find_unused_parameters=True)

    def forward_backward(self, fb: Callable[..., torch.Tensor], X: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """This rank's forward and backward on its rows of the batch X[idx] through DDP; the global batch's loss."""
        n = len(idx)
        lo, hi = rows(n, self.rank, self.world)
        weight = (1.0 if self.summed else (hi - lo) / n) if hi > lo else 0.0
        if hi == lo:  # fewer rows than ranks: a stand-in row of weight 0 keeps this rank in DDP's collectives
            lo, hi = 0, 1
        loss = fb(X[idx[lo:hi]], self.module, weight * self.world)
        total = (loss.detach().float() * weight).reshape(1)
        dist.all_reduce(total)
        return total[0].to(loss.dtype)

    def broadcast_buffers(self, modules: nn.Module) -> None:
        """Rank 0's floating buffers (batch-norm statistics) to every rank, so that every rank ends a step alike."""
        for t in modules.buffers():
            if t.is_floating_point():
                dist.broadcast(t, src=0)

    @staticmethod
    def barrier() -> None:
        dist.barrier()
