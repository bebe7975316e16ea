"""dift-fast: fast, batched, exact DIFT diffusion features for dense correspondence.

Importing this package loads no model, builds nothing and touches no network.
"""

from .config import PRESETS, DiftConfig
from .extractor import DiftExtractor
from .matching import match_points

__version__ = "0.1.0"

__all__ = ["PRESETS", "DiftConfig", "DiftExtractor", "__version__", "match_points"]
