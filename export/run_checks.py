"""What a backend checks about the work it is given: a static export's image size, a fixed-prompt export's prompt.

The prompt check runs on the device without stalling it: the comparison is queued on the stream before the UNet,
its one-byte answer is copied to pinned host memory, and the host reads it only after the UNet has been queued
(:meth:`FixedPrompt.check` then :meth:`PromptCheck.raise_if_other`), so the GPU is never left idle waiting for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PROMPT_FILE", "PROMPT_TOLERANCE", "FixedPrompt", "PromptCheck", "check_image_size"]

PROMPT_FILE = "prompt_embedding.npy"
# Relative L2 distance per row above which a prompt embedding is "another prompt". The same prompt encoded by the
# fp32 text encoder on another device or thread count differs by ~1e-6; two different prompts' CLIP embeddings
# differ by O(0.1..1) (most of the 77 rows change with the tokens).
PROMPT_TOLERANCE = 1e-3


def check_image_size(manifest: dict[str, Any], image_size: tuple[int, int] | None, folder: str | os.PathLike) -> None:
    """Raise ValueError when a static export was made for another image size than the extractor's (W, H)."""
    if manifest.get("dynamic_size") or image_size is None or manifest.get("image_size") is None:
        return
    exported = tuple(int(v) for v in manifest["image_size"])
    wanted = tuple(int(v) for v in image_size)
    if exported != wanted:
        raise ValueError(
            f"export {folder} has static size {exported[0]}x{exported[1]}, the extractor resizes images "
            f"to {wanted[0]}x{wanted[1]}: export again with --image-size {wanted[0]}x{wanted[1]} "
            "(or --dynamic-size), or extract at the exported size"
        )


class PromptCheck:
    """The queued answer of one prompt check; :meth:`raise_if_other` waits for it (not for later work)."""

    def __init__(self, other: torch.Tensor | bool, event: Any, text: str, folder: Path) -> None:
        self._other, self._event, self._text, self._folder = other, event, text, folder

    def raise_if_other(self) -> None:
        if self._event is not None:
            self._event.synchronize()  # the comparison and its copy only; work queued after it keeps running
        if bool(self._other):
            raise ValueError(
                f"export {self._folder} folds the prompt {self._text!r} into its graph; this extraction "
                "uses another prompt. Export without --fixed-prompt, or extract with that prompt"
            )


class FixedPrompt:
    """The prompt embedding a fixed-prompt export folds into its UNet graph, and the check that a run uses it."""

    def __init__(self, embedding: torch.Tensor, text: str, folder: Path) -> None:
        self.embedding = embedding.float()  # [77, D]
        self.text, self.folder = text, Path(folder)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def of_export(cls, folder: str | os.PathLike, manifest: dict[str, Any]) -> FixedPrompt | None:
        """The export's fixed prompt (None for an export that takes prompt embeddings as an input)."""
        spec = manifest.get("fixed_prompt")
        if spec is None:
            return None
        path = Path(folder) / PROMPT_FILE
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} (the fixed prompt's embedding) cannot be read: {err}; export again") from None
        if array.ndim != 3 or array.shape[0] != 1 or array.dtype != np.float32 or not np.isfinite(array).all():
            raise ValueError(
                f"{path} must hold one finite float32 embedding [1, 77, D], got {array.dtype} "
                f"{list(array.shape)}; export again"
            )
        return cls(torch.from_numpy(array[0].copy()), spec["text"], Path(folder))

    def _reference(self, device: torch.device) -> torch.Tensor:
        ref = self._on_device.get(device)
        if ref is None:  # copied once per device, so later checks read no host memory
            ref = self._on_device[device] = self.embedding.to(device)
        return ref

    def check(self, context: torch.Tensor | None) -> PromptCheck:
        """Queue the comparison of ``context`` [N, 77, D] with the fixed embedding; read it with the returned check."""
        if context is None:
            raise ValueError(f"export {self.folder} folds the prompt {self.text!r} into its graph; this extraction "
                             "passes no prompt embeddings")
        if tuple(context.shape[1:]) != tuple(self.embedding.shape):
            raise ValueError(
                f"prompt embeddings {list(context.shape)} do not match export {self.folder}'s fixed "
                f"prompt {list(self.embedding.shape)}"
            )
        ref = self._reference(context.device)
        distance = (context.float() - ref).flatten(1).norm(dim=1)
        other = (distance > PROMPT_TOLERANCE * ref.norm().clamp_min(1e-12)).any()
        if context.device.type != "cuda":
            return PromptCheck(bool(other), None, self.text, self.folder)
        answer = torch.empty((), dtype=torch.bool, pin_memory=True)
        answer.copy_(other, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(context.device))
        return PromptCheck(answer, event, self.text, self.folder)
