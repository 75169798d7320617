"""Generators: the Synthesizer protocol and registry, the shared Trainer, one module per generator."""
from .base import (SYNTHESIZERS, Synthesizer, TorchSynthesizer, build_synthesizer, get_synthesizer,
                   load_entry_points, register_synthesizer)
from .trainer import Trainer, TrainingDiverged, resolve_device
from . import (baselines, corgan, dp_independent, ehrdiff, emrwgan, external, medgan, mst, tabddpm,  # noqa: F401
               vae)  # register the generators (mst imports mbi, its optional extra, only when it fits)
from . import dp  # noqa: F401  (trainer.dp, models/dp.py)
from .check import ContractError, check_data, check_synthesizer
from .plugins import plugin_searchpath, provider

__all__ = ["SYNTHESIZERS", "ContractError", "Synthesizer", "TorchSynthesizer", "Trainer", "TrainingDiverged",
           "build_synthesizer", "check_data", "check_synthesizer", "get_synthesizer", "load_entry_points",
           "plugin_searchpath", "provider", "register_synthesizer", "resolve_device"]
