"""The numbers the DIFT paper (and later reproductions) report, as restated in the spec (§5, §6).

Only numbers the spec states are listed; a benchmark without any shows its measured numbers alone.
"""

from __future__ import annotations

__all__ = ["REPORTED", "REPORTED_SOURCE"]

# Each benchmark's protocol preset, per backbone, is in dift_fast.backbones.catalog (protocol_preset).

# benchmark -> metric name (as the runners name them) -> reported value in percent (DIFT_sd).
REPORTED: dict[str, dict[str, float]] = {
    "spair": {
        "PCK@0.1 per image": 52.9,  # the paper, SPair-71k test, per image (pooled over pairs)
        "PCK@0.1 per point": 59.6,  # per point, bbox threshold, as reproduced by later work (CleanDIFT)
    },
    "pf-willow": {},
    "hpatches": {},
    "davis": {},
    "jhmdb": {},
    "synthetic-homography": {},
}

REPORTED_SOURCE: dict[str, str] = {
    "spair": "DIFT_sd: per image 52.9 (Tang et al., NeurIPS 2023); per point 59.6 (reproduced by later work)",
    "pf-willow": "the spec gives no PF-WILLOW numbers (the paper's protocol details were not published)",
    "hpatches": "the spec gives no HPatches numbers",
    "davis": "the spec gives no DAVIS-2017 numbers",
    "jhmdb": "the paper reports JHMDB PCK@0.1/0.2 for DIFT_sd and DIFT_adm in its temporal-correspondence table; "
    "they could not be checked against the paper here, so none are listed",
    "synthetic-homography": "no paper numbers: this benchmark is dift-fast's own end-to-end check",
}
