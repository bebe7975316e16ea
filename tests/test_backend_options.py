"""Typed backend options: validated with the field named, accepted as dicts, shown by `dift-fast info`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from dift_fast.backend_options import OrtOptions, TrtOptions, backend_options_for
from dift_fast.cli import build_parser, main


def test_defaults_round_trip_through_dicts(tmp_path):
    ort = OrtOptions(export_dir=tmp_path, provider="cpu", intra_op_threads=2)
    assert ort.export_dir == str(tmp_path)  # a Path is stored as str (JSON-ready)
    assert OrtOptions.from_dict(ort.to_dict()) == ort
    trt = TrtOptions(max_batch=8, opt_batch=4, latent_range=[32, 64, 96])
    assert trt.latent_range == (32, 64, 96) and trt.to_dict()["latent_range"] == [32, 64, 96]
    assert TrtOptions.from_dict(trt.to_dict()) == trt
    json.dumps(trt.to_dict())


@pytest.mark.parametrize(("kind", "fields", "named"), [
    (OrtOptions, {"provider": "gpu"}, "OrtOptions.provider='gpu'"),
    (OrtOptions, {"intra_op_threads": 0}, "OrtOptions.intra_op_threads=0"),
    (OrtOptions, {"no_build": "yes"}, "OrtOptions.no_build='yes'"),
    (OrtOptions, {"export_dir": 3}, "OrtOptions.export_dir=3"),
    (TrtOptions, {"max_batch": 0}, "TrtOptions.max_batch=0"),
    (TrtOptions, {"max_batch": 4, "opt_batch": 8}, "TrtOptions.opt_batch=8"),
    (TrtOptions, {"latent_range": (64, 32, 96)}, r"TrtOptions.latent_range=\(64, 32, 96\)"),
    (TrtOptions, {"workspace_gb": -1}, "TrtOptions.workspace_gb=-1"),
    # onnxruntime captures CUDA graphs of static-size exports only, and not on the CPU provider
    (OrtOptions, {"cuda_graph": True}, "OrtOptions.cuda_graph=True.*static-size export"),
    (OrtOptions, {"cuda_graph": True, "export_dir": "e", "provider": "cpu"}, "OrtOptions.cuda_graph=True.*not 'cpu'"),
])
def test_invalid_values_name_the_field(kind, fields, named):
    with pytest.raises(ValueError, match=named):
        kind(**fields)
    with pytest.raises(ValueError, match=named):
        backend_options_for("onnxruntime" if kind is OrtOptions else "tensorrt", fields)


def test_dicts_are_validated_into_the_backends_dataclass():
    opts = backend_options_for("onnxruntime", {"export_dir": "e", "no_build": True})
    assert opts == OrtOptions(export_dir="e", no_build=True)
    assert backend_options_for("tensorrt", None, max_batch=4) == TrtOptions(max_batch=4)
    assert TrtOptions().max_batch is None  # sized from the extractor's batch size unless given
    assert TrtOptions(opt_batch=8).opt_batch == 8  # no max_batch to exceed: checked against the batch size later
    assert OrtOptions(cuda_graph=True, export_dir="e", provider="cuda").cuda_graph
    assert backend_options_for("onnxruntime", OrtOptions(export_dir="e"), no_build=True) == OrtOptions("e", True)
    assert backend_options_for("torch") is None
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_batch'\]"):
        backend_options_for("onnxruntime", {"max_batch": 4})
    with pytest.raises(ValueError, match="takes TrtOptions, got OrtOptions"):
        backend_options_for("tensorrt", OrtOptions())
    with pytest.raises(ValueError, match="'torch' takes no options"):
        backend_options_for("torch", {"export_dir": "e"})


def test_the_old_engine_dir_key_still_works_and_warns():
    with pytest.warns(DeprecationWarning, match="'engine_dir' is deprecated; use 'export_dir'"):
        assert backend_options_for("onnxruntime", {"engine_dir": "e"}) == OrtOptions(export_dir="e")
    with pytest.raises(ValueError, match="not also"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        backend_options_for("onnxruntime", {"engine_dir": "e", "export_dir": "f"})


def test_info_shows_the_backend_options(tiny_model_dir, tmp_path, capsys):
    export = str(tmp_path / "export")
    argv = ["info", "--model", str(tiny_model_dir), "--backend", "onnxruntime", "--export-dir", export, "--no-build"]
    assert main([*argv, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["backend_options"]
    assert shown == OrtOptions(export_dir=export, no_build=True).to_dict()
    assert main(argv) == 0
    assert f"options      onnxruntime: export_dir={export!r}, no_build=True" in capsys.readouterr().out
    assert main(["info", "--model", str(tiny_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend_options"] is None  # torch has none


def test_renamed_flags_keep_their_old_spelling_with_a_warning(capsys):
    parser = build_parser()
    args = parser.parse_args(["extract", "a.png", "--out", "s", "--engine", "exp", "--workers", "3"])
    assert args.export_dir == "exp" and args.decode_workers == 3
    err = capsys.readouterr().err
    assert "--engine is deprecated" in err and "use --export-dir" in err
    assert "--workers is deprecated" in err and "use --decode-workers" in err
    args = parser.parse_args(["extract", "a.png", "--out", "s", "--export-dir", "exp", "--decode-workers", "0"])
    assert args.export_dir == "exp" and args.decode_workers == 0 and capsys.readouterr().err == ""
    help_text = parser._subparsers._group_actions[0].choices["extract"].format_help()
    assert "--export-dir" in help_text and "--decode-workers" in help_text
    assert "--engine" not in help_text and "--workers " not in help_text and "--ray-workers" in help_text


def test_export_options_apply_to_accelerated_backends_only(tmp_path, capsys):
    image = Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"
    assert main(["extract", str(image), "--out", str(tmp_path / "f.safetensors"), "--export-dir", "x"]) == 2
    assert "apply to --backend onnxruntime or tensorrt" in capsys.readouterr().err
