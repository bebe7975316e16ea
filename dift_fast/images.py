"""Turning user inputs (paths, PIL images, arrays, tensors) into the preprocessed batch DIFT expects (spec §2.1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .noise import image_key

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

__all__ = [
    "ImageError",
    "ImageLike",
    "PreparedImage",
    "expand_inputs",
    "load_image",
    "load_rgb",
    "open_rgb",
    "prepare_image",
]


class ImageError(ValueError):
    """An input image that cannot be used; ``name`` says which one."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"image {name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class PreparedImage:
    """One preprocessed image: ``pixels`` [3, H, W] float32 in [-1, 1], its noise key and its original size."""

    name: str
    pixels: torch.Tensor  # [3, H, W]
    key: int
    original_size: tuple[int, int]  # (width, height) before resizing


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA, CMYK and 16-bit images -> 8-bit RGB (alpha is dropped, as the reference does)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            scale = max(float(arr.max(initial=0)), 1e-12) if arr.max(initial=0) > 1 else 1.0
        arr = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def _refuse_bomb(img: Image.Image, label: str) -> None:
    """Refuse an image with more pixels than PIL's safety limit (``PIL.Image.MAX_IMAGE_PIXELS``) before decoding.

    PIL raises :class:`PIL.Image.DecompressionBombError` above twice the limit and only warns between the limit
    and twice it; both are refused here, as one bad image.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise ImageError(
            label,
            f"{img.width}x{img.height} = {img.width * img.height} pixels is more than PIL's safety limit of {limit} "
            "(a possible decompression bomb); if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS",
        )


def open_rgb(fp: Any, label: str) -> Image.Image:
    """Decode an image file (a path or a binary file object) into an 8-bit RGB PIL image, or raise ImageError."""
    try:
        with Image.open(fp) as img:
            _refuse_bomb(img, label)
            img.load()
            return _to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(label, "not an image file PIL can read (expected JPEG, PNG, PPM, ...)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(label, f"{err} (a possible decompression bomb); if you trust the file, raise "
                         "PIL.Image.MAX_IMAGE_PIXELS") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise ImageError(label, f"corrupt or truncated image ({type(err).__name__}: {err})") from None


def load_rgb(source: Any, name: str | None = None) -> Image.Image:
    """Open ``source`` (path, PIL image or uint8 array ``[H, W]``/``[H, W, 1|3|4]``) as an 8-bit RGB PIL image."""
    label = name or describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(label, "no such file")
        rgb = open_rgb(path, label)
    elif isinstance(source, Image.Image):
        rgb = _to_rgb(source)
    elif isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] not in (1, 3, 4))
        ):
            raise ImageError(label, f"arrays must be uint8 [H, W] or [H, W, 3|4], got {source.dtype} {source.shape}")
        rgb = _to_rgb(Image.fromarray(source.squeeze(-1) if source.ndim == 3 and source.shape[2] == 1 else source))
    else:
        raise ImageError(
            label, f"unsupported input type {type(source).__name__}; pass a path, PIL image, array or tensor"
        )
    if rgb.width == 0 or rgb.height == 0:
        raise ImageError(label, f"empty image ({rgb.width}x{rgb.height})")
    return rgb


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image, the form every dift-fast function accepts.

    Grayscale, palette, RGBA, CMYK and 16-bit files become 8-bit RGB (alpha dropped), as the extractor does.
    Unlike LightGlue's ``load_image`` this returns a PIL image, not a ``[3, H, W]`` tensor in [0, 1]: a tensor
    input to :meth:`~dift_fast.DiftExtractor.extract` is read as already preprocessed ([-1, 1], sized), whereas a
    PIL image is resized and normalised like a path.

    Raises:
        ImageError: (a ``ValueError``) naming the file: missing, not an image, or corrupt.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_image takes a file path, got {type(path).__name__}")
    return load_rgb(path)


def describe_source(source: Any) -> str:
    """How messages name an input image: its path, or ``<PIL.Image>``-style for an in-memory one."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def target_size(original: tuple[int, int], image_size: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) to resize to: ``image_size``, or the original floored to multiples of 8."""
    if image_size is not None:
        return image_size
    w, h = original[0] // 8 * 8, original[1] // 8 * 8
    if w == 0 or h == 0:
        raise ValueError(f"image of size {original} is smaller than 8 pixels; set image_size")
    return w, h


# A float tensor may sit this far outside [-1, 1]: what (u8 / 127.5 - 1) style arithmetic rounds to in float32.
_RANGE_SLACK = 1e-5
_TENSOR_HELP = (
    "pass uint8 pixels [3, H, W] (0..255, as torchvision's read_image returns them; resized like any image) or a "
    "preprocessed float tensor [3, H, W] in [-1, 1] (x / 127.5 - 1), at a size that is a multiple of 8"
)


def _tensor_pixels(source: torch.Tensor, label: str) -> torch.Tensor | np.ndarray:
    """A float tensor checked to be preprocessed pixels [3, H, W] in [-1, 1], or a uint8 tensor as an HWC array."""
    if source.dtype == torch.uint8:  # raw pixels: [C, H, W] with C = 1, 3 or 4, read like an image file
        if source.ndim != 3 or source.shape[0] not in (1, 3, 4):
            raise ImageError(label, f"uint8 tensors must be [3, H, W] (or [1|4, H, W]), got {list(source.shape)}")
        return source.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    if not source.is_floating_point():
        raise ImageError(label, f"a {source.dtype} tensor is not an image; {_TENSOR_HELP}")
    if source.ndim != 3 or source.shape[0] != 3:
        raise ImageError(label, f"tensors must be [3, H, W] (or [B, 3, H, W]), got {list(source.shape)}; {_TENSOR_HELP}")
    h, w = source.shape[-2:]
    if h % 8 or w % 8 or h == 0 or w == 0:
        raise ImageError(label, f"tensor size {w}x{h} must be positive multiples of 8 (resize it first)")
    pixels = source.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(pixels).all():
        raise ImageError(label, "the tensor holds NaN or Inf values; " + _TENSOR_HELP)
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        hint = " (it looks like 0..255 pixels: divide by 127.5 and subtract 1, or pass uint8)" if hi > 2 else ""
        raise ImageError(label, f"float tensor values span [{lo:.4g}, {hi:.4g}], outside [-1, 1]{hint}; {_TENSOR_HELP}")
    return pixels


def prepare_image(source: ImageLike, image_size: tuple[int, int] | None, name: str | None = None) -> PreparedImage:
    """Preprocess one image: PIL bicubic resize to ``image_size`` (W, H), then ``(u8 / 255 - 0.5) * 2``.

    A float ``[3, H, W]`` tensor must already be normalised to [-1, 1] and is used at its own size; a uint8 tensor
    ``[3, H, W]`` is raw pixels (0..255, torchvision's ``read_image``) and is preprocessed like an image file.
    Bool, integer, non-finite and out-of-range float tensors are refused with a message saying what is expected.
    """
    label = name or describe_source(source)
    if isinstance(source, torch.Tensor):
        pixels = _tensor_pixels(source, label)
        if isinstance(pixels, torch.Tensor):
            h, w = pixels.shape[-2:]
            return PreparedImage(label, pixels, image_key(pixels.numpy()), (int(w), int(h)))
        source = pixels  # uint8 HWC: on through the image path
    rgb = load_rgb(source, label)
    original = (rgb.width, rgb.height)
    size = target_size(original, image_size)
    if rgb.size != size:
        rgb = rgb.resize(size, Image.BICUBIC)
    u8 = np.asarray(rgb, dtype=np.uint8)
    pixels = (torch.from_numpy(u8.copy()).permute(2, 0, 1).float() / 255.0 - 0.5) * 2.0
    return PreparedImage(label, pixels, image_key(u8), original)


def expand_inputs(images: Any) -> list[Any]:
    """A single input or a sequence of inputs -> a flat list (a ``[B, 3, H, W]`` tensor becomes B tensors)."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return list(images.unbind(0))
        return [images]
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)
