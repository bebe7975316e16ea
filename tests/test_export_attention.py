"""Exported attention is in the form TensorRT fuses: scale on Q, MatMul, Softmax, MatMul, nothing else between.

The graph structure is read with ``onnx``; numerics are checked against eager torch (here for the processor; for the
exported graphs on onnxruntime CPU in tests/test_export.py, which run these graphs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the onnx extra (onnx, onnxruntime) is not installed")
pytest.importorskip("diffusers", reason="the export needs diffusers")

from diffusers.models.attention_processor import Attention  # noqa: E402
from dift_fast.export.attention import FusableAttnProcessor, fusable_attention  # noqa: E402
from dift_fast.export.graphs import export_onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from dift_fast.loading import load_components  # noqa: E402

SIZE = (64, 48)
# TensorRT's fused attention (MHA) restrictions for FP16/BF16, from its developer guide: head size 16..256 and a
# multiple of 8 (the two batched MatMuls' inputs in FP16/BF16; Q or K scaled before the first MatMul).
TRT_HEAD_MIN, TRT_HEAD_MAX, TRT_HEAD_MULTIPLE = 16, 256, 8


@pytest.fixture(scope="module")
def comps(tiny_model_dir):
    return load_components(str(tiny_model_dir), None, 1)


@pytest.fixture(scope="module", params=["fp32", "fp16", "bf16"])
def export(request, comps, tmp_path_factory):
    return request.param, export_onnx(
        comps, tmp_path_factory.mktemp(request.param), dtype=request.param, image_size=SIZE
    )


def _constant_value(name: str, producers: dict, initializers: dict) -> np.ndarray | None:
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def attention_patterns(path) -> list[dict]:
    """For every Softmax of the graph: what feeds it, what it feeds, and the Q-side scale constant."""
    model = onnx.load(str(path))
    g = model.graph
    producers = {out: n for n in g.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    initializers = {t.name: t for t in g.initializer}
    out = []
    for sm in (n for n in g.node if n.op_type == "Softmax"):
        first = producers[sm.input[0]]
        q_side = producers.get(first.input[0]) if first.op_type == "MatMul" else None
        k_side = producers.get(first.input[1]) if first.op_type == "MatMul" else None
        scale = None
        if q_side is not None and q_side.op_type == "Mul":
            for name in q_side.input:
                value = _constant_value(name, producers, initializers)
                if value is not None and value.size == 1:
                    scale = float(value.reshape(()))
        axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
        out.append(
            {
                "before": first.op_type,
                "q_side": getattr(q_side, "op_type", None),
                "k_side": getattr(k_side, "op_type", None),
                "scale": scale,
                "axis": axis,
                "after": [c.op_type for c in consumers.get(sm.output[0], [])],
            }
        )
    return out


def head_dims(module: torch.nn.Module) -> list[int]:
    return [m.to_k.out_features // m.heads for m in module.modules() if isinstance(m, Attention)]


def test_exported_attention_is_the_fusable_pattern(export, comps):
    _, (folder, manifest) = export
    assert manifest["attention"] == "q-scaled-matmul-softmax-matmul"
    for graph, module in (("unet.onnx", comps.unet), ("vae_encoder.onnx", comps.vae)):
        patterns = attention_patterns(folder / graph)
        dims = head_dims(module)
        assert len(patterns) == len(dims) > 0, (graph, patterns)  # one Softmax per attention, none elsewhere
        for p, d in zip(patterns, dims):
            # Q·Kᵀ straight into the Softmax: no Add of a zero tensor, no scale after the MatMul, no Cast island
            assert p["before"] == "MatMul" and p["after"] == ["MatMul"], (graph, p)
            assert p["q_side"] == "Mul" and p["k_side"] == "Transpose", (graph, p)
            assert p["axis"] in (-1, 3), (graph, p)
            # the scale is on Q, d**-0.5 (stored in the graph's dtype: fp16/bf16 rounding, relative 2**-8 for bf16)
            assert p["scale"] == pytest.approx(d**-0.5, rel=2**-8), (graph, p, d)


def test_fp16_graph_attention_runs_in_half_precision(export):
    """The MatMuls and the Softmax take the graph's dtype (fp32 would block TensorRT's half-precision fusion)."""
    dtype, (folder, _) = export
    want = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
    model = onnx.shape_inference.infer_shapes(onnx.load(str(folder / "unet.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types[n.input[0]] == want[dtype] for n in softmax)
    # GroupNorm (InstanceNormalization in the trace) keeps fp32 statistics in half-precision graphs
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in norms)


def test_processor_matches_diffusers_default(comps):
    """Same math as diffusers' default (SDPA) processor, in eager fp32, on the UNet and the VAE encoder."""
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    images = torch.rand(2, 3, 48, 64, generator=g) * 2 - 1
    with torch.inference_mode():
        ref = comps.unet(x, torch.tensor([261]), ctx)
        ref_moments = comps.vae.moments(images)
        with fusable_attention(comps.unet), fusable_attention(comps.vae):
            assert all(
                isinstance(m.processor, FusableAttnProcessor)
                for m in (*comps.unet.modules(), *comps.vae.modules())
                if isinstance(m, Attention)
            )
            out = comps.unet(x, torch.tensor([261]), ctx)
            moments = comps.vae.moments(images)
    # Same products and sums in another order (scale on Q first instead of SDPA's): float32 rounding, ~1e-7.
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert float((moments - ref_moments).norm() / ref_moments.norm()) < 1e-5
    assert not any(
        isinstance(m.processor, FusableAttnProcessor) for m in comps.unet.modules() if isinstance(m, Attention)
    )  # restored on exit


def test_sd21_unet_attention_meets_tensorrt_fusion_limits():
    """Every attention of SD 2.1's UNet has a head size TensorRT's fused kernel takes (64), so no [rows, heads, S, S]
    score tensor is written at any profile; the VAE's single 512-wide head is outside the limits (see
    docs/export.md for its size)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dift_fast.architectures import architecture_dir

    folder = architecture_dir("sd21")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
    dims = head_dims(unet)
    assert dims and set(dims) == {64}
    assert all(TRT_HEAD_MIN <= d <= TRT_HEAD_MAX and d % TRT_HEAD_MULTIPLE == 0 for d in dims)
    assert head_dims(vae.encoder) == [512]
