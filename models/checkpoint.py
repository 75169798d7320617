"""Atomic, resumable trainer checkpoints (checkpoint.pt) and the train_stats.jsonl rows a resumed run replays."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ehrbench.data.cache import atomic_path

from .base import TorchSynthesizer, read_tensors

CHECKPOINT_KEYS = {"name", "params", "n_features", "phase", "step", "completed", "n_ema", "state", "optimizers"}


def save_checkpoint(path: Path, synth: TorchSynthesizer, opts: dict, phase: str, step: int,
                    completed: list[str], clock: dict | None = None) -> None:
    """Write the model, EMA, optimiser states, position and `clock` (training seconds and steps so far, so that a
    resumed run reports its whole cost) to `path` through a temporary file and a rename, so a crash while writing
    leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"name": synth.name, "params": synth.get_params(), "n_features": synth.n_features_,
            "phase": phase, "step": step, "completed": completed, "n_ema": getattr(synth, "n_ema_", 0),
            "state": synth.state_tensors(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "clock": clock or {}}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)


def load_checkpoint(path: Path | None, synth: TorchSynthesizer) -> dict | None:
    """The checkpoint at `path` (None when there is none), checked to belong to this model and hyperparameters;
    anything unreadable is one sentence naming the file, never torch's own text or a traceback."""
    if path is None or not path.exists():
        return None
    advice = "delete it, or pass rerun=true to run_benchmark.py, to start this run over"
    ckpt = read_tensors(path, advice)
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        raise ValueError(f"{path} is unreadable (not an ehrbench trainer checkpoint); {advice}")
    if ckpt["name"] != synth.name or ckpt["n_features"] != synth.n_features_:
        raise ValueError(f"{path} belongs to model '{ckpt['name']}' with {ckpt['n_features']} features, not "
                         f"'{synth.name}' with {synth.n_features_}; delete it or use another run dir")
    if ckpt["params"] != synth.get_params():
        diff = sorted(k for k in ckpt["params"] if ckpt["params"][k] != synth.get_params().get(k))
        raise ValueError(f"{path} was trained with other hyperparameters ({', '.join(diff)}); delete it or use "
                         "another run dir")
    return ckpt


def restore_weights(synth: TorchSynthesizer, ckpt: dict, device: torch.device) -> None:
    """Put the checkpoint's model and EMA weights (and EMA count) back into `synth`, on `device`."""
    synth.load_state_tensors(ckpt["state"])
    synth.to(device)
    synth.n_ema_ = ckpt["n_ema"]


def last_good(path: Path | None) -> str:
    """The end of a divergence message: the last good checkpoint if one exists, else that there is none."""
    if path is not None and path.exists():
        return f"the last good checkpoint is {path}"
    return "no checkpoint had been written yet"


def roll_back(path: Path | None, synth: TorchSynthesizer, device: torch.device) -> str:
    """Put the last good checkpoint's weights back into `synth` (a deferred check found a bad step after it) and
    return the end of the divergence message; without a checkpoint the model is left as it is."""
    ckpt = load_checkpoint(path, synth)
    if ckpt is None:
        return last_good(path)
    restore_weights(synth, ckpt, device)
    return f"{last_good(path)} (phase '{ckpt['phase']}', step {ckpt['step']}) and the model was rolled back to it"


def truncate_stats(path: Path | None, phase: str, step: int) -> None:
    """Drop the log rows of `phase` written after `step`, the checkpoint a run resumes from (they are replayed)."""
    if path is None or not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if not (r["phase"] == phase and r["step"] > step)]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
