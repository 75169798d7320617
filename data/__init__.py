"""Datasets: the EHRData container, the DATASETS registry and one module per source."""
from .base import DATASETS, KINDS, EHRData, check_matrix, from_matrix, load_dataset, register_dataset, split_indices
from . import synthetic  # noqa: F401  (registers "synthetic")
from . import matrix  # noqa: F401  (registers "matrix")
from . import mimic3  # noqa: F401  (registers "mimic3")
from . import ehrdiff_npy  # noqa: F401  (registers "ehrdiff_npy")
from . import diabetes130  # noqa: F401  (registers "diabetes130")
from . import physionet2012  # noqa: F401  (registers "physionet2012")
from .export import export_split, split_fingerprint

__all__ = ["DATASETS", "KINDS", "EHRData", "check_matrix", "from_matrix", "load_dataset", "register_dataset",
           "export_split", "split_fingerprint", "split_indices"]
