"""Optional dependencies: one helper that says which extra a feature needs, checked before any work starts.

The extras are those of ``pyproject.toml`` (``pip install 'dift-fast[viz]'``); :data:`EXTRAS` lists the modules
each one provides (``tests/test_extras.py`` checks the two agree). A feature that needs an optional module calls
:func:`require_extra` (or :func:`import_extra` to get the module), so a missing package is reported as

    plotting needs matplotlib, which is not installed (No module named 'matplotlib'):
    pip install 'dift-fast[viz]'

and the command line checks every option's needs before it loads a model (``dift_fast.cli``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "import_extra", "require_extra"]

# extra -> the modules it provides (import names), as pyproject.toml's [project.optional-dependencies] lists them.
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "faiss": ("faiss",),
    "viz": ("matplotlib",),
    "eval": ("cv2", "skimage", "scipy", "h5py"),
    "ray": ("ray",),
    "colmap": ("pycolmap", "h5py"),
}
# Where the pip distribution is not named like the module.
PACKAGE_NAMES = {"cv2": "opencv-python-headless", "skimage": "scikit-image", "faiss": "faiss-cpu", "ray": "ray[data]"}
# Extra install hints for modules with more than one build.
_NOTES = {"faiss": " (for GPU indexes: faiss-gpu from conda, e.g. `conda install -c pytorch faiss-gpu`)"}


class MissingExtraError(ImportError, RuntimeError):
    """An optional package a feature needs is not installed; the message names the package and the extra.

    An ``ImportError`` (what callers catch for a missing module) and a ``RuntimeError`` (what the command line
    reports as an error of the environment, without a traceback).
    """


def _extra_of(module: str, extra: str | None) -> str:
    if extra is not None:
        if extra not in EXTRAS:
            raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")
        return extra
    for name, modules in EXTRAS.items():
        if module in modules:
            return name
    raise ValueError(f"module {module!r} is in no extra ({', '.join(EXTRAS)}); name the extra")


def import_extra(module: str, feature: str, *, extra: str | None = None) -> ModuleType:
    """Import the optional ``module`` that ``feature`` needs, or raise :class:`MissingExtraError`.

    Args:
        module: the import name (``"matplotlib"``, ``"cv2"``, ``"ray.data"``).
        feature: what needs it, as the user would name it (``"match --out"``, ``"plotting"``).
        extra: the extra that provides it; default: the one :data:`EXTRAS` lists it under (the first).

    Raises:
        MissingExtraError: the module cannot be imported (absent, or an install broken enough to fail on import).
    """
    top = module.split(".")[0]
    name = _extra_of(top, extra)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = PACKAGE_NAMES.get(top, top)
        raise MissingExtraError(
            f"{feature} needs {package}, which is not installed ({err}): pip install 'dift-fast[{name}]'"
            f"{_NOTES.get(top, '')}"
        ) from None


def require_extra(extra: str, feature: str, modules: Sequence[str] | None = None) -> None:
    """Check that ``feature``'s optional ``modules`` (default: every module of ``extra``) can be imported.

    Raises:
        MissingExtraError: naming the first missing package and ``pip install 'dift-fast[extra]'``.
    """
    for module in modules if modules is not None else EXTRAS[_extra_of("", extra)]:
        import_extra(module, feature, extra=extra)
