"""Metrics: the registry, evaluate(), and the fidelity, utility and privacy families."""
from .registry import FAMILIES, GOALS, METRICS, MetricSpec, evaluate, get_metric, register_metric
from . import fidelity  # noqa: F401  (registers the fidelity metrics)

__all__ = ["FAMILIES", "GOALS", "METRICS", "MetricSpec", "evaluate", "get_metric", "register_metric"]
