"""The bundled default model: ``xt-lung-lc25000-v1``, shipped in ``xt_core/models/default_model/``.

A small xT model (ImageNet EfficientNet-Lite0 region encoder, Transformer-XL context,
classification and segmentation heads) trained on LC25000 lung H&E tile mosaics for three
classes: benign, adenocarcinoma, squamous cell carcinoma. It is what ``xt-slide classify`` /
``segment`` / ``batch``, ``make demo`` and the napari widget use when no ``--model`` is given.
It is a demo and a starting point for fine-tuning, **not a diagnostic tool**: see the model card
in ``recipes/default_model/MODEL_CARD.md`` (and the README). Rebuild it with
``python recipes/default_model/make_default_model.py``.

This module imports nothing heavy: :func:`default_model_path` only looks at files, so the CLI
can fail fast when an install has no default model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xt_core.errors import ModelFileError

if TYPE_CHECKING:
    import torch

    from xt_core.models.xt import XTModel

__all__ = ["DEFAULT_MODEL_DIR", "DEFAULT_MODEL_NAME", "default_model", "default_model_path"]

#: Where the package keeps the checkpoint (``model.safetensors`` + ``config.json``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_NAME = "xt-lung-lc25000-v1"
_FILES = ("model.safetensors", "config.json")


def default_model_path() -> Path | None:
    """The bundled checkpoint folder, or None when this install lacks either of its two files."""
    if all((DEFAULT_MODEL_DIR / name).is_file() for name in _FILES):
        return DEFAULT_MODEL_DIR
    return None


def default_model(device: "str | torch.device" = "cpu") -> "XTModel":
    """The bundled default model, loaded (eval mode) on ``device``.

    Raises :class:`~xt_core.errors.ModelFileError` when this install has no default model.
    """
    path = default_model_path()
    if path is None:
        missing = [name for name in _FILES if not (DEFAULT_MODEL_DIR / name).is_file()]
        raise ModelFileError(
            DEFAULT_MODEL_DIR,
            f"the bundled default model is missing ({', '.join(missing)})",
            fix="reinstall napari-xt, rebuild it with 'python recipes/default_model/make_default_model.py', "
                "or give a checkpoint folder of your own",
        )
    from xt_core.models.checkpoint import load_model

    return load_model(path, device=device)
