"""dift-fast: fast, batched, exact DIFT diffusion features for dense correspondence.

Importing this package loads no model, builds no extension and touches no network.
"""

from .config import PRESETS, DiftConfig
from .edit import propagate_edit
from .extractor import DiftExtractor
from .index import FeatureIndex
from .matching import match_points, mutual_nearest_neighbors, sample_descriptors
from .viz import plot_matches, plot_points

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DiftConfig",
    "DiftExtractor",
    "FeatureIndex",
    "__version__",
    "match_points",
    "mutual_nearest_neighbors",
    "plot_matches",
    "plot_points",
    "propagate_edit",
    "sample_descriptors",
]
