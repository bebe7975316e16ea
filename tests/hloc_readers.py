"""hloc's ways of reading features.h5 and matches.h5, rewritten from its documented behaviour (hloc not imported).

hloc.utils.io: ``list_h5_names`` (groups holding datasets), ``get_keypoints`` (``f[name]["keypoints"]``),
``find_pair`` (``names_to_pair`` in both orders, then the old ``_``-joined names), ``get_matches`` (indices where
``matches0 != -1``, flipped when the pair is stored reversed). hloc.match_features' ``FeaturePairsDataset`` reads
every dataset of a group as ``key + "0"``/``"1"`` float tensors and an empty image of ``image_size[::-1]``.
"""

from __future__ import annotations

import h5py
import numpy as np
import torch


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def list_h5_names(path) -> list[str]:
    names = []
    with h5py.File(str(path), "r", libver="latest") as fd:

        def visit_fn(_, obj):
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))

        fd.visititems(visit_fn)
    return list(set(names))


def get_keypoints(path, name: str) -> np.ndarray:
    with h5py.File(str(path), "r", libver="latest") as hfile:
        return hfile[name]["keypoints"].__array__()


def find_pair(hfile, name0: str, name1: str) -> tuple[str, bool]:
    for pair, reverse in (
        (names_to_pair(name0, name1), False),
        (names_to_pair(name1, name0), True),
        (names_to_pair(name0, name1, "_"), False),
        (names_to_pair(name1, name0, "_"), True),
    ):
        if pair in hfile:
            return pair, reverse
    raise ValueError(f"Could not find pair {(name0, name1)}")


def get_matches(path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(str(path), "r", libver="latest") as hfile:
        pair, reverse = find_pair(hfile, name0, name1)
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    matches = np.stack([idx, matches[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    return matches, scores[idx]


def feature_pair_data(path, name0: str, name1: str) -> dict[str, torch.Tensor]:
    data = {}
    with h5py.File(path, "r") as fd:
        for suffix, name in (("0", name0), ("1", name1)):
            grp = fd[name]
            for k, v in grp.items():
                data[k + suffix] = torch.from_numpy(v.__array__()).float()
            data["image" + suffix] = torch.empty((1, *tuple(grp["image_size"])[::-1]))
    return data
