"""XTConfig: everything needed to rebuild a model, as JSON beside its safetensors weights."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xt_core.errors import ModelFileError

#: A checkpoint is a folder of these two files: safetensors weights and a JSON config.
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: File endings of pickles and ``torch.save`` files: refused unread (unpickling runs code).
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar"})

CONFIG_FORMAT = 1


@dataclass
class XTConfig:
    """An xT model for slides: region encoder, tokens, context encoder, heads, and data settings.

    ``region_size`` px regions at ``target_mpp`` are cut into ``chunk_size`` px chunks for the
    ``region_encoder`` (a preset of ``REGION_ENCODERS`` or any timm model name, built by
    ``create_region_encoder``) at ``stage`` (-1: last); each region's token map
    is pooled to ``token_pool`` x ``token_pool`` (None: kept), projected to ``context_dim``,
    given its global 2D position, and read by ``context_encoder`` (a registered name, with
    ``context_kwargs``). ``classes`` names the outputs of both heads.
    """

    classes: list[str]
    region_encoder: str = "efficientnet_lite0"
    stage: int = -1
    region_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    region_size: int = 512
    chunk_size: int = 256
    target_mpp: float | None = 0.5
    token_pool: int | None = 2
    context_encoder: str = "transformer_xl"
    context_dim: int = 192
    context_kwargs: dict[str, Any] = field(default_factory=dict)
    pooling: str = "attention"
    classification: bool = True
    segmentation: bool = True
    seg_upsample: int = 1
    tissue_threshold: float = 0.05
    name: str = "xt-model"
    description: str = ""
    format: int = CONFIG_FORMAT

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("a model needs at least one class name")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names repeat: {self.classes}")
        if self.region_size % self.chunk_size:
            raise ValueError(f"chunk_size {self.chunk_size} must divide region_size {self.region_size}")
        if not (self.classification or self.segmentation):
            raise ValueError("a model needs a classification or a segmentation head")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "XTConfig":
        """Rebuild from a dict; unknown keys are an error (a config from another tool, or a typo)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        if data.get("format", CONFIG_FORMAT) > CONFIG_FORMAT:
            raise ValueError(f"config format {data['format']} is newer than this napari-xt understands")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "XTConfig":
        return cls.from_dict(json.loads(text))


def read_config_file(path: "os.PathLike | str") -> tuple[XTConfig, dict[str, Any]]:
    """A checkpoint's ``config.json``: the :class:`XTConfig` and the whole record (training notes,
    intended use...). Needs no torch, so a model's card can be shown before the model loads."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        config = XTConfig.from_dict(record["config"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"not a readable JSON config: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(path, f"not a napari-xt model config: {exc}") from exc
    return config, record


def checkpoint_files(path: Path) -> tuple[Path, Path]:
    """``(weights, config)`` of a checkpoint folder, or of the folder of one of its two files.

    Raises :class:`ModelFileError` for anything else, and for pickles (by name or by their
    first bytes) before anything reads them: the one check of a checkpoint's files, for the
    loader and for the napari model card alike (no torch needed).
    """
    if not path.exists():
        raise ModelFileError(path, "no such file or folder")
    if path.is_file():
        refuse_pickle(path)
        folder = path.parent
        if path.name not in (WEIGHTS_NAME, CONFIG_NAME) and path.suffix not in (".safetensors", ".json"):
            raise ModelFileError(path, f"not a napari-xt checkpoint (expected a folder with {WEIGHTS_NAME} and {CONFIG_NAME})")
    else:
        folder = path
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for needed in (weights, config):
        if not needed.is_file():
            raise ModelFileError(folder, f"checkpoint folder lacks {needed.name}")
    refuse_pickle(weights)
    return weights, config


def refuse_pickle(path: Path) -> None:
    """Raise :class:`ModelFileError` if ``path`` is (or is named like) a pickle or torch.save file."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(path, "is a pickle/PyTorch file; napari-xt loads only safetensors weights with a JSON config, never pickles")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80" or head[:2] == b"PK":  # pickle protocol 2+ / torch.save zip
        raise ModelFileError(path, "looks like a pickle/PyTorch file; napari-xt loads only safetensors weights with a JSON config")
