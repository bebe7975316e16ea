"""The reference style of computing DIFT, as the baseline ``dift-fast bench --baseline`` compares against.

What Tang et al.'s ``SDFeaturizer`` does per image (spec §2): one image per call, the prompt encoded again on
every call, the VAE run on E repeated copies of the image with a posterior sample per copy, torch's unseeded
noise, fp32. On a backbone without an encoder (ADM) the E copies of the image are noised directly, and without a
text conditioner no prompt is encoded. It uses the same truncated network as the engine (the reference runs the
whole network and discards the later blocks' output, so this baseline is, if anything, faster than the reference).
"""

from __future__ import annotations

import torch

from ..backends import placed_copy
from ..config import DiftConfig
from ..extractor import NO_STAGES, StageRecorder
from ..images import ImageLike, prepare_image
from ..loading import DiftComponents
from ..prompts import encode_prompt

__all__ = ["ReferenceStyle"]


class ReferenceStyle:
    """Reference-style DIFT on ``device`` in fp32; call it with one image, get ``[C, h, w]`` on the device.

    It runs fp32 copies of the components' networks placed on ``device`` (on the CPU in fp32 they share the
    components' tensors); the components are not changed.
    """

    def __init__(self, components: DiftComponents, config: DiftConfig, device: torch.device) -> None:
        components.ensure_networks()
        self.config = config
        self.device = device
        self.network = placed_copy(components.network, device, torch.float32)
        self.encoder = (
            placed_copy(components.encoder, device, torch.float32) if components.encoder is not None else None
        )
        self.text_encoder = (
            placed_copy(components.text_encoder, device, torch.float32) if components.text_encoder is not None else None
        )
        self.tokenizer = components.tokenizer
        self.sqrt_alpha, self.sqrt_one_minus_alpha = components.backbone.schedule.coefficients(config.t)
        self.stage_recorder: StageRecorder = NO_STAGES

    @torch.inference_mode()
    def __call__(self, image: ImageLike, prompt: str | None = None) -> torch.Tensor:  # [C, h, w]
        stages, E = self.stage_recorder, self.config.ensemble_size
        stages.begin("preprocess")
        pixels = prepare_image(image, self.config.image_size).pixels.to(self.device)
        context = None
        if self.text_encoder is not None:
            stages.begin("prompt")  # encoded again on every call
            text = self.config.prompt if prompt is None else prompt
            context = encode_prompt(self.tokenizer, self.text_encoder, text)[None].repeat(E, 1, 1)
        copies = pixels[None].repeat(E, 1, 1, 1)
        if self.encoder is not None:
            stages.begin("encoder")  # the VAE on E copies of the image
            mean, std = self.encoder(copies)
            stages.begin("noise")
            z0 = (mean + std * torch.randn_like(mean)) * self.encoder.scaling_factor
        else:  # pixel space: the image is the diffusion-space sample
            stages.begin("noise")
            z0 = copies
        zt = self.sqrt_alpha * z0 + self.sqrt_one_minus_alpha * torch.randn_like(z0)
        stages.begin("unet")
        feats = self.network(zt, self.config.t, context)
        stages.begin("reduce")
        out = feats.mean(0)
        stages.end()
        return out
