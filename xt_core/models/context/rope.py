"""2D rotary position embeddings (axial RoPE) over the token grid of the whole slide.

Absolute 2D sin-cos positions added to the tokens make neighbourhood something a model must
learn from content-position mixtures; with RoPE it is built into every attention score.
Each query and key is rotated by angles proportional to its token's global (row, col):
half of a head's channel pairs turn with the row, half with the column, at geometric
frequencies. A rotation by ``a`` dotted with a rotation by ``b`` is a rotation by ``b - a``,
so ``score(i, j) = q_i . R(row_j - row_i, col_j - col_i) k_j`` depends on the tokens'
contents and their 2D offset only: shifting every coordinate by ``(a, b)`` changes nothing
(tested to 1e-6), and the model cannot tell where on the glass the tissue lies, only what
lies next to what. Applied to ``q`` and ``k`` before the attention core, so exact
attention, HyperAttention's LSH bucketing (which then hashes rotated vectors) and
Transformer-XL's memory (keys rotated with the memory tokens' own coordinates) all see it.

``coords`` everywhere is ``(L, 2)`` integer (row, col) of each token in the global token
grid (:func:`xt_core.models.position.token_coordinates`); ``None`` means one row, the
sequence index as the column (a 1D RoPE), so an encoder called on a bare sequence still works.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

#: The ``positions`` options of the context encoders (``context_kwargs``):
#: ``absolute``: the model adds 2D sin-cos to the projected tokens as they are (the format-1
#: behaviour, kept for existing checkpoints); ``normed``: the projected tokens are
#: LayerNorm-ed first, so the sin-cos terms are not drowned by feature scale; ``rope2d``:
#: LayerNorm-ed tokens, no absolute positions, 2D RoPE in every attention layer.
POSITION_MODES = ("absolute", "normed", "rope2d")

#: Default frequency base: with ~6 channel pairs per axis, wavelengths run from ~6 to ~300
#: tokens, the scale of tissue neighbourhoods on a slide (10000, the 1D text default, would
#: leave most pairs nearly unrotated over a slide's grid).
DEFAULT_ROPE_BASE = 100.0


def check_positions(positions: str, allowed: tuple[str, ...] = POSITION_MODES) -> str:
    """Validate a ``positions`` option, naming the choices when it is not one of them."""
    if positions not in allowed:
        raise ValueError(f"positions must be one of {', '.join(allowed)}, got {positions!r}")
    return positions


class RotaryTables(NamedTuple):
    """``cos`` and ``sin`` of every token's rotation angles, each ``(L, head_dim // 2)``."""

    cos: torch.Tensor
    sin: torch.Tensor

    def window(self, start: int, stop: int) -> "RotaryTables":
        """The tables of tokens ``start:stop`` (a segment, or a segment with its memory)."""
        return RotaryTables(self.cos[start:stop], self.sin[start:stop])


def default_coords(length: int, device: torch.device | None = None) -> torch.Tensor:
    """``(length, 2)``: one row, columns ``0 .. length - 1`` (what ``coords=None`` means)."""
    cols = torch.arange(length, device=device)
    return torch.stack([torch.zeros_like(cols), cols], dim=1)


def check_coords(coords: Optional[torch.Tensor], length: int, device: torch.device) -> torch.Tensor:
    """``coords`` as ``(length, 2)`` on ``device``, or the default 1D coordinates when ``None``."""
    if coords is None:
        return default_coords(length, device)
    if coords.dim() != 2 or coords.shape != (length, 2):
        raise ValueError(f"coords must be ({length}, 2) (row, col) per token, got {tuple(coords.shape)}")
    return coords.to(device)


def rotary_tables(
    coords: torch.Tensor, head_dim: int, base: float = DEFAULT_ROPE_BASE, dtype: torch.dtype = torch.float32
) -> RotaryTables:
    """Axial 2D RoPE tables for ``coords (L, 2)``: pairs ``0 .. head_dim/4 - 1`` turn with the
    row, the next ``head_dim / 4`` with the column, pair ``k`` of an axis at ``base ** (-k / n)``.

    Angles are formed in float64 (a row of 5000 tokens at frequency 1 keeps its angle to
    ~1e-12 rad) and only the cos / sin are cast to ``dtype``.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head width divisible by 4, got {head_dim}")
    pairs = head_dim // 4
    freq = base ** (-torch.arange(pairs, dtype=torch.float64, device=coords.device) / pairs)
    angles = torch.cat([coords[:, :1].double() * freq, coords[:, 1:2].double() * freq], dim=1)  # (L, head_dim/2)
    return RotaryTables(angles.cos().to(dtype), angles.sin().to(dtype))


def encoder_rope(encoder: torch.nn.Module, coords: Optional[torch.Tensor], length: int, device: torch.device,
                 dtype: torch.dtype) -> Optional[RotaryTables]:
    """The rotary tables of ``length`` tokens at ``coords`` when ``encoder`` uses ``positions:
    rope2d`` (head width ``dim // heads``, its ``rope_base``), else None: built once per forward
    (or segment) and shared by every layer, for every attention-based encoder."""
    if getattr(encoder, "positions", "absolute") != "rope2d":
        return None
    return rotary_tables(check_coords(coords, length, device), encoder.dim // encoder.heads, encoder.rope_base, dtype)


def apply_rotary(x: torch.Tensor, tables: RotaryTables) -> torch.Tensor:
    """Rotate ``x (..., L, head_dim)``: channel ``k`` pairs with ``k + head_dim / 2`` and the
    pair turns by the token's angle ``k``. Computed in ``x``'s dtype (float32 at least)."""
    half = x.shape[-1] // 2
    work = torch.promote_types(x.dtype, torch.float32)
    cos, sin = tables.cos.to(work), tables.sin.to(work)
    x1, x2 = x[..., :half].to(work), x[..., half:].to(work)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
