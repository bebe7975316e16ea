"""The engine against a naive DIFT: stock UNet2DConditionModel with a hook, VAE on E repeated copies (spec §2)."""

from __future__ import annotations

import functools

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the parity tests need diffusers (pip install diffusers)")
transformers = pytest.importorskip("transformers", reason="the parity tests need transformers")
AutoencoderKL, DDIMScheduler = diffusers.AutoencoderKL, diffusers.DDIMScheduler
UNet2DConditionModel = diffusers.UNet2DConditionModel
CLIPTextModel, CLIPTokenizer = transformers.CLIPTextModel, transformers.CLIPTokenizer

from dift_fast import DiftExtractor  # noqa: E402


@functools.cache
def stock_pipeline(folder):
    return (
        UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
        AutoencoderKL.from_pretrained(folder / "vae").eval(),
        CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        DDIMScheduler.from_pretrained(folder / "scheduler"),
    )


def naive_dift(folder, images, prompt, t, k, eps1, eps2):
    """Reference-style DIFT: full UNet forward, feature captured by a hook on up_blocks[k]."""
    unet, vae, tok, text, sched = stock_pipeline(folder)
    captured = {}
    hook = unet.up_blocks[k].register_forward_hook(lambda m, i, o: captured.__setitem__("f", o))
    out = []
    with torch.no_grad():
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        emb = text(ids.input_ids)[0]
        for b in range(images.shape[0]):
            E = eps1.shape[1]
            x = images[b : b + 1].repeat(E, 1, 1, 1)
            dist = vae.encode(x).latent_dist
            z0 = (dist.mean + dist.std * eps1[b]) * 0.18215
            zt = sched.add_noise(z0, eps2[b], torch.tensor(t))
            unet(zt, t, encoder_hidden_states=emb.repeat(E, 1, 1))
            out.append(captured["f"].mean(0))
    hook.remove()
    return torch.stack(out)


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize(("size", "prompt"), [((64, 64), ""), ((72, 40), "a photo of a cat")])
def test_parity_with_naive_dift(tiny_model_dir, tiny_extractor_factory, k, size, prompt):
    ext: DiftExtractor = tiny_extractor_factory(up_ft_index=k, image_size=size, ensemble_size=3, batch_size=2)
    gen = torch.Generator().manual_seed(k)
    images = torch.rand(2, 3, size[1], size[0], generator=gen) * 2 - 1
    shape = (2, 3, 4, size[1] // 8, size[0] // 8)
    eps1, eps2 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    ours = ext.extract(images, prompt=prompt, noise=(eps1, eps2))
    ref = naive_dift(tiny_model_dir, images, prompt, ext.config.t, k, eps1, eps2)
    assert ours.shape == ref.shape
    # fp32 end to end; the only differences are the batch shapes BLAS sees (VAE run once vs E times).
    assert rel_l2(ours, ref) <= 1e-5
