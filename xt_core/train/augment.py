"""Region-level augmentation, deterministic given one seed per region.

The exact two-pass training step encodes every region twice (once without gradient, once
with); both passes must see identical pixels, so every random choice of a region is drawn
from its own seed (:func:`region_seeds`: training seed, epoch, slide, region index), never
from a global generator. Each region is transformed on its own, so the result does not
depend on how regions are batched.

Operations, in this order, each switchable:

* geometry: a horizontal flip (p = 0.5) then a rotation by ``k x 90`` degrees, ``k`` uniform
  in 0..3; segmentation targets of the region are flipped and rotated the same way
  (:func:`augment_blocks`);
* HED stain jitter (Tellez et al. 2018): the pixels are unmixed into haematoxylin, eosin and
  DAB optical densities (scikit-image's ``rgb2hed`` matrices, computed here in torch), each
  stain scaled by ``U(1 - hed_scale, 1 + hed_scale)`` and shifted by ``U(-hed_shift, hed_shift)``,
  and mixed back;
* colour jitter: brightness and contrast factors ``U(1 - x, 1 + x)``, saturation likewise
  (blend with the grey image), hue rotated by ``U(-hue, hue)`` turns (in YIQ space).

Results are rounded back to uint8, so both passes of the exact step get bit-identical input.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["AugmentConfig", "RegionParams", "augment_blocks", "augment_regions", "region_params", "region_seeds"]

# scikit-image's stain matrices (Ruifrok & Johnston), rows: H, E, DAB.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)
# YIQ (for hue rotation)
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.59590059, -0.27455667, -0.32134392], [0.21153661, -0.52273617, 0.31119955]],
    dtype=torch.float64,
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_GREY = (0.299, 0.587, 0.114)


@dataclass
class AugmentConfig:
    """Which augmentations, how strong. ``enabled=False`` (or all zero/False) means none."""

    enabled: bool = True
    flip: bool = True
    rotate90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    hed_scale: float = 0.05
    hed_shift: float = 0.01

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "AugmentConfig":
        if data is None:
            return cls()
        if isinstance(data, AugmentConfig):
            return data
        if isinstance(data, bool):
            return cls(enabled=data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown augment keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "enabled" and isinstance(value, str):  # YAML 1.1 reads 1e-2 as text
                try:
                    setattr(self, f.name, float(value))
                except ValueError:
                    raise ValueError(f"augment {f.name} must be a number, got {value!r}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def active(self) -> bool:
        return self.enabled and (
            self.flip or self.rotate90 or self.colour or self.stain
        )

    @property
    def colour(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))

    @property
    def stain(self) -> bool:
        return self.hed_scale > 0 or self.hed_shift > 0


@dataclass(frozen=True)
class RegionParams:
    """The random choices of one region."""

    flip: bool
    k: int
    hed_alpha: tuple[float, float, float]
    hed_beta: tuple[float, float, float]
    brightness: float
    contrast: float
    saturation: float
    hue: float


_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(_MASK64)
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(_MASK64)
    return x ^ (x >> np.uint64(31))


def region_seeds(seed: int, epoch: int, slide: int, indices: np.ndarray | list[int]) -> np.ndarray:
    """One 63-bit seed per region from (training seed, epoch, slide number, region index)."""
    with np.errstate(over="ignore"):
        h = np.uint64(seed & _MASK64)
        for part in (epoch, slide):
            h = _splitmix64(np.asarray(h ^ np.uint64(part & _MASK64), dtype=np.uint64))
        idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
        out = _splitmix64(h ^ _splitmix64(idx))
    return (out >> np.uint64(1)).astype(np.int64)


def region_params(seed: int, cfg: AugmentConfig) -> RegionParams:
    """Draw every choice (in a fixed order, whatever is enabled) and keep the enabled ones."""
    rng = np.random.default_rng(int(seed))
    u = rng.random(14)
    flip = bool(u[0] < 0.5) and cfg.flip
    k = int(u[1] * 4) % 4 if cfg.rotate90 else 0
    alpha = tuple(float(1 + cfg.hed_scale * (2 * v - 1)) for v in u[2:5])
    beta = tuple(float(cfg.hed_shift * (2 * v - 1)) for v in u[5:8])
    return RegionParams(
        flip=flip, k=k, hed_alpha=alpha, hed_beta=beta,
        brightness=float(1 + cfg.brightness * (2 * u[8] - 1)),
        contrast=float(1 + cfg.contrast * (2 * u[9] - 1)),
        saturation=float(1 + cfg.saturation * (2 * u[10] - 1)),
        hue=float(cfg.hue * (2 * u[11] - 1)),
    )


def augment_regions(images: torch.Tensor, seeds: np.ndarray, cfg: AugmentConfig) -> torch.Tensor:
    """Augment uint8 regions ``(N, 3, R, R)``, region ``i`` with ``seeds[i]``; returns uint8 ``(N, 3, R, R)``."""
    if not cfg.active:
        return images
    if images.dtype != torch.uint8:
        raise TypeError(f"augment_regions takes uint8 regions, got {images.dtype}")
    if len(seeds) != images.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {images.shape[0]} regions")
    out = torch.empty(images.shape, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    for i, seed in enumerate(seeds):
        out[i] = _augment_one(images[i], region_params(int(seed), cfg), cfg)
    return out


def augment_blocks(blocks: np.ndarray, seeds: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Apply the regions' flips and rotations to per-region target blocks ``(N, k, k, ...)``."""
    if not cfg.active or not (cfg.flip or cfg.rotate90):
        return blocks
    out = np.empty_like(blocks)
    for i, seed in enumerate(seeds):
        p = region_params(int(seed), cfg)
        b = blocks[i]
        if p.flip:
            b = b[:, ::-1]
        if p.k:
            b = np.rot90(b, p.k, axes=(0, 1))
        out[i] = b
    return out


def _augment_one(x: torch.Tensor, p: RegionParams, cfg: AugmentConfig) -> torch.Tensor:
    """One region ``(3, R, R)`` uint8 -> uint8."""
    if p.flip:
        x = x.flip(-1)
    if p.k:
        x = torch.rot90(x, p.k, dims=(-2, -1))
    if not (cfg.enabled and (cfg.colour or cfg.stain)):
        return x
    rgb = x.permute(1, 2, 0).to(torch.float32) / 255.0  # (R, R, 3)
    if cfg.stain:
        rgb = _hed_jitter(rgb, p.hed_alpha, p.hed_beta)
    if cfg.colour:
        rgb = _colour_jitter(rgb, p)
    return (rgb.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8).permute(2, 0, 1)


def _hed_jitter(rgb: torch.Tensor, alpha, beta) -> torch.Tensor:
    hed_from_rgb = _HED_FROM_RGB.to(rgb.dtype)
    rgb_from_hed = _RGB_FROM_HED.to(rgb.dtype)
    od = torch.log(rgb.clamp(min=1e-6)) / _LOG_ADJUST
    # no clamping of the stain densities: with alpha = 1, beta = 0 the round trip is exact
    stains = od @ hed_from_rgb
    stains = stains * torch.tensor(alpha, dtype=rgb.dtype) + torch.tensor(beta, dtype=rgb.dtype)
    return torch.exp((stains * _LOG_ADJUST) @ rgb_from_hed).clamp_(0.0, 1.0)


def _colour_jitter(rgb: torch.Tensor, p: RegionParams) -> torch.Tensor:
    grey_w = torch.tensor(_GREY, dtype=rgb.dtype)
    if p.brightness != 1.0:
        rgb = (rgb * p.brightness).clamp_(0.0, 1.0)
    if p.contrast != 1.0:
        mean = (rgb @ grey_w).mean()
        rgb = ((rgb - mean) * p.contrast + mean).clamp_(0.0, 1.0)
    if p.saturation != 1.0:
        grey = (rgb @ grey_w)[..., None]
        rgb = ((rgb - grey) * p.saturation + grey).clamp_(0.0, 1.0)
    if p.hue != 0.0:
        theta = 2 * math.pi * p.hue
        c, s = math.cos(theta), math.sin(theta)
        rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
        m = (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ).to(rgb.dtype)  # column-vector form
        rgb = (rgb @ m.T).clamp_(0.0, 1.0)
    return rgb
