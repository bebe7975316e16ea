"""The reference style of computing DIFT, as the baseline ``dift-fast bench --baseline`` compares against.

What Tang et al.'s ``SDFeaturizer`` does per image (spec §2): one image per call, the prompt encoded again on
every call, the VAE run on E repeated copies of the image with a posterior sample per copy, torch's unseeded
noise, fp32. It uses the same truncated UNet as the engine (the reference runs the whole UNet and discards the later
blocks' output, so this baseline is, if anything, faster than the reference).
"""

from __future__ import annotations

import torch

from ..config import DiftConfig
from ..extractor import NO_STAGES, StageRecorder
from ..images import ImageLike, prepare_image
from ..loading import DiftComponents
from ..schedule import noise_coefficients

__all__ = ["ReferenceStyle"]


class ReferenceStyle:
    """Reference-style DIFT on ``device`` in fp32; call it with one image, get ``[C, h, w]`` on the device.

    The networks are moved to ``device`` in fp32 in place (shared with ``components``).
    """

    def __init__(self, components: DiftComponents, config: DiftConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.unet = components.unet.to(device=device, dtype=torch.float32)
        self.vae = components.vae.to(device=device, dtype=torch.float32)
        self.text_encoder = components.text_encoder.to(device=device, dtype=torch.float32)
        self.tokenizer = components.tokenizer
        self.sqrt_alpha, self.sqrt_one_minus_alpha = noise_coefficients(components.scheduler_config, config.t)
        self.stage_recorder: StageRecorder = NO_STAGES

    @torch.inference_mode()
    def __call__(self, image: ImageLike, prompt: str | None = None) -> torch.Tensor:  # [C, h, w]
        stages, E = self.stage_recorder, self.config.ensemble_size
        stages.begin("preprocess")
        pixels = prepare_image(image, self.config.image_size).pixels.to(self.device)
        stages.begin("prompt")  # encoded again on every call
        ids = self.tokenizer(
            self.config.prompt if prompt is None else prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        context = self.text_encoder(ids)[0]
        stages.begin("encoder")  # the VAE on E copies of the image
        mean, std = self.vae(pixels[None].repeat(E, 1, 1, 1))
        stages.begin("noise")
        z0 = (mean + std * torch.randn_like(mean)) * self.vae.scaling_factor
        zt = self.sqrt_alpha * z0 + self.sqrt_one_minus_alpha * torch.randn_like(z0)
        stages.begin("unet")
        feats = self.unet(zt, self.config.t, context.repeat(E, 1, 1))
        stages.begin("reduce")
        out = feats.mean(0)
        stages.end()
        return out
