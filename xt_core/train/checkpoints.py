"""Training checkpoints beyond the model: optimiser, schedule, scaler and RNG states.

An epoch folder of a run holds the model (:func:`~xt_core.models.checkpoint.save_model`) and
``train_state.safetensors`` + ``train_state.json``: every tensor in the safetensors file and
everything else in the JSON, never a pickle. The JSON is written last, so a folder with it
is complete: :func:`latest_checkpoint` picks the last such folder to resume from. Restoring
the RNG states as well is what makes a resumed CPU run equal an uninterrupted one to the bit.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from xt_core import __version__
from xt_core.models.checkpoint import WEIGHTS_NAME
from xt_core.models.xt import XTModel
from xt_core.outputs.atomic import atomic_path

__all__ = ["STATE_JSON", "STATE_TENSORS", "latest_checkpoint", "load_train_state", "load_weights_into",
           "save_train_state"]

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def _rng_states() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            tensors[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(i)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, py_state, gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(py_state, dtype=torch.int64)
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, gauss]}
    return tensors, meta


def _set_rng_states(tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    for key, value in tensors.items():
        if key.startswith("rng.cuda.") and torch.cuda.is_available():
            i = int(key.rsplit(".", 1)[1])
            if i < torch.cuda.device_count():
                torch.cuda.set_rng_state(value, i)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng.python"].tolist()), gauss))


def save_train_state(folder: Path, optimizer, scheduler, scaler, record: dict) -> None:
    """Optimiser/scheduler/scaler/RNG state as safetensors + JSON; the JSON is written last."""
    from safetensors.torch import save_file

    tensors, rng_meta = _rng_states()
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = {
        "format": 1,
        "xt_slide_version": __version__,
        **record,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": sched,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_meta,
    }
    with atomic_path(folder / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "napari-xt-train-state"})
    with atomic_path(folder / STATE_JSON) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_train_state(folder: Path, optimizer, scheduler, scaler, device: torch.device) -> dict:
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / STATE_TENSORS))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = meta["optimizer"]["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    _set_rng_states(tensors, meta["rng"])
    return meta


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The last complete ``epoch-XXX`` folder of a run (its train_state.json written), or None."""
    folders = sorted(Path(out_dir).glob("epoch-[0-9][0-9][0-9]*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [f for f in folders if (f / STATE_JSON).is_file() and (f / WEIGHTS_NAME).is_file()]
    return complete[-1] if complete else None


def load_weights_into(model: XTModel, folder: Path) -> None:
    """An epoch folder's model weights into ``model`` (strict), for resuming."""
    from safetensors.torch import load_file

    state = load_file(str(folder / WEIGHTS_NAME))
    model.load_state_dict(state, strict=True)
