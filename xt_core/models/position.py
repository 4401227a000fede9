"""Between region encoder and context encoder: token pooling and global 2D positions.

Every token's position is its (row, col) in the token grid of the *whole slide*, not its index
in the sequence, so raster order keeps the 2D geometry and skipped background regions leave
gaps rather than shifting everything after them.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


def sincos_2d(rows: torch.Tensor, cols: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos embeddings ``(L, dim)`` of token grid coordinates.

    Half the channels encode the row, half the column (each as sin and cos of geometric
    frequencies, as in MAE / xT), so ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"the 2D sin-cos position needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = torch.arange(quarter, device=rows.device, dtype=torch.float32) / quarter
    omega = 1.0 / temperature**omega
    r = rows.to(torch.float32)[:, None] * omega[None]
    c = cols.to(torch.float32)[:, None] * omega[None]
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1)


def token_coordinates(
    region_rows: torch.Tensor, region_cols: torch.Tensor, tokens_per_side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global token (row, col) of every token of the given regions, in sequence order.

    The sequence lists regions in the given order and, inside a region, its
    ``tokens_per_side ** 2`` tokens row-major.
    """
    t = tokens_per_side
    i = torch.arange(t, device=region_rows.device).repeat_interleave(t)  # row inside the region
    j = torch.arange(t, device=region_rows.device).repeat(t)  # col inside the region
    rows = (region_rows[:, None] * t + i[None]).reshape(-1)
    cols = (region_cols[:, None] * t + j[None]).reshape(-1)
    return rows, cols


class TokenPool(nn.Module):
    """Average-pools each region's token map to ``k x k`` (identity when ``k`` is None).

    A 512 px region through a stride-32 backbone gives 16x16 = 256 tokens; pooling to 2x2
    lets a slide of 100,000 regions fit in a sequence of 400,000 tokens.
    """

    def __init__(self, k: int | None) -> None:
        super().__init__()
        if k is not None and k < 1:
            raise ValueError(f"token pool size must be >= 1, got {k}")
        self.k = k

    def output_side(self, side: int) -> int:
        return side if self.k is None else min(self.k, side)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.k is None or maps.shape[-1] <= self.k:
            return maps
        if maps.shape[-1] % self.k == 0:
            s = maps.shape[-1] // self.k
            return F.avg_pool2d(maps, kernel_size=s, stride=s)
        return F.adaptive_avg_pool2d(maps, self.k)


def flatten_region_maps(maps: torch.Tensor) -> torch.Tensor:
    """``(N, D, t, t)`` region maps to ``(N * t * t, D)`` tokens: regions in order, each row-major."""
    n, d, t, _ = maps.shape
    return maps.permute(0, 2, 3, 1).reshape(n * t * t, d)


def num_tokens(regions: int, tokens_per_side: int) -> int:
    return regions * tokens_per_side * tokens_per_side


