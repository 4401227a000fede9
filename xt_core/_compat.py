"""Make ``import torchvision`` (and so ``import timm``) work where its compiled ops are absent.

The CPU reference stack pins torch 2.13.0 (CPU) with torchvision 0.28.0, which PyPI only
ships as a CUDA build: its ``_C`` extension does not load on a CPU torch, and then its
fake-tensor registrations for ``torchvision::nms``/``qnms`` fail with "operator
torchvision::nms does not exist", breaking the import. We need none of torchvision's
detection ops, only its import (timm imports it). So when, and only when, the real ops
fail to load, we define the two schemas (no kernels) and import again. Where torchvision
loads normally (a CUDA install, a matching CPU build) this does nothing at all.
"""

from __future__ import annotations

import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING_OP = "torchvision::nms does not exist"

#: "native" (torchvision imported on its own), "schemas" (we defined the op schemas),
#: "absent" (torchvision is not installed) or None (not yet checked).
torchvision_status: str | None = None
_library = None  # keeps the torch.library.Library alive, or the definitions vanish


def ensure_torchvision() -> str:
    """Import torchvision, repairing the missing-ops failure; returns :data:`torchvision_status`."""
    global torchvision_status
    if torchvision_status is not None:
        return torchvision_status
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
        torchvision_status = "absent"
    except RuntimeError as exc:
        if _MISSING_OP not in str(exc):
            raise
        _forget_partial_import()
        _define_schemas()
        import torchvision  # noqa: F401,F811

        torchvision_status = "schemas"
    else:
        torchvision_status = "native"
    return torchvision_status


def _forget_partial_import() -> None:
    """Drop the half-imported torchvision modules so the second import starts clean."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _define_schemas() -> None:
    global _library
    import torch

    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    for schema in _SCHEMAS.values():
        _library.define(schema)
