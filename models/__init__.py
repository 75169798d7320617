"""Generators: the Synthesizer protocol and registry, the shared Trainer, one module per generator."""
from .base import (SYNTHESIZERS, Synthesizer, TorchSynthesizer, build_synthesizer, get_synthesizer,
                   load_entry_points, register_synthesizer)
from .trainer import Trainer, TrainingDiverged, resolve_device
from . import baselines, ehrdiff, emrwgan, external, medgan, vae  # noqa: F401  (register generators)

__all__ = ["SYNTHESIZERS", "Synthesizer", "TorchSynthesizer", "Trainer", "TrainingDiverged", "build_synthesizer",
           "get_synthesizer", "load_entry_points", "register_synthesizer", "resolve_device"]
