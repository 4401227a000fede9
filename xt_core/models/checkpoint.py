"""Checkpoints: safetensors weights plus a JSON config. Nothing is ever unpickled.

A checkpoint is a folder holding ``model.safetensors`` and ``config.json``. ``load_model``
takes the folder or either file. A pickle (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``, ``.bin``, or
any file that starts like one) is refused before a byte of it is interpreted: unpickling
runs code chosen by whoever wrote the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from xt_core import __version__
from xt_core.errors import ModelFileError
from xt_core.models.config import CONFIG_NAME, WEIGHTS_NAME, checkpoint_files, read_config_file
from xt_core.models.xt import XTModel, create_model
from xt_core.outputs.atomic import atomic_path
from xt_core._hashing import sha256_file as _sha256



def save_model(
    model: XTModel, path: str | os.PathLike, extra: dict | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model`` to the folder ``path`` (weights and config, each atomically).

    ``dtype=torch.float16`` stores floating-point weights at half size (a model shipped
    inside the package); :func:`load_model` brings them back to the model's own dtype.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().contiguous().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value
    # One key only: safetensors writes a metadata dict in no fixed order, and the same
    # weights must give the same bytes (and sha256) every time they are saved.
    metadata = {"format": f"napari-xt {__version__}"}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    record = {"config": model.config.to_dict(), "xt_slide_version": __version__, **(extra or {})}
    with atomic_path(folder / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return folder


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> XTModel:
    """Load a checkpoint folder (or its ``model.safetensors`` / ``config.json``) for inference.

    The model comes back in eval mode with ``weights_sha256`` and ``checkpoint_path`` set.
    Raises :class:`ModelFileError` naming the file for anything that is not a valid checkpoint.
    """
    weights, config_path = checkpoint_files(Path(path))
    config, record = read_config_file(config_path)
    state = _read_weights(weights)
    try:
        model = create_model(config)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ModelFileError(config_path, f"cannot build the model it describes: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            weights,
            f"weights do not match the config ({len(missing)} missing, {len(unexpected)} unexpected; "
            f"e.g. {(missing or unexpected)[0]})",
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ModelFileError(weights, f"tensor {key} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[key].shape)}")
    # Weights stored at reduced precision come back in the dtype the model was built with.
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.weights_sha256 = _sha256(weights)  # type: ignore[attr-defined]
    model.checkpoint_path = str(weights.parent)  # type: ignore[attr-defined]
    model.checkpoint_record = record  # type: ignore[attr-defined]
    return model.to(device).eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(path, f"not a readable safetensors file: {exc}") from exc
