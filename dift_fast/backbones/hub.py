"""A single weights file given as a local path or as ``owner/repo/filename`` on the Hugging Face hub.

The hub rules are the default model's (:func:`dift_fast.loading.resolve_model_folder`): the ``huggingface_hub``
cache is used, ``HF_HUB_OFFLINE=1`` reads only that cache, and a failure says how to get the file without network.
"""

from __future__ import annotations

import os
from pathlib import Path

from .weights import WeightsError

__all__ = ["resolve_weights_file", "split_hub_file"]


def split_hub_file(spec: str) -> tuple[str, str] | None:
    """``"owner/repo/path/in/repo.ext"`` -> (``"owner/repo"``, ``"path/in/repo.ext"``); None for local-looking specs.

    A spec is local when it exists, starts with ``.``, ``/`` or ``~``, uses a backslash, or has fewer than three
    ``/``-separated parts.
    """
    if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or "\\" in spec:
        return None
    parts = spec.split("/")
    if len(parts) < 3 or any(not p or p in (".", "..") for p in parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_weights_file(spec: str | os.PathLike, revision: str | None = None) -> Path:
    """A local path to the weights file ``spec`` (a local file, or ``owner/repo/filename`` downloaded once).

    Raises:
        WeightsError: the local file does not exist, or the hub download failed (the message says how to get the
            file offline).
    """
    text = os.fspath(spec)
    hub = split_hub_file(text)
    if hub is None:
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist (give a local file or owner/repo/filename)")
        return path
    repo_id, filename = hub
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as err:  # network, auth, missing repo or file: all need the same advice
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise WeightsError(
            f"no local file {text!r}, and could not get {filename!r} from the Hugging Face hub repository "
            f"{repo_id!r} (revision {revision or 'default'}): {type(err).__name__}: {err}.\n"
            + ("HF_HUB_OFFLINE is set and the file is not in the local cache. " if offline else "")
            + f"Without network: download it once elsewhere with `huggingface-cli download {repo_id} {filename} "
            "--local-dir DIR` and pass the local file DIR/" + filename + ", or set HF_HUB_OFFLINE=1 to use a copy "
            "already in the Hugging Face cache."
        ) from None
