"""Slides made ready for training: region grid, tissue regions, label and segmentation targets.

Preparing a slide (tissue mask, grid, rasterised annotation) happens once per run; the
pixels are read during each step, so nothing grows with the number of epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from xt_core.errors import SlideError
from xt_core.models.config import XTConfig
from xt_core.slide import Slide, open_slide
from xt_core.tokenize import RegionGrid, make_region_grid
from xt_core.train.annotations import IGNORE_INDEX, blocks_to_sequence, rasterize_annotation, sequence_to_blocks
from xt_core.train.augment import AugmentConfig, augment_blocks
from xt_core.train.manifest import ManifestRow
from xt_core.train.streaming import SlideRegions, SlideTargets

__all__ = ["PreparedSlide", "prepare_slide", "prepare_slides"]


@dataclass(eq=False)
class PreparedSlide:
    """One manifest row ready for training or evaluation.

    ``number`` is the row's place in the manifest (it seeds the slide's augmentation);
    ``seg_blocks`` holds the segmentation targets as one ``(k, k)`` block per region
    (``k = t * u``), so that a region's flips and rotations can be applied to them.
    """

    number: int
    row: ManifestRow
    label: int | None
    grid: RegionGrid
    indices: np.ndarray
    tokens_per_side: int
    seg_blocks: np.ndarray | None = None

    @property
    def n_regions(self) -> int:
        return len(self.indices)

    @property
    def rows_cols(self) -> tuple[torch.Tensor, torch.Tensor]:
        r, c = np.divmod(self.indices, self.grid.cols)
        return torch.from_numpy(r), torch.from_numpy(c)

    def open(self) -> Slide:
        return open_slide(self.row.slide, mpp=self.row.mpp)

    def source(self, slide: Slide, *, workers: int = 2, seeds: np.ndarray | None = None,
               augment: AugmentConfig | None = None, pin_memory: bool = False) -> SlideRegions:
        return SlideRegions(slide, self.grid, self.indices, workers=workers, seeds=seeds, augment=augment,
                            pin_memory=pin_memory)

    def targets(self, seeds: np.ndarray | None = None, augment: AugmentConfig | None = None) -> SlideTargets:
        """The slide's targets; segmentation blocks moved with the regions' flips and rotations."""
        seg = None
        if self.seg_blocks is not None:
            blocks = self.seg_blocks
            if augment is not None and seeds is not None:
                blocks = augment_blocks(blocks, seeds, augment)
            seg = torch.from_numpy(blocks_to_sequence(blocks, self.tokens_per_side))  # (L, u, u)
        return SlideTargets(label=self.label, seg=seg)

    @property
    def annotated_cells(self) -> int:
        return 0 if self.seg_blocks is None else int((self.seg_blocks != IGNORE_INDEX).sum())


def prepare_slide(
    number: int,
    row: ManifestRow,
    config: XTConfig,
    tokens_per_side: int,
    *,
    tissue_threshold: float | None = None,
    annotations: bool = True,
    class_map: Mapping[str, str | None] | None = None,
    min_coverage: float = 0.5,
    oversample: int = 4,
) -> PreparedSlide:
    """Tissue mask, region grid, tissue regions and targets of one manifest row.

    ``tissue_threshold`` (default: the model's) <= 0 encodes every region and skips tissue
    detection. Raises :class:`SlideError` for an unreadable slide or one without tissue.
    """
    from xt_core.tissue import tissue_mask

    threshold = config.tissue_threshold if tissue_threshold is None else tissue_threshold
    with open_slide(row.slide, mpp=row.mpp) as slide:
        tissue = tissue_mask(slide) if threshold and threshold > 0 else None
        grid = make_region_grid(slide, target_mpp=config.target_mpp, region_size=config.region_size,
                                chunk_size=config.chunk_size, tissue=tissue)
    indices = grid.tissue_indices(threshold)
    if len(indices) == 0:
        raise SlideError(row.slide, f"no region has tissue above the threshold {threshold} "
                                    "(lower tissue_threshold to train on it anyway)")
    label = None
    if row.label is not None:
        label = list(config.classes).index(row.label)
    seg_blocks = None
    if annotations and row.annotation is not None and config.segmentation:
        targets = rasterize_annotation(
            row.annotation, grid, config.classes, tokens_per_side=tokens_per_side, upsample=config.seg_upsample,
            indices=indices, class_map=class_map, oversample=oversample, min_coverage=min_coverage,
        )
        seg_blocks = sequence_to_blocks(targets.labels, tokens_per_side)
    return PreparedSlide(number=number, row=row, label=label, grid=grid, indices=indices,
                         tokens_per_side=tokens_per_side, seg_blocks=seg_blocks)


def prepare_slides(
    numbered_rows: Iterable[tuple[int, ManifestRow]],
    config: XTConfig,
    tokens_per_side: int,
    *,
    progress: bool = False,
    desc: str = "preparing slides",
    **kwargs,
) -> list[PreparedSlide]:
    """:func:`prepare_slide` for ``(manifest place, row)`` pairs (see :func:`numbered`)."""
    from tqdm.auto import tqdm

    items = list(numbered_rows)
    return [prepare_slide(n, row, config, tokens_per_side, **kwargs)
            for n, row in tqdm(items, desc=desc, disable=not progress or not items, leave=False)]


def numbered(all_rows: Sequence[ManifestRow], chosen: Sequence[ManifestRow]) -> list[tuple[int, ManifestRow]]:
    """``(place in the manifest, row)`` of the chosen rows."""
    place = {id(r): i for i, r in enumerate(all_rows)}
    return [(place[id(r)], r) for r in chosen]
