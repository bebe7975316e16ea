"""One runner per benchmark: load the dataset, make sure features are cached, score, return a Report."""

from .davis import run_davis
from .hpatches import run_hpatches
from .jhmdb import run_jhmdb
from .pf_willow import run_pf_willow
from .spair import run_spair
from .synthetic import run_synthetic

__all__ = ["run_davis", "run_hpatches", "run_jhmdb", "run_pf_willow", "run_spair", "run_synthetic"]
