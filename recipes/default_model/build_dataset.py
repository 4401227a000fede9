"""The default model's data: LC25000 lung tiles -> near-duplicate groups -> split -> mosaic slides.

Run on its own (``python recipes/default_model/build_dataset.py --out DIR``) or through
``make_default_model.py``. Everything is seeded; the same tiles give the same groups, split
and slides.

1. **Near-duplicate groups first.** LC25000 was made by augmenting 250 originals per class
   (rotations of up to 25 degrees, which crop and zoom, and flips), and some of our tiles are
   byte-for-byte copies of each other. Within a class (augmentation keeps the class), two tiles
   are near-duplicates when their colour histograms agree (``d_col`` < 0.05) AND either

   * ``d_reg`` < 0.30: the smallest mean squared difference between standardised 16 x 16 grey
     central crops over the 8 dihedral transforms x rotations of -50..50 degrees x zooms of
     0.5..2 (the search an augmentation by rotate-crop-zoom and flips needs), or
   * ``d_cnn`` < 0.075: cosine distance between ImageNet EfficientNet-Lite0 features averaged
     over the 8 dihedral transforms (catches shifted crops of the same photograph, which the
     centred registration misses).

   Groups are the connected components (union-find). The thresholds were set by looking at the
   pairs on either side of them (unrelated alveolar tiles reach ``d_reg`` 0.32 but differ in
   colour; registered duplicates lie below 0.3 with ``d_col`` < 0.02); the script prints the
   counts and distances that justify them again on every run.

2. **Split the groups**, per class, seeded: test and val each get whole groups until they hold
   20 % of the class's tiles, train the rest. No near-duplicate crosses a split.

3. **Slides per split**, from that split's tiles only: a block of 2x3 .. 4x4 tiles (one tile =
   one 224 px region) with some corners left as glass, placed at a random offset on a glass
   canvas (so positions on the slide vary), saved as a lossless tiled TIFF with resolution tags
   (0.5 um/px, see below); a mask PNG with one pixel per region (0 benign, 1 adenocarcinoma,
   2 squamous cell carcinoma, 255 glass / not annotated); and the slide label from its content:
   ``benign`` when every tile is benign, otherwise the tumour type present (one tumour type per
   slide, 1..all of its tiles, grown as one connected focus among benign tiles).

**Pixel size.** LC25000 does not state its magnification. Its 768 px images were resized to our
224 px tiles; red blood cells (about 7.5 um across) measure 14-15 px in the tiles, so we take
**0.5 um/px** at 224 px (a 224 px tile covers about 112 um) and train the model at
``target_mpp`` 0.5. It is an estimate, good to perhaps +-30 %.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TILES = ROOT.parent / "shared" / "data" / "tiles" / "lc25000_lung"

#: Model classes, in order (mask values 0, 1, 2), and the LC25000 folder of each.
CLASSES = ("benign", "adenocarcinoma", "squamous_cell_carcinoma")
FOLDERS = {"lung_n": "benign", "lung_aca": "adenocarcinoma", "lung_scc": "squamous_cell_carcinoma"}
TILE_PX = 224
ASSUMED_MPP = 0.5
GLASS = (242, 240, 244)
UNANNOTATED = 255

# near-duplicate criteria (see the module docstring)
COLOUR_MAX = 0.05
REGISTRATION_MAX = 0.30
CNN_MAX = 0.075
GROUPING_VERSION = 1

SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = {"test": 0.2, "val": 0.2}
DEFAULT_SLIDES = {"train": 120, "val": 30, "test": 60}
BLOCK_SHAPES = ((2, 3), (3, 2), (3, 3), (2, 4), (4, 2), (3, 4), (4, 3), (4, 4))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- tiles
def list_tiles(tiles_dir: str | os.PathLike = DEFAULT_TILES) -> dict[str, list[Path]]:
    """``class -> tile paths`` in natural order (lungn1, lungn2, ..., lungn100)."""
    tiles_dir = Path(tiles_dir)
    if not tiles_dir.is_dir():
        raise SystemExit(f"error: {tiles_dir}: LC25000 lung tiles not found (expected lung_n/, lung_aca/, lung_scc/)")
    out = {}
    for folder, cls in FOLDERS.items():
        files = sorted((tiles_dir / folder).glob("*.jpeg"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if not files:
            raise SystemExit(f"error: {tiles_dir / folder}: no .jpeg tiles")
        out[cls] = files
    return out


def tile_id(path: Path) -> str:
    """``lung_n/lungn7.jpeg``: a tile's name relative to the LC25000 folder."""
    return f"{path.parent.name}/{path.name}"


def read_tile(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if rgb.size != (TILE_PX, TILE_PX):
            rgb = rgb.resize((TILE_PX, TILE_PX), Image.BICUBIC)
        return np.asarray(rgb)


# ----------------------------------------------------------------------------- distances
_CROP, _THUMB = 72, 16
_ANGLES = tuple(range(-50, 51, 5))
_ZOOMS = tuple(float(z) for z in np.exp(np.linspace(np.log(0.5), np.log(2.0), 11)))


def _standardise(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float32)
    a = a - a.mean(1, keepdims=True)
    return a / (a.std(1, keepdims=True) + 1e-6)


def _views(grey, angles=(0,), zooms=(1.0,), dihedral=True) -> np.ndarray:
    """Standardised 16 x 16 thumbnails of the central crop of ``grey`` (a PIL L image) under transforms."""
    from PIL import Image

    s = grey.size[0]
    out = []
    for flip in ((False, True) if dihedral else (False,)):
        b = grey.transpose(Image.FLIP_LEFT_RIGHT) if flip else grey
        for k in (range(4) if dihedral else (0,)):
            c = b.rotate(90 * k) if k else b
            for a in angles:
                d = c.rotate(a, Image.BILINEAR) if a else c
                for z in zooms:
                    h = _CROP / z / 2
                    box = (s / 2 - h, s / 2 - h, s / 2 + h, s / 2 + h)
                    out.append(np.asarray(d.resize((_THUMB, _THUMB), Image.BILINEAR, box=box)))
    return _standardise(np.stack(out))


def registration_distances(paths: list[Path]) -> np.ndarray:
    """``d_reg`` (n, n): min MSE of standardised grey central crops over dihedral x rotation x zoom."""
    from PIL import Image

    greys = []
    for p in paths:
        with Image.open(p) as im:
            greys.append(im.convert("L").resize((TILE_PX, TILE_PX), Image.BILINEAR))
    base = np.concatenate([_views(g, dihedral=False) for g in greys])  # (n, D)
    d = np.full((len(paths), len(paths)), np.inf, dtype=np.float32)
    dim = _THUMB * _THUMB
    for j, g in enumerate(greys):
        v = _views(g, _ANGLES, _ZOOMS)  # (V, D)
        d[:, j] = (2 - 2 * (base @ v.T) / dim).min(1)
    d = np.minimum(d, d.T)
    np.fill_diagonal(d, np.inf)
    return d


def colour_distances(paths: list[Path]) -> np.ndarray:
    """``d_col`` (n, n): 1 - Bhattacharyya coefficient of 512-bin RGB histograms (rotation/flip invariant)."""
    from PIL import Image

    hists = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize((112, 112), Image.BILINEAR)) // 32
        idx = (a[..., 0].astype(np.int64) * 64 + a[..., 1] * 8 + a[..., 2]).ravel()
        hists.append(np.bincount(idx, minlength=512) / idx.size)
    h = np.sqrt(np.stack(hists))
    d = 1 - h @ h.T
    np.fill_diagonal(d, np.inf)
    return d


def cnn_distances(paths: list[Path], batch: int = 25) -> np.ndarray:
    """``d_cnn`` (n, n): cosine distance of ImageNet EfficientNet-Lite0 features averaged over 8 dihedral views."""
    import torch

    from xt_core._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    from xt_core.models.weights import load_package_weights

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    load_package_weights(net)
    net.reset_classifier(0)
    net.eval().to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.from_numpy(np.stack([read_tile(p) for p in paths[i : i + batch]])).permute(0, 3, 1, 2)
            x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            f = 0
            for k in range(4):
                for flip in (False, True):
                    y = torch.rot90(x, k, (2, 3))
                    f = f + net((y.flip(3) if flip else y).contiguous(memory_format=torch.channels_last))
            feats.append(torch.nn.functional.normalize(f, dim=1))
    f = torch.cat(feats).numpy()
    d = 1 - f @ f.T
    np.fill_diagonal(d, np.inf)
    return d


# ----------------------------------------------------------------------------- grouping
def _union_find(adjacent: np.ndarray) -> np.ndarray:
    parent = list(range(len(adjacent)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(adjacent, 1))):
        parent[find(int(i))] = find(int(j))
    roots = [find(i) for i in range(len(adjacent))]
    # number groups by their first tile, so ids do not depend on union order
    first: dict[int, int] = {}
    for r in roots:
        first.setdefault(r, len(first))
    return np.array([first[r] for r in roots])


def near_duplicate_matrix(d_reg: np.ndarray, d_col: np.ndarray, d_cnn: np.ndarray) -> np.ndarray:
    """Pairs that are near-duplicates under the recipe's criteria (boolean, symmetric)."""
    return (d_col < COLOUR_MAX) & ((d_reg < REGISTRATION_MAX) | (d_cnn < CNN_MAX))


def _fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256(f"grouping-v{GROUPING_VERSION}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{tile_id(p)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:24]


def tile_distances(paths: list[Path], cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """The three distance matrices of one class's tiles (cached in ``cache_dir`` when given)."""
    cache = cache_dir / f"distances-{paths[0].parent.name}-{_fingerprint(paths)}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in ("d_reg", "d_col", "d_cnn")}
    t0 = time.perf_counter()
    out = {"d_col": colour_distances(paths), "d_reg": registration_distances(paths)}
    t1 = time.perf_counter()
    out["d_cnn"] = cnn_distances(paths)
    log(f"  {paths[0].parent.name}: registration + colour {t1 - t0:.0f} s, CNN features {time.perf_counter() - t1:.0f} s")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez_compressed(tmp, **out)
        os.replace(tmp, cache)
    return out


@dataclass
class Grouping:
    """Near-duplicate groups of every class: ``groups[cls][i]`` is tile ``tiles[cls][i]``'s group."""

    tiles: dict[str, list[Path]]
    groups: dict[str, np.ndarray]
    stats: dict[str, dict]


def group_tiles(tiles: dict[str, list[Path]], cache_dir: Path | None = None, verbose: bool = True) -> Grouping:
    """Group each class's tiles into near-duplicate groups (see the module docstring)."""
    groups, stats = {}, {}
    for cls, paths in tiles.items():
        d = tile_distances(paths, cache_dir)
        dup = near_duplicate_matrix(d["d_reg"], d["d_col"], d["d_cnn"])
        g = _union_find(dup)
        groups[cls] = g
        sizes = np.bincount(g)
        iu = np.triu_indices(len(paths), 1)
        reg, col, cnn, hit = d["d_reg"][iu], d["d_col"][iu], d["d_cnn"][iu], dup[iu]
        by_reg = hit & (reg < REGISTRATION_MAX)
        by_cnn = hit & ~by_reg
        nn_reg = d["d_reg"].min(1)
        # the closest pairs that were NOT merged, by each distance: the margin of the thresholds
        miss_reg = np.sort(reg[~hit])[:3]
        miss_cnn = np.sort(cnn[~hit])[:3]
        rejected_by_colour = int(((reg < REGISTRATION_MAX) | (cnn < CNN_MAX))[~hit].sum())
        stats[cls] = {
            "tiles": len(paths),
            "groups": int(len(sizes)),
            "group_sizes": {str(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True))},
            "duplicate_pairs": int(hit.sum()),
            "pairs_by_registration": int(by_reg.sum()),
            "pairs_by_cnn_only": int(by_cnn.sum()),
            "candidate_pairs_rejected_by_colour": rejected_by_colour,
            "merged_d_reg_max": float(reg[by_reg].max()) if by_reg.any() else None,
            "merged_d_col_max": float(col[hit].max()) if hit.any() else None,
            "closest_unmerged_d_reg": [round(float(x), 3) for x in miss_reg],
            "closest_unmerged_d_cnn": [round(float(x), 3) for x in miss_cnn],
            "nearest_neighbour_d_reg_quantiles": {
                q: round(float(np.quantile(nn_reg, float(q))), 3) for q in ("0.1", "0.25", "0.5", "0.75")},
        }
        if verbose:
            s = stats[cls]
            log(f"  {cls}: {s['tiles']} tiles -> {s['groups']} groups (sizes: "
                + ", ".join(f"{v}x{k}" for k, v in s["group_sizes"].items()) + ")")
            log(f"    {s['duplicate_pairs']} duplicate pairs: {s['pairs_by_registration']} by registration "
                f"(d_reg < {REGISTRATION_MAX}, largest merged {s['merged_d_reg_max']}), {s['pairs_by_cnn_only']} "
                f"by CNN features only (d_cnn < {CNN_MAX}); {rejected_by_colour} close pairs rejected by colour "
                f"(d_col >= {COLOUR_MAX})")
            log(f"    closest unmerged pairs: d_reg {s['closest_unmerged_d_reg']}, d_cnn {s['closest_unmerged_d_cnn']}; "
                f"nearest-neighbour d_reg quartiles {s['nearest_neighbour_d_reg_quantiles']}")
    return Grouping(tiles=tiles, groups=groups, stats=stats)


# ----------------------------------------------------------------------------- split
def split_groups(grouping: Grouping, seed: int = 0) -> dict[str, str]:
    """``tile id -> split``: per class, shuffled whole groups fill test, then val, to 20 % of the tiles each."""
    out = {}
    for c, (cls, paths) in enumerate(grouping.tiles.items()):
        g = grouping.groups[cls]
        ids = np.random.default_rng([seed, c]).permutation(int(g.max()) + 1)
        sizes = np.bincount(g)
        target = {k: round(v * len(paths)) for k, v in HELD_OUT_FRACTION.items()}
        counts = {"test": 0, "val": 0}
        assign = {}
        for gid in ids:
            split = next((s for s in ("test", "val") if counts[s] < target[s]), "train")
            if split != "train":
                counts[split] += int(sizes[gid])
            assign[int(gid)] = split
        for p, gid in zip(paths, g):
            out[tile_id(p)] = assign[int(gid)]
    return out


# ----------------------------------------------------------------------------- slides
class _Cycle:
    """Draws tiles without replacement, reshuffling when the pool runs out (even use of every tile)."""

    def __init__(self, items: list, rng: np.random.Generator) -> None:
        self.items, self.rng, self.queue = list(items), rng, []

    def take(self) -> object:
        if not self.queue:
            self.queue = [self.items[i] for i in self.rng.permutation(len(self.items))]
        return self.queue.pop()


def _block_cells(rows: int, cols: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The tissue cells of a rows x cols block: all, or with one or two corners left as glass."""
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    if rows * cols >= 9 and rng.random() < 0.5:
        corners = [(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1)]
        for k in rng.permutation(4)[: rng.integers(1, 3)]:
            cells.remove(corners[k])
    return cells


def _focus(cells: list[tuple[int, int]], k: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """``k`` cells forming one connected focus, grown from a random cell."""
    free = set(cells)
    start = cells[rng.integers(len(cells))]
    focus = {start}
    while len(focus) < k:
        border = sorted({(r + dr, c + dc) for r, c in focus for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))}
                        & free - focus)
        if not border:  # disconnected block: jump anywhere
            border = sorted(free - focus)
        focus.add(border[rng.integers(len(border))])
    return focus


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless the file already holds exactly it (its mtime then keeps feature caches valid)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_slides(split: str, n_slides: int, tiles: dict[str, list[Path]], out_dir: Path, seed: int = 0) -> list[dict]:
    """``n_slides`` mosaic slides of ``split`` from ``tiles`` (class -> that split's tiles); returns their rows."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng([seed, 1000 + SPLITS.index(split)])
    pools = {cls: _Cycle(paths, rng) for cls, paths in tiles.items()}
    cache: dict[Path, np.ndarray] = {}
    res = 1e4 / ASSUMED_MPP  # pixels per centimetre
    rows_out = []
    for s in range(n_slides):
        label = CLASSES[s % len(CLASSES)]
        br, bc = BLOCK_SHAPES[rng.integers(len(BLOCK_SHAPES))]
        cells = _block_cells(br, bc, rng)
        tumour = set()
        if label != "benign":
            tumour = _focus(cells, int(rng.integers(1, len(cells) + 1)), rng)
        oy, ox = (int(v) for v in rng.integers(0, 4, 2))
        gr, gc = oy + br + int(rng.integers(0, 3)), ox + bc + int(rng.integers(0, 3))
        canvas = np.empty((gr * TILE_PX, gc * TILE_PX, 3), dtype=np.uint8)
        canvas[:] = GLASS
        mask = np.full((gr, gc), UNANNOTATED, dtype=np.uint8)
        layout = []
        for r, c in cells:
            cls = label if (r, c) in tumour else "benign"
            path = pools[cls].take()
            if path not in cache:
                cache[path] = read_tile(path)
            y, x = (oy + r) * TILE_PX, (ox + c) * TILE_PX
            canvas[y : y + TILE_PX, x : x + TILE_PX] = cache[path]
            mask[oy + r, ox + c] = CLASSES.index(cls)
            layout.append({"row": oy + r, "col": ox + c, "tile": tile_id(path), "class": cls})
        name = f"{split}-{s:03d}"
        buf = io.BytesIO()
        tifffile.imwrite(buf, canvas, photometric="rgb", tile=(TILE_PX, TILE_PX), compression="zlib",
                         resolution=(res, res), resolutionunit="CENTIMETER")
        _write_if_changed(out_dir / f"{name}.tif", buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        _write_if_changed(out_dir / f"{name}.mask.png", buf.getvalue())
        rows_out.append({"slide": f"{name}.tif", "label": label, "annotation": f"{name}.mask.png", "split": split,
                         "mpp": ASSUMED_MPP, "grid": [gr, gc], "tiles": layout})
    return rows_out


# ----------------------------------------------------------------------------- all of it
def build(tiles_dir: str | os.PathLike = DEFAULT_TILES, out: str | os.PathLike = "work/data", *, seed: int = 0,
          n_slides: dict[str, int] | None = None, cache_dir: str | os.PathLike | None = None) -> dict:
    """Group, split and build the slides into ``out``; returns a summary (also ``out/dataset.json``).

    ``out`` gets ``manifest.csv`` (the engine's format), the slides and masks, ``dataset.json``
    (groups, split, statistics, each slide's tile layout).
    """
    from xt_core.train.manifest import write_manifest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_slides = {**DEFAULT_SLIDES, **(n_slides or {})}
    tiles = list_tiles(tiles_dir)
    log(f"near-duplicate groups ({sum(map(len, tiles.values()))} tiles):")
    grouping = group_tiles(tiles, Path(cache_dir) if cache_dir else out / "cache")
    split = split_groups(grouping, seed)
    per_split = {s: {cls: [p for p in paths if split[tile_id(p)] == s] for cls, paths in tiles.items()} for s in SPLITS}
    counts = {s: {cls: len(v) for cls, v in per_split[s].items()} for s in SPLITS}
    group_counts = {s: {cls: len({int(g) for p, g in zip(tiles[cls], grouping.groups[cls]) if split[tile_id(p)] == s})
                        for cls in tiles} for s in SPLITS}
    for s in SPLITS:
        log(f"  {s}: " + ", ".join(f"{cls} {counts[s][cls]} tiles / {group_counts[s][cls]} groups" for cls in tiles))
    # no group may cross a split
    for cls, paths in tiles.items():
        seen: dict[int, str] = {}
        for p, g in zip(paths, grouping.groups[cls]):
            assert seen.setdefault(int(g), split[tile_id(p)]) == split[tile_id(p)], f"group {g} of {cls} crosses a split"
    rows = []
    for s in SPLITS:
        rows += make_slides(s, n_slides[s], per_split[s], out, seed)
    write_manifest(out / "manifest.csv", [{k: r[k] for k in ("slide", "label", "annotation", "split", "mpp")}
                                          for r in rows])
    summary = {
        "tiles_dir": str(Path(tiles_dir).resolve()),
        "seed": seed,
        "assumed_mpp": ASSUMED_MPP,
        "classes": list(CLASSES),
        "folders": FOLDERS,
        "criteria": {"d_col_max": COLOUR_MAX, "d_reg_max": REGISTRATION_MAX, "d_cnn_max": CNN_MAX,
                     "grouping_version": GROUPING_VERSION},
        "grouping": grouping.stats,
        "tiles_per_split": counts,
        "groups_per_split": group_counts,
        "slides_per_split": {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS},
        "slide_labels_per_split": {s: {c: sum(1 for r in rows if r["split"] == s and r["label"] == c) for c in CLASSES}
                                   for s in SPLITS},
        "split": {tid: {"split": split[tid], "group": f"{FOLDERS[Path(tid).parent.name]}-{int(g)}"}
                  for cls, paths in tiles.items() for tid, g in ((tile_id(p), g) for p, g in zip(paths, grouping.groups[cls]))},
        "slides": rows,
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    log(f"  slides: " + ", ".join(f"{s} {summary['slides_per_split'][s]}" for s in SPLITS) + f" -> {out / 'manifest.csv'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", default=str(DEFAULT_TILES), help="the LC25000 lung folder (lung_n, lung_aca, lung_scc)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "work" / "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the CNN features (default 1)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    build(args.tiles, args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
