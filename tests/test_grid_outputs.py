"""Several (t, block) features per image in feature files and in store grids (``extract --timesteps --blocks``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from store_helpers import assert_stores_equal, make_images

from dift_fast.cli import main
from dift_fast.grid import cell_name, parse_int_spec
from dift_fast.io import feature_file_cells, load_feature_grid, load_features
from dift_fast.store import FeatureStore, StoreConfigError, export_h5
from dift_fast.store.grid import StoreGrid, is_store_grid

TINY = ["--ensemble-size", "2", "--image-size", "64x48", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(7)
    paths = []
    for i, size in enumerate([(70, 50), (40, 60), (64, 48)]):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def manifest_lines(store: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in (store / "manifests").glob("*.jsonl"))


def test_range_syntax_is_pythons():
    assert parse_int_spec("0:500:50") == list(range(0, 500, 50))  # stop excluded
    assert parse_int_spec("101,261") == [101, 261]
    assert parse_int_spec("261, 0:3, 101") == [0, 1, 2, 101, 261]  # sorted, no repeats
    assert parse_int_spec("5:7") == [5, 6]
    for bad, match in (
        ("0:500:0", "step >= 1"),
        ("10:5", "is empty"),
        ("a", "not an integer"),
        ("", "is empty"),
        ("1:2:3:4", "start:stop"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_int_spec(bad, "--timesteps")


def test_feature_file_holds_every_cell_with_its_identity(tiny_model_dir, pictures, tmp_path, capsys):
    grid_path = tmp_path / "grid.safetensors"
    args = ["--model", str(tiny_model_dir), *TINY, "--batch-size", "2"]
    assert (
        main(["extract", *pictures, "--out", str(grid_path), "--timesteps", "0:400:261", "--blocks", "0,1", *args]) == 0
    )
    assert "4 (t, block) cells" in capsys.readouterr().out
    cells = [(0, 0), (0, 1), (261, 0), (261, 1)]
    assert sorted(feature_file_cells(grid_path)) == cells
    grid = load_feature_grid(grid_path)
    for t, k in cells:
        single_path = tmp_path / f"single-{t}-{k}.safetensors"
        assert main(["extract", *pictures, "--out", str(single_path), "--t", str(t), "--block", str(k), *args]) == 0
        single = load_features(single_path)
        cell = grid[(t, k)]
        assert torch.equal(cell.features, single.features), (t, k)
        assert cell.identity == single.identity and (cell.identity["t"], cell.identity["block"]) == (t, k)
        assert cell.config == single.config and cell.names == single.names
        assert cell.original_sizes == single.original_sizes and cell.image_keys == single.image_keys
    from safetensors import safe_open

    with safe_open(str(grid_path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(f"features/{cell_name(t, k)}" for t, k in cells)
    with pytest.raises(ValueError, match=r"holds 4 \(t, block\) cells .*cell=\(t, block\)"):
        load_features(grid_path)
    with pytest.raises(ValueError, match=r"has no cell t=500, block 0"):
        load_features(grid_path, cell=(500, 0))
    # a plain file is a grid of its own cell
    assert feature_file_cells(single_path) == [(261, 1)]
    with pytest.raises(ValueError, match=r"holds the features of t=261, block 1 only"):
        load_features(single_path, cell=(0, 1))


def test_grid_options_are_checked(tiny_model_dir, pictures, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    base = ["extract", pictures[0], "--out", out, "--model", str(tiny_model_dir), *TINY]
    for extra, message in (
        (["--timesteps", "0,261", "--t", "5"], "give --timesteps or --t, not both"),
        (["--blocks", "0,1", "--block", "1"], "give --blocks or --block"),
        (["--blocks", "0,4"], r"--blocks \[4\] are not feature blocks of backbone 'sd': allowed are 0\.\.3"),
        (["--timesteps", "990:1010:10"], r"--timesteps \[1000\] are outside 0\.\.999"),
        (["--timesteps", "0:10:0"], "step >= 1"),
    ):
        assert main([*base, *extra]) == 2, extra
        assert re.search(message, capsys.readouterr().err), extra
    assert not Path(out).exists()


def test_store_grid_cells_equal_single_stores_and_resume_grown(tiny_model_dir, tmp_path, capsys):
    images = make_images(tmp_path / "imgs", 4, bad=True)
    args = ["--model", str(tiny_model_dir), *TINY]
    grid_dir = tmp_path / "grid"
    assert main(["extract", str(images), "--out", str(grid_dir), "--timesteps", "0,261", "--blocks", "1", *args]) == 1
    assert "(2 (t, block) cells): 6 images; 0 already stored, 4 written, 2 failed" in capsys.readouterr().out
    assert is_store_grid(grid_dir)
    # grow the grid: the existing cells are complete, so only the new cells' images are computed
    assert (
        main(["extract", str(images), "--out", str(grid_dir), "--timesteps", "0,261,500", "--blocks", "0,1", *args])
        == 1
    )
    out = capsys.readouterr().out
    assert "(6 (t, block) cells): 6 images; 0 already stored, 4 written" in out
    assert manifest_lines(grid_dir / "t000-block1") == 4  # the first run's cells were not written again
    assert manifest_lines(grid_dir / "t500-block0") == 4
    grid = StoreGrid.open(grid_dir)
    assert sorted(grid.cells) == [(0, 0), (0, 1), (261, 0), (261, 1), (500, 0), (500, 1)]
    meta = json.loads((grid_dir / "grid.json").read_text())
    assert [c["store"] for c in meta["cells"]][:2] == ["t000-block1", "t261-block1"]  # the first run's, kept
    for t, k in grid.cells:
        single = tmp_path / f"single-{t}-{k}"
        main(["extract", str(images), "--out", str(single), "--t", str(t), "--block", str(k), *args])
        assert_stores_equal(grid.cell(t, k), FeatureStore.open(single))  # identity, features, failures
    # everything done: a rerun writes nothing
    capsys.readouterr()
    assert (
        main(["extract", str(images), "--out", str(grid_dir), "--timesteps", "0,261,500", "--blocks", "0,1", *args])
        == 1
    )
    assert "4 already stored, 0 written" in capsys.readouterr().out
    # a file lost in one cell: only that cell runs again, for that image
    lost = grid.cell(500, 0)
    name = sorted(lost.entries())[0]
    before = lost.get(name)
    lost.path(name).unlink()
    main(["extract", str(images), "--out", str(grid_dir), "--timesteps", "0,261,500", "--blocks", "0,1", *args])
    assert "3 already stored, 1 written" in capsys.readouterr().out
    assert manifest_lines(lost.root) == 5 and manifest_lines(grid_dir / "t500-block1") == 4
    assert torch.equal(FeatureStore.open(lost.root).get(name), before)


def test_store_grid_readers_and_refusals(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("h5py", reason="HDF5 export needs h5py")
    import h5py

    images = make_images(tmp_path / "imgs", 2, bad=False)
    args = ["--model", str(tiny_model_dir), *TINY]
    grid_dir = tmp_path / "grid"
    assert main(["extract", str(images), "--out", str(grid_dir), "--timesteps", "0,261", "--blocks", "1", *args]) == 0
    capsys.readouterr()
    # store info lists each cell; export-h5 takes one cell (hloc's layout holds one map per image)
    assert main(["store", "info", str(grid_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [(c["t"], c["block"], c["images"]) for c in info["cells"]] == [(0, 1, 2), (261, 1, 2)]
    assert main(["store", "export-h5", str(grid_dir), str(tmp_path / "all.h5")]) == 2
    assert "2 (t, block) cells (0,1, 261,1)" in capsys.readouterr().err
    assert main(["store", "export-h5", str(grid_dir), str(tmp_path / "c.h5"), "--cell", "261,1"]) == 0
    cell = StoreGrid.open(grid_dir).cell(261, 1)
    with h5py.File(tmp_path / "c.h5") as f:
        assert json.loads(f.attrs["dift_fast_identity"]) == cell.meta["identity"]
        for name in cell.names():
            assert np.array_equal(f[name]["dense_features"][()], cell.get(name).numpy())
    result = export_h5(grid_dir, tmp_path / "d.h5", cell=(0, 1))
    assert str(result) == str(tmp_path / "d.h5") and result.images == 2  # str() is the path, as os.fspath()
    with pytest.raises(ValueError, match="has no cell t=5, block 1"):
        export_h5(grid_dir, tmp_path / "x.h5", cell=(5, 1))
    with pytest.raises(FileNotFoundError, match=r"is a store grid.*t000-block1, t261-block1"):
        FeatureStore.open(grid_dir)
    # other settings: refused before anything is created, naming the cell and the difference
    assert (
        main(
            [
                "extract",
                str(images),
                "--out",
                str(grid_dir),
                "--timesteps",
                "0,261,500",
                "--blocks",
                "1",
                "--seed",
                "3",
                *args,
            ]
        )
        == 2
    )
    assert (
        "cell t=0, block 1 was made with different settings (seed: store has 0, this run 3)" in capsys.readouterr().err
    )
    assert not (grid_dir / "t500-block1").exists()
    assert [c["t"] for c in json.loads((grid_dir / "grid.json").read_text())["cells"]] == [0, 261]
    # a grid into a single store, a single store into a grid, a grid with PCA: refused, nothing changed
    single = tmp_path / "single"
    main(["extract", str(images), "--out", str(single), *args])
    capsys.readouterr()
    assert main(["extract", str(images), "--out", str(single), "--timesteps", "0,261", *args]) == 2
    assert "is a feature store of one (t, block) cell, not a grid" in capsys.readouterr().err
    assert main(["extract", str(images), "--out", str(grid_dir), *args]) == 2
    assert "is not a feature store" in capsys.readouterr().err
    assert (
        main(["extract", str(images), "--out", str(tmp_path / "p"), "--timesteps", "0,261", "--pca", "4", *args]) == 2
    )
    assert "--pca is not supported with a (t, block) grid" in capsys.readouterr().err
    with pytest.raises(StoreConfigError):
        StoreGrid.create_or_open(grid_dir, {(0, 1): {"other": 1}}, {(0, 1): {}})
