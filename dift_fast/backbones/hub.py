"""Everything that touches the Hugging Face hub: offline detection, downloads, and what to do without network.

- :func:`hub_offline_reason` says whether the hub may be contacted and why not: ``HF_HUB_OFFLINE`` (as
  ``huggingface_hub`` read it at import, or set in the environment since), or one short probe of the hub that
  failed (a single request with a :data:`HUB_PROBE_TIMEOUT_S` timeout, made once per process). Offline, every
  download reads the local Hugging Face cache only, so nothing waits for ``huggingface_hub``'s retries.
- :func:`hub_snapshot` and :func:`hub_file` download (or find in the cache) a model folder or one file.
- :func:`download_advice` is the one text that says how to get a model or a file onto a machine without network
  (``hf download ... --local-dir DIR``, with the include patterns of what DIFT reads; a plain URL download for
  files that are not on the hub); :func:`hub_failure` wraps it into the message of a failed download.
- :func:`resolve_weights_file`: a single weights file given as a local path or as ``owner/repo/filename``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from .weights import WeightsError

__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "download_advice",
    "hub_failure",
    "hub_file",
    "hub_offline_reason",
    "hub_snapshot",
    "resolve_weights_file",
    "split_hub_file",
]

HUB_PROBE_TIMEOUT_S = 3.0  # one request, no retries: long enough for a slow link, short for a missing one
_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub counts as a set HF_HUB_OFFLINE


def _env_offline() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_offline_reason(probe: bool = True) -> str | None:
    """Why the hub must not be contacted now, or None when it may be.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, when it is imported (``huggingface_hub.constants``);
    setting the variable later does nothing there, so both its constant and the environment are read here. When
    neither is set and ``probe`` is true, one request to the hub's endpoint (``HF_ENDPOINT``, proxies as
    ``huggingface_hub`` uses them) must answer within :data:`HUB_PROBE_TIMEOUT_S` seconds; its outcome is kept for
    the rest of the process.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        return "huggingface_hub is not installed (pip install huggingface_hub)"
    if constants.HF_HUB_OFFLINE or _env_offline():
        return "HF_HUB_OFFLINE is set"
    return _probe(constants.ENDPOINT) if probe else None


@functools.lru_cache(maxsize=4)
def _probe(endpoint: str) -> str | None:
    try:
        from huggingface_hub import get_session
    except ImportError:  # a huggingface_hub without a shared session: no probe, its own behaviour
        return None
    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)  # any HTTP answer means the hub is reachable
    except Exception as err:  # DNS, refused, timeout, proxy: all mean "offline" for our purposes
        return (
            f"the Hugging Face hub ({endpoint}) did not answer one request within {HUB_PROBE_TIMEOUT_S:g} s "
            f"({type(err).__name__}: {err})"
        )
    return None


def hub_snapshot(repo_id: str, revision: str | None = None, include: Sequence[str] | None = None) -> Path:
    """The local folder of ``repo_id`` with the files matching ``include``: downloaded, or from the cache offline.

    Raises:
        Exception: whatever ``huggingface_hub`` raises (callers turn it into :func:`hub_failure`'s message).
    """
    from huggingface_hub import snapshot_download

    offline = hub_offline_reason() is not None
    patterns = list(include) if include is not None else None
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline))


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """The local path of one file of ``repo_id``: downloaded, or from the cache when offline."""
    from huggingface_hub import hf_hub_download

    offline = hub_offline_reason() is not None
    return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline))


def download_advice(
    source: str,
    *,
    files: Sequence[str] = (),
    include: Sequence[str] = (),
    url: str | None = None,
    use: str,
) -> str:
    """How to get ``source`` onto a machine without network: one command to run elsewhere, then how to use it.

    Args:
        source: a hub repository id (``owner/name``), or a file name when ``url`` is given.
        files: download only these files of the repository.
        include: download only files matching these patterns (``hf download --include``, one flag each).
        url: a plain download (a file that is not on the hub).
        use: what to pass afterwards, with ``DIR`` for the download folder (e.g. ``"--model DIR"``).
    """
    if url is not None:
        return f"Download it once (on any machine with network): `curl -L -o {source} {url}`, then pass {use}."
    command = " ".join(["hf download", source, *files, *(f'--include "{p}"' for p in include), "--local-dir DIR"])
    return (
        f"Without network: on a machine with network run `{command}` (hf is huggingface_hub's command line; older "
        f"versions call it huggingface-cli), copy DIR here and pass {use}."
    )


def hub_failure(what: str, err: BaseException, advice: str) -> str:
    """The message of a failed hub download: what failed and why, whether it was offline, and ``advice``."""
    reason = hub_offline_reason()  # the probe's outcome is cached: no new request
    cause = f"{type(err).__name__}: {str(err).strip().rstrip('.')}"
    if reason:
        return (f"could not get {what}: offline ({reason}), only the local Hugging Face cache was read and it does not "
                f"hold it ({cause}).\n{advice}")
    return (f"could not get {what} from the Hugging Face hub ({cause}).\n{advice} Or set HF_HUB_OFFLINE=1 to use a "
            "copy already in the Hugging Face cache.")


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
        return hub_file(repo_id, filename, revision)
    except Exception as err:  # network, auth, missing repo or file: all need the same advice
        advice = download_advice(repo_id, files=[filename], use=f"the local file DIR/{filename} (--unet-weights)")
        raise WeightsError(
            f"no local file {text!r}; "
            + hub_failure(f"{filename!r} of repository {repo_id!r} (revision {revision or 'default'})", err, advice)
        ) from None
