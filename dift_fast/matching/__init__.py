"""Matching DIFT features (spec §4): exact point transfer, keypoint descriptors, mutual nearest neighbours.

- :mod:`.transfer`: ``match_points`` (exact and fast) and its literal oracle ``match_points_reference``;
- :mod:`.descriptors`: ``sample_descriptors`` at keypoints, ``pooled_descriptors`` per image;
- :mod:`.mutual`: ``mutual_nearest_neighbors`` between descriptor sets, ``dense_mutual_nearest_neighbors`` between maps;
- :mod:`.cells`: where feature cells are in the image; :mod:`.checks`: the input checks they share.
"""

from .checks import check_points
from .descriptors import pooled_descriptors, sample_descriptors
from .mutual import dense_mutual_nearest_neighbors, mutual_nearest_neighbors
from .transfer import cosine_maps, match_points, match_points_reference

__all__ = [
    "check_points",
    "cosine_maps",
    "dense_mutual_nearest_neighbors",
    "match_points",
    "match_points_reference",
    "mutual_nearest_neighbors",
    "pooled_descriptors",
    "sample_descriptors",
]
