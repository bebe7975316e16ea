"""(t, block) grids: parsing ``--timesteps``/``--blocks``, naming cells, and the config of a grid's extractor.

A grid is a list of timesteps and a list of feature blocks; its cells are every (t, block) pair.
:meth:`DiftExtractor.extract_grid <dift_fast.extractor.DiftExtractor.extract_grid>` computes all of them from one
network pass per (image, t), which runs to the deepest block, so the extractor is loaded for that block
(:func:`grid_config`). Each cell's features are what an extractor configured with that t and block computes, and
carry that extractor's feature identity (:func:`dift_fast.identity.extractor_identity` with ``t=``, ``block=``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Cell", "cell_label", "cell_name", "check_grid", "grid_cells", "grid_config", "parse_cell", "parse_int_spec"]

Cell = tuple[int, int]  # (t, block)


def parse_int_spec(text: str, option: str = "value") -> list[int]:
    """Integers from a comma-separated list whose items are numbers or Python-style ranges ``start:stop[:step]``.

    The stop of a range is exclusive, as in Python: ``"0:500:50"`` is 0, 50, ..., 450; ``"0:500:50,499"`` adds 499.
    The result is sorted and without repeats.

    Raises:
        ValueError: an item that is neither (the message names ``option`` and the item).
    """
    values: set[int] = set()
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError(f"{option} {text!r} is empty: give numbers (101,261) or a range start:stop:step (0:500:50)")
    for item in items:
        if not item:
            continue
        try:
            parts = [int(p) for p in item.split(":")]
        except ValueError:
            raise ValueError(
                f"{option}: {item!r} is not an integer or a range start:stop[:step] (e.g. 0:500:50, stop excluded)"
            ) from None
        if len(parts) == 1:
            values.add(parts[0])
            continue
        if len(parts) > 3 or (len(parts) == 3 and parts[2] <= 0):
            raise ValueError(f"{option}: range {item!r} must be start:stop or start:stop:step with a step >= 1")
        found = range(*parts)
        if not found:
            raise ValueError(f"{option}: range {item!r} is empty (the stop is excluded, as in Python)")
        values.update(found)
    return sorted(values)


def parse_cell(text: str) -> Cell:
    """``"261,1"`` -> (261, 1): one (t, block) cell as the command line names it."""
    try:
        t, block = (int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"cell {text!r}: expected T,BLOCK (e.g. 261,1)") from None
    return t, block


def grid_cells(timesteps: Iterable[int], blocks: Iterable[int]) -> list[Cell]:
    """Every (t, block) pair, t-major."""
    ks = list(blocks)
    return [(int(t), int(k)) for t in timesteps for k in ks]


def cell_name(t: int, block: int) -> str:
    """A file-system and tensor name for cell (t, block): ``t261-block1``."""
    return f"t{int(t):03d}-block{int(block)}"


def cell_label(t: int, block: int) -> str:
    """How messages and tables name a cell: ``t=261, block 1``."""
    return f"t={int(t)}, block {int(block)}"


def check_grid(backbone: str, timesteps: Sequence[int], blocks: Sequence[int]) -> None:
    """Raise ValueError unless every t is 0..999 and every block is one of ``backbone``'s feature blocks."""
    from .backbones.catalog import card
    from .config import NUM_TRAIN_TIMESTEPS

    if not timesteps or not blocks:
        raise ValueError(f"a grid needs at least one timestep and one block, got {list(timesteps)} and {list(blocks)}")
    bad_t = [t for t in timesteps if not 0 <= t < NUM_TRAIN_TIMESTEPS]
    if bad_t:
        raise ValueError(f"--timesteps {bad_t} are outside 0..{NUM_TRAIN_TIMESTEPS - 1}")
    bb = card(backbone)
    bad_k = [k for k in blocks if not 0 <= k < bb.num_blocks]
    if bad_k:
        raise ValueError(
            f"--blocks {bad_k} are not feature blocks of backbone {backbone!r}: allowed are "
            f"0..{bb.num_blocks - 1} ({bb.blocks})"
        )


def grid_config(config: Any, timesteps: Sequence[int], blocks: Sequence[int]) -> Any:
    """``config`` for the extractor of a grid: its network runs to the deepest block, its t is the first.

    The config's own t and block describe one cell of the grid; each cell's identity names its own t and block.
    """
    check_grid(config.backbone, timesteps, blocks)
    return config.replace(t=int(min(timesteps)), up_ft_index=int(max(blocks)))
