"""dift-fast: fast, batched, exact DIFT diffusion features for dense correspondence.

Importing this package loads no model, builds no extension and touches no network.

This package is the engine and a thin API (the names below). The ONNX export and the onnxruntime and TensorRT
backends live in the top-level ``export/`` folder of the source tree, installed as ``dift_fast.export``; this
package never imports it and finds those backends through the ``dift_fast.backends`` entry points. The README's
"Layout" section maps every module to its one job.
"""

from .config import PRESETS, DiftConfig
from .edit import propagate_edit
from .extractor import DiftExtractor
from .images import load_image
from .index import FeatureIndex
from .matching import match_points, mutual_nearest_neighbors, sample_descriptors
from .pair import ImageFeatures, extract_features, match_pair, unbatch
from .viz import plot_heatmaps, plot_matches, plot_points

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DiftConfig",
    "DiftExtractor",
    "FeatureIndex",
    "ImageFeatures",
    "__version__",
    "extract_features",
    "load_image",
    "match_pair",
    "match_points",
    "mutual_nearest_neighbors",
    "plot_heatmaps",
    "plot_matches",
    "plot_points",
    "propagate_edit",
    "sample_descriptors",
    "unbatch",
]
