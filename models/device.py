"""Devices and memory: resolve auto|cpu|cuda|mps with clear errors, and a per-run peak-memory window."""
from __future__ import annotations

import resource
import sys

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda > mps > cpu; a requested device that is missing is an error."""
    if name not in DEVICES:
        raise ValueError(f"unknown device '{name}'; valid choices: {', '.join(DEVICES)}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda was requested but CUDA is not available here; use device=auto or cpu")
    if name == "mps" and not has_mps:
        raise RuntimeError("trainer.device=mps was requested but MPS is not available here; use device=auto or cpu")
    return torch.device(name)


def reset_peak_memory() -> str:
    """Start a new peak-memory window (one run), so a worker process reused across sweep cells (joblib) does not
    carry an earlier cell's peak into the next one. Resets CUDA's peak statistics and, on Linux, the peak resident
    set size (VmHWM, by writing 5 to /proc/self/clear_refs). Returns the scope peak_memory_mb then covers: "run",
    or "process" where the host peak cannot be reset (macOS, restricted /proc)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "run"
    except OSError:
        return "process"


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the peak resident set size since the last reset_peak_memory()
    (Linux VmHWM; elsewhere the process's lifetime peak from getrusage)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # macOS reports bytes, Linux KiB
