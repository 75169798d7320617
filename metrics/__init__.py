"""Metrics: the registry, evaluate(), and the fidelity, utility and privacy families."""
from .registry import (FAMILIES, GOALS, METRICS, MetricSpec, NotApplicable, check_split, evaluate, get_metric,
                       register_metric)
from . import distribution, fidelity, privacy, utility  # noqa: F401  (register the metrics)

__all__ = ["FAMILIES", "GOALS", "METRICS", "MetricSpec", "NotApplicable", "check_split", "evaluate", "get_metric",
           "register_metric"]
