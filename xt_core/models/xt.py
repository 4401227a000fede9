"""XTModel: region encoder -> token pool -> projection + 2D position -> context encoder -> heads.

Positions enter one of three ways (``context_kwargs["positions"]``): ``absolute`` 2D sin-cos
added to the projected tokens (format-1 checkpoints, the default), ``normed`` (the same after a
LayerNorm of the projected tokens) or ``rope2d`` (LayerNorm only; the encoder's attention
rotates queries and keys by the tokens' grid places, :mod:`xt_core.models.context.rope`).

The model knows nothing of files or slides: it takes region pixels with their grid places and
returns logits. Streaming (which regions, in what batches) is the caller's business
(:mod:`xt_core.inference`, :mod:`xt_core.train`), so the same module serves a whole-image
forward pass in a test and a streamed pass over 100,000 regions.
"""

from __future__ import annotations

import torch
from torch import nn

from xt_core.models.config import XTConfig
from xt_core.models.context import create_context_encoder
from xt_core.models.heads import SegmentationHead, create_classifier
from xt_core.models.position import TokenPool, flatten_region_maps, sincos_2d, token_coordinates
from xt_core.models.region import create_region_encoder
from xt_core.models.weights import WeightsLike


class XTModel(nn.Module):
    """The xT model of one :class:`XTConfig`.

    Every part comes from a registry by the name the config gives, so a config file can
    name any of them: the region encoder (``create_region_encoder``: a preset or any timm
    model), the context encoder and the classifier. ``region_weights`` is a weights spec
    (:mod:`xt_core.models.weights`) for a new model; a checkpoint's weights are loaded later.
    """

    def __init__(self, config: XTConfig, region_weights: WeightsLike = None) -> None:
        super().__init__()
        self.config = config
        self.region_encoder = create_region_encoder(
            config.region_encoder,
            chunk_size=config.chunk_size,
            stage=config.stage,
            weights=region_weights,
            **config.region_encoder_kwargs,
        )
        self.token_pool = TokenPool(config.token_pool)
        self.proj = nn.Linear(self.region_encoder.out_channels, config.context_dim)
        self.context = create_context_encoder(config.context_encoder, dim=config.context_dim, **config.context_kwargs)
        # How positions enter (``context_kwargs["positions"]``, read back from the encoder,
        # which validated it): ``absolute`` adds sin-cos to the projected tokens as they are;
        # ``normed`` and ``rope2d`` LayerNorm the projected tokens first (see contextualize).
        self.position_mode = getattr(self.context, "positions", "absolute")
        self.token_norm = nn.LayerNorm(config.context_dim) if self.position_mode != "absolute" else None
        n = len(config.classes)
        self.classifier = create_classifier(config.pooling, config.context_dim, n) if config.classification else None
        self.segmenter = SegmentationHead(config.context_dim, n, config.seg_upsample) if config.segmentation else None

    # ------------------------------------------------------------------ geometry
    @property
    def tokens_per_side(self) -> int:
        """Tokens along one side of a region after the backbone and the token pool."""
        return self.token_pool.output_side(self.config.region_size // self.region_encoder.stride)

    @property
    def heatmap_side(self) -> int:
        """Heatmap pixels along one side of a region: its tokens per side, times the segmentation
        head's upsampling (1 without a head: then the heatmap is the classification's token grid)."""
        return self.tokens_per_side * (self.config.seg_upsample if self.segmenter is not None else 1)

    @property
    def tokens_per_region(self) -> int:
        return self.tokens_per_side**2

    # ------------------------------------------------------------------ stages
    def encode_regions(self, images: torch.Tensor) -> torch.Tensor:
        """Region pixels ``(N, 3, R, R)`` (uint8 or float) -> tokens ``(N, t*t, context_dim)``."""
        maps = self.token_pool(self.region_encoder(images))
        n = maps.shape[0]
        tokens = flatten_region_maps(maps).reshape(n, self.tokens_per_region, -1)
        return self.proj(tokens)

    def positions(self, region_rows: torch.Tensor, region_cols: torch.Tensor) -> torch.Tensor:
        """Global 2D sin-cos positions ``(L, context_dim)`` of the regions' tokens, in sequence order."""
        rows, cols = token_coordinates(region_rows, region_cols, self.tokens_per_side)
        return sincos_2d(rows, cols, self.config.context_dim)

    def token_coords(self, region_rows: torch.Tensor, region_cols: torch.Tensor) -> torch.Tensor:
        """Global token grid places ``(L, 2)`` (row, col) of the regions' tokens, in sequence order."""
        rows, cols = token_coordinates(region_rows, region_cols, self.tokens_per_side)
        return torch.stack([rows, cols], dim=1)

    def context_input(self, seq: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Projected tokens ``(1, L, D)`` at ``coords (L, 2)`` as the context encoder takes them.

        Why the LayerNorm: projected backbone features are unnormalised (EfficientNet-Lite0's
        last stage through one linear layer: per-channel spreads of several units), while
        sin-cos terms are at most 1, so in ``absolute`` mode the positions are a small
        perturbation of the content that a model learns to use slowly if at all. ``normed``
        puts both on the same scale (the LayerNorm's gain learns the balance); ``rope2d``
        adds no absolute position at all (the encoder rotates q and k by ``coords``). Works
        on any token window (a segment), since both steps act per token.
        """
        if self.position_mode == "absolute":
            return seq + sincos_2d(coords[:, 0], coords[:, 1], self.config.context_dim).to(seq.dtype)[None]
        normed = self.token_norm(seq)
        if self.position_mode == "rope2d":
            return normed
        return normed + sincos_2d(coords[:, 0], coords[:, 1], self.config.context_dim).to(normed.dtype)[None]

    def contextualize(
        self, tokens: torch.Tensor, region_rows: torch.Tensor, region_cols: torch.Tensor
    ) -> torch.Tensor:
        """Region tokens ``(N, t*t, D)`` of one slide, raster order -> context tokens ``(1, N*t*t, D)``."""
        seq = tokens.reshape(1, -1, tokens.shape[-1])
        coords = self.token_coords(region_rows.to(seq.device), region_cols.to(seq.device))
        return self.context(self.context_input(seq, coords), coords)

    def heads(self, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classification logits ``(1, C)`` and segmentation logits ``(1, L, u, u, C)``."""
        out: dict[str, torch.Tensor] = {}
        if self.classifier is not None:
            out["logits"] = self.classifier(context)
        if self.segmenter is not None:
            out["seg_logits"] = self.segmenter(context)
        return out

    def forward(
        self, images: torch.Tensor, region_rows: torch.Tensor, region_cols: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """All regions of one slide at once (small slides, tests): pixels -> head outputs."""
        return self.heads(self.contextualize(self.encode_regions(images), region_rows, region_cols))


def create_model(config: XTConfig | dict, region_weights: WeightsLike = None) -> XTModel:
    """Build an :class:`XTModel`; ``region_weights`` (a weights spec: ``"package"``, a local
    ``.safetensors`` file, None) initialises its region encoder (:mod:`xt_core.models.weights`)."""
    if isinstance(config, dict):
        config = XTConfig.from_dict(config)
    return XTModel(config, region_weights=region_weights)
