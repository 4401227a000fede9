"""A slide task that only context can solve: where tumour lies, not how much of it.

Each slide is an 8 x 8 block of real LC25000 lung tiles (one 224 px tile = one region,
0.5 um/px as the default model assumes) at a random offset on a 10 x 10 glass canvas. ``k``
regions are tumour (adenocarcinoma or squamous cell carcinoma tiles), the others benign lung,
with ``k`` drawn from the same range for both classes:

* ``clustered``: the tumour regions form one 4-connected focus grown from a random cell;
* ``scattered``: no two tumour regions touch, not even at a corner.

Every slide of either class holds the same kinds of regions in the same proportions, so a
model that looks at regions one by one (``context_encoder: none``) can do no better than
chance; telling the classes apart needs to know which regions are next to which. Tiles come
from the default model's tile split (``recipes/default_model/split.json``: near-duplicates
grouped, no group in two splits): training slides use its ``train`` tiles, test slides its
``val`` and ``test`` tiles, so no test slide shows a tile (or a near-copy) seen in training.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILES_DIR = ROOT.parent / "shared" / "data" / "tiles" / "lc25000_lung"
SPLIT_FILE = ROOT / "recipes" / "default_model" / "split.json"

CLASSES = ("clustered", "scattered")
GRID = 8  # tissue regions per side
CANVAS = 10  # canvas regions per side (the block sits at a random offset)
TILE_PX = 224
MPP = 0.5
GLASS = (242, 240, 244)
TUMOUR_COUNTS = (6, 10)  # inclusive range of tumour regions per slide, both classes alike
BENIGN_FOLDERS = ("lung_n",)
TUMOUR_FOLDERS = ("lung_aca", "lung_scc")


def tile_pools(tiles_dir: str | os.PathLike = TILES_DIR, split_file: str | os.PathLike = SPLIT_FILE
               ) -> dict[str, dict[str, list[Path]]]:
    """``{"train" | "test": {"benign" | "tumour": [tile paths]}}`` following the default
    model's near-duplicate-aware tile split (its ``val`` tiles join ``test``)."""
    tiles_dir = Path(tiles_dir)
    split = json.loads(Path(split_file).read_text(encoding="utf-8"))["tiles"]
    pools: dict[str, dict[str, list[Path]]] = {s: {"benign": [], "tumour": []} for s in ("train", "test")}
    for kind, folders in (("benign", BENIGN_FOLDERS), ("tumour", TUMOUR_FOLDERS)):
        for folder in folders:
            files = sorted((tiles_dir / folder).glob("*.jpeg"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
            if not files:
                raise FileNotFoundError(f"{tiles_dir / folder}: no LC25000 tiles")
            for path in files:
                which = split[f"{folder}/{path.name}"]["split"]
                pools["train" if which == "train" else "test"][kind].append(path)
    return pools


def clustered_cells(k: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """``k`` cells of the grid forming one 4-connected focus, grown from a random cell."""
    focus = {(int(rng.integers(GRID)), int(rng.integers(GRID)))}
    while len(focus) < k:
        border = sorted({(r + dr, c + dc) for r, c in focus for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                         if 0 <= r + dr < GRID and 0 <= c + dc < GRID} - focus)
        focus.add(border[int(rng.integers(len(border)))])
    return focus


def scattered_cells(k: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """``k`` cells of the grid no two of which touch (king-move distance at least 2)."""
    while True:  # a random greedy pick; it rarely gets stuck for k <= 10 on 8 x 8
        chosen: set[tuple[int, int]] = set()
        for index in rng.permutation(GRID * GRID):
            r, c = divmod(int(index), GRID)
            if all(max(abs(r - a), abs(c - b)) >= 2 for a, b in chosen):
                chosen.add((r, c))
                if len(chosen) == k:
                    return chosen


def is_connected(cells: set[tuple[int, int]]) -> bool:
    """Whether ``cells`` are one 4-connected component (the clustered class's invariant)."""
    start = next(iter(cells))
    seen, todo = {start}, [start]
    while todo:
        r, c = todo.pop()
        for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if n in cells and n not in seen:
                seen.add(n)
                todo.append(n)
    return seen == cells


def _read_tile(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if rgb.size != (TILE_PX, TILE_PX):
            rgb = rgb.resize((TILE_PX, TILE_PX), Image.BICUBIC)
        return np.asarray(rgb)


def make_slides(out: str | os.PathLike, *, train: int = 128, test: int = 64, seed: int = 0) -> Path:
    """Write ``train`` + ``test`` slides (classes alternating) and ``manifest.csv`` into ``out``;
    returns the manifest's path. Also writes ``layout.json`` (each slide's tumour cells)."""
    import tifffile

    from xt_core.manifest import write_manifest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pools = tile_pools()
    cache: dict[Path, np.ndarray] = {}
    res = 1e4 / MPP  # pixels per centimetre
    rows, layout = [], {}
    for split, count in (("train", train), ("test", test)):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        for s in range(count):
            label = CLASSES[s % 2]
            k = int(rng.integers(TUMOUR_COUNTS[0], TUMOUR_COUNTS[1] + 1))
            tumour = clustered_cells(k, rng) if label == "clustered" else scattered_cells(k, rng)
            oy, ox = (int(v) for v in rng.integers(0, CANVAS - GRID + 1, 2))
            canvas = np.empty((CANVAS * TILE_PX, CANVAS * TILE_PX, 3), dtype=np.uint8)
            canvas[:] = GLASS
            for r in range(GRID):
                for c in range(GRID):
                    kind = "tumour" if (r, c) in tumour else "benign"
                    pool = pools[split][kind]
                    path = pool[int(rng.integers(len(pool)))]
                    if path not in cache:
                        cache[path] = _read_tile(path)
                    tile = np.rot90(cache[path], int(rng.integers(4)))  # tiles vary in orientation too
                    y, x = (oy + r) * TILE_PX, (ox + c) * TILE_PX
                    canvas[y : y + TILE_PX, x : x + TILE_PX] = tile
            name = f"{split}-{s:03d}.tif"
            buf = io.BytesIO()
            tifffile.imwrite(buf, canvas, photometric="rgb", tile=(TILE_PX, TILE_PX), compression="zlib",
                             resolution=(res, res), resolutionunit="CENTIMETER")
            (out / name).write_bytes(buf.getvalue())
            rows.append({"slide": name, "label": label, "split": split, "mpp": MPP})
            layout[name] = {"label": label, "offset": [oy, ox], "tumour": sorted([oy + r, ox + c] for r, c in tumour)}
    manifest = write_manifest(out / "manifest.csv", rows)
    (out / "layout.json").write_text(json.dumps(layout, indent=1) + "\n", encoding="utf-8")
    return manifest
