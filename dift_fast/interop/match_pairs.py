"""``dift-fast match-pairs``: an hloc pairs file in, hloc's ``features.h5`` and ``matches.h5`` out.

Two phases, each resumable: (1) every image named in the pairs file that ``features.h5`` lacks is extracted once
(or read from a feature store) and its keypoints, descriptors, scores and size are written; (2) every pair that
``matches.h5`` lacks is matched from the descriptors in ``features.h5`` (so a resumed run matches exactly as an
uninterrupted one). Both files are written through :class:`~dift_fast.interop.h5journal.H5Journal`: a crash
never damages what an earlier run or phase committed. An image that cannot be used is reported and its pairs
are skipped; the others go on.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DiftConfig
from ..store.store import StoreError
from .h5journal import H5Journal, import_h5py
from .hloc import (
    H5Keypoints,
    Pair,
    descriptors_at,
    matches_dtype,
    names_to_pair,
    pair_name_in,
    parse_keypoints_spec,
    parse_pairs,
)

__all__ = ["CONVENTIONS", "DESCRIPTOR_DTYPES", "MatchPairsSummary", "match_pairs"]

logger = logging.getLogger(__name__)

CONVENTIONS = ("aligned", "reference")
DESCRIPTOR_DTYPES = {"fp16": np.float16, "fp32": np.float32}
FEATURES_FORMAT = "dift-fast-hloc-features/1"
MATCHES_FORMAT = "dift-fast-hloc-matches/1"
FEATURE_DATASETS = ("keypoints", "descriptors", "scores", "image_size")
MATCH_DATASETS = ("matches0", "matching_scores0")
_DESCRIPTOR_CACHE = 64  # images whose descriptors stay in memory while matching


@dataclass
class MatchPairsSummary:
    """What a run did."""

    pairs: int = 0  # distinct pairs in the pairs file (a pair and its reverse count once)
    pairs_done_before: int = 0  # already in matches.h5
    pairs_matched: int = 0  # written by this run
    pairs_skipped: int = 0  # not matched because an image failed
    images: int = 0  # distinct images in the pairs file
    images_done_before: int = 0  # already in features.h5
    images_extracted: int = 0
    images_from_store: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # image name -> reason
    tiny_random: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.pairs_skipped


def _dift_identity(config: DiftConfig, store: Any, backend_options: Any = None) -> tuple[dict[str, Any], bool]:
    """The feature identity (:mod:`dift_fast.identity`) of this run's maps, and whether the model has random weights.

    Without ``--store`` the maps are the extractor's full fp32 maps: their identity is predicted from the config
    (no model is loaded; the extractor's own identity is checked against it when one is). With ``--store`` they
    are the store's maps: its identity, whose feature part must equal this run's.
    """
    from ..backbones.registry import is_tiny_model
    from ..identity import config_identity, describe_diff
    from ..store.identity import feature_part

    tiny = is_tiny_model(config)
    features = config_identity(config, backend_options=backend_options)  # an --export-dir's dtype is what runs
    if store is None:
        return features, tiny
    if feature_part(store.meta["identity"]) != features:
        raise ValueError(
            f"--store {store.root} was made with other settings than this run's "
            f"({describe_diff(feature_part(store.meta['identity']), features)}); pass the store's model options"
        )
    return dict(store.meta["identity"]), tiny


def match_pairs(
    images: str | os.PathLike,
    pairs: str | os.PathLike,
    features: str | os.PathLike,
    matches: str | os.PathLike,
    *,
    config: DiftConfig,
    extractor: Any = None,
    backend_options: Any = None,
    keypoints: str = "grid:cell",
    store: str | os.PathLike | None = None,
    convention: str = "aligned",
    mutual: bool = True,
    min_score: float | None = None,
    descriptor_dtype: str = "fp16",
    progress: bool = False,
    rotate_seconds: float = 30.0,
) -> MatchPairsSummary:
    """Write hloc's ``features`` and ``matches`` files for the pairs in ``pairs`` (see the module docstring).

    Args:
        images: folder the pairs file's names are relative to.
        pairs: hloc pairs file (``name0 name1`` per line).
        features, matches: the HDF5 files to create or continue.
        config: the extraction settings (recorded in both files; a file made with others is refused).
        extractor: a loaded :class:`~dift_fast.DiftExtractor` with ``config``, or a zero-argument callable that
            loads one (called only when some image must be extracted), or None to load from ``config``.
        backend_options: the options the extractor is (or will be) built with (``OrtOptions``/``TrtOptions``): an
            ``export_dir``'s graph dtype is part of the features' identity.
        keypoints: ``grid:cell`` (centre of every feature cell), ``grid:STRIDE`` (pixels) or ``h5:PATH``.
        store: a feature store (``dift-fast extract ROOT --out STORE``) to read maps from; it must have been
            made with ``config`` (else refused); images it lacks are extracted and encoded as it encodes.
        convention: how descriptors are sampled at keypoints (``sample_descriptors``): ``aligned`` (0-based
            pixel centres, consistent with hloc keypoints; default) or ``reference`` (the DIFT HPatches code).
        mutual, min_score: the matcher: mutual nearest neighbours (or plain nearest) with cosine >= min_score.
        descriptor_dtype: ``fp16`` (hloc's ``as_half`` default) or ``fp32``.
        progress: progress bars.
        rotate_seconds: how much work a crash may lose at most (see ``H5Journal``).

    Raises:
        ValueError: a malformed pairs file (the line is named), bad options, or output files made with other
            settings. Image problems do not raise: they are in the summary's ``failed``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if descriptor_dtype not in DESCRIPTOR_DTYPES:
        raise ValueError(f"descriptor_dtype must be one of {sorted(DESCRIPTOR_DTYPES)}, got {descriptor_dtype!r}")
    import_h5py()
    image_dir = Path(images)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"--images {image_dir} is not a folder")
    features, matches = Path(features), Path(matches)
    if features.resolve() == matches.resolve():
        raise ValueError(f"--features and --matches are the same file ({features}); give two files")
    pair_list = _unique_pairs(parse_pairs(pairs))
    if not pair_list:
        raise ValueError(f"pairs file {pairs} lists no pairs (expected 'name0 name1' per line)")
    kp_source = parse_keypoints_spec(keypoints)
    try:
        if isinstance(kp_source, H5Keypoints) and kp_source.path.resolve() in (features.resolve(), matches.resolve()):
            raise ValueError(f"--keypoints {keypoints} is an output file; read keypoints from another file")
        feature_store = None
        if store is not None:
            from ..store import FeatureStore

            feature_store = FeatureStore.open(store)
        dift, tiny = _dift_identity(config, feature_store, backend_options)
        feature_identity = {
            "format": FEATURES_FORMAT,
            **dift,
            "keypoints": kp_source.spec,
            "convention": convention,
            "descriptors": f"l2-normalised {descriptor_dtype}",
        }
        match_identity = {
            "format": MATCHES_FORMAT,
            "mutual": mutual,
            "min_score": min_score,
            **{f"features.{k}": v for k, v in feature_identity.items() if k != "format"},
        }
        summary = MatchPairsSummary(pairs=len(pair_list), tiny_random=tiny)
        if extractor is None and backend_options is not None:
            from ..extractor import DiftExtractor

            def extractor() -> Any:
                return DiftExtractor.from_pretrained(config=config, backend_options=backend_options)

        run = _Run(
            image_dir,
            config,
            dift,
            extractor,
            kp_source,
            feature_store,
            convention,
            DESCRIPTOR_DTYPES[descriptor_dtype],
            progress,
            summary,
        )
        # Both files are locked and their settings checked before any work; features are committed before
        # matching reads them back.
        with (
            H5Journal(
                features, feature_identity, required=FEATURE_DATASETS, label="--features", rotate_seconds=rotate_seconds
            ) as feat_file,
            H5Journal(
                matches, match_identity, required=MATCH_DATASETS, label="--matches", rotate_seconds=rotate_seconds
            ) as match_file,
        ):
            run.extract_images(pair_list, feat_file)
            feat_file.commit()
            run.match(pair_list, features, match_file, mutual, min_score)
        return summary
    finally:
        if isinstance(kp_source, H5Keypoints):
            kp_source.close()


def _unique_pairs(pairs: list[Pair]) -> list[Pair]:
    """Drop repeated pairs and reversed duplicates (hloc's ``find_unique_new_pairs``), keeping the file's order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pairs:
        if (p.name0, p.name1) in seen or (p.name1, p.name0) in seen:
            continue
        seen.add((p.name0, p.name1))
        out.append(p)
    return out


class _Run:
    def __init__(
        self,
        image_dir: Path,
        config: DiftConfig,
        identity: dict[str, Any],
        extractor: Any,
        kp_source: Any,
        store: Any,
        convention: str,
        desc_dtype: Any,
        progress: bool,
        summary: MatchPairsSummary,
    ) -> None:
        self.image_dir = image_dir
        self.config = config
        self.identity = identity
        self._extractor = extractor
        self._extractor_checked = False
        self.kp_source = kp_source
        self.store = store
        self.store_entries = store.entries() if store is not None else {}
        self.convention = convention
        self.desc_dtype = desc_dtype
        self.progress = progress
        self.summary = summary

    # -- phase 1: features ------------------------------------------------------------------------------------

    def extractor(self) -> Any:
        """The extractor, loaded on first use (a run whose images are all done or stored never loads a model)."""
        if not self._extractor_checked:
            if self._extractor is None:
                from ..extractor import DiftExtractor

                self._extractor = DiftExtractor.from_pretrained(config=self.config)
            elif not hasattr(self._extractor, "extract_prepared"):
                self._extractor = self._extractor()
            if self._extractor.config != self.config:
                raise ValueError(f"the extractor's config {self._extractor.config} is not this run's {self.config}")
            from ..identity import describe_diff, extractor_identity
            from ..store.identity import feature_part

            # A stand-in without a model (no components: test doubles) has no identity to check.
            has_model = getattr(self._extractor, "components", None) is not None
            mine, recorded = (extractor_identity(self._extractor) if has_model else None), feature_part(self.identity)
            if has_model and mine != recorded:
                raise ValueError(
                    "the loaded extractor computes other features than the outputs record "
                    f"({describe_diff(recorded, mine, old_name='recorded', new_name='extractor')}); nothing was written"
                )
            self._extractor_checked = True
        return self._extractor

    def extract_images(self, pairs: list[Pair], out: H5Journal) -> None:
        first_line: dict[str, int] = {}
        for p in pairs:
            first_line.setdefault(p.name0, p.line)
            first_line.setdefault(p.name1, p.line)
        self.summary.images = len(first_line)
        todo = [n for n in first_line if n not in out]
        self.summary.images_done_before = len(first_line) - len(todo)
        bar = _bar(todo, self.progress, "dift-fast match-pairs: features", "image")
        for name in bar:
            try:
                feats, size = self._features_of(name)
                kps, scores = self.kp_source(name, size, tuple(feats.shape))
            except (ValueError, OSError, KeyError, StoreError) as err:  # bad image, keypoints or store file
                self.summary.failed[name] = f"{err} (first named on pairs line {first_line[name]})"
                logger.warning("skipped image %s: %s", name, err)
                continue
            desc = descriptors_at(feats, kps, size, self.convention)
            out.write(
                name,
                {
                    "keypoints": kps,
                    "descriptors": desc.astype(self.desc_dtype),
                    "scores": scores,
                    "image_size": np.array(size, dtype=np.int64),
                },
            )

    def _features_of(self, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """Feature map [C, h, w] and original (W, H) of one image: from the store, or extracted now."""
        from ..extractor import NonFiniteFeaturesError
        from ..images import ImageError, prepare_image

        entry = self.store_entries.get(name)
        if entry is not None:
            self.summary.images_from_store += 1
            return self.store.get(name).float(), tuple(entry.original_size)
        path = self.image_dir / name
        if not path.is_file():
            raise ImageError(name, f"no such file {path}")
        extractor = self.extractor()
        prepared = prepare_image(path, extractor.config.image_size, name=name)
        try:
            batch = extractor.extract_prepared([prepared])
        except NonFiniteFeaturesError as err:
            raise ImageError(name, str(err)) from None
        feats = batch.features[0]
        if self.store is not None:
            feats = self.store.encode(feats).float()  # the store's PCA and precision, as its own images have
        self.summary.images_extracted += 1
        return feats, batch.original_sizes[0]

    # -- phase 2: matches ------------------------------------------------------------------------------------

    def match(self, pairs: list[Pair], features: Path, out: H5Journal, mutual: bool, min_score: float | None) -> None:
        from ..extractor import resolve_device
        from ..pair import match_descriptors

        done = out.names()
        todo = [p for p in pairs if not pair_name_in(done, p.name0, p.name1)]
        self.summary.pairs_done_before = len(pairs) - len(todo)
        runnable = [p for p in todo if p.name0 not in self.summary.failed and p.name1 not in self.summary.failed]
        self.summary.pairs_skipped = len(todo) - len(runnable)
        if not runnable:
            return
        device = self._extractor.device if hasattr(self._extractor, "device") else resolve_device(self.config.device)
        h5py = import_h5py()
        cache: OrderedDict[str, torch.Tensor] = OrderedDict()

        def descriptors(fd: Any, name: str) -> torch.Tensor:  # [N, D] float32 on device
            if name in cache:
                cache.move_to_end(name)
                return cache[name]
            desc = torch.from_numpy(np.asarray(fd[name]["descriptors"], dtype=np.float32)).T.contiguous().to(device)
            cache[name] = desc
            if len(cache) > _DESCRIPTOR_CACHE:
                cache.popitem(last=False)
            return desc

        with h5py.File(features, "r") as fd:
            for p in _bar(runnable, self.progress, "dift-fast match-pairs: matches", "pair"):
                d0, d1 = descriptors(fd, p.name0), descriptors(fd, p.name1)
                m0, s0 = match_descriptors(d0, d1, mutual=mutual, min_score=min_score)
                out.write(
                    names_to_pair(p.name0, p.name1),
                    {
                        "matches0": m0.cpu().numpy().astype(matches_dtype(len(d1))),
                        "matching_scores0": s0.cpu().numpy().astype(np.float16),
                    },
                )
                self.summary.pairs_matched += 1


def _bar(items: list, progress: bool, desc: str, unit: str) -> Any:
    if not progress or not items:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit)
