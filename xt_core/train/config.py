"""TrainConfig: one training run, from a YAML or JSON file or a dict.

Relative paths in a config file (``manifest``, ``out_dir``, ``model`` when it is a path,
``region_weights`` when it names a file, ``feature_cache``) resolve against the file's folder.
``region_weights`` is a weights spec, read by :mod:`xt_core.models.weights` alone (``package``,
a ``.safetensors`` file, or null); this module only tells a file from the other kinds.
Unknown keys are an error. The keys are documented in :mod:`xt_core.train.loop`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from xt_core._paths import read_user_text, resolve_path
from xt_core.errors import PathError
from xt_core.models.weights import parse_weights_spec
from xt_core.train.augment import AugmentConfig

__all__ = ["ConfigError", "MODES", "TrainConfig", "load_train_config"]

MODES = ("exact", "xl_detached", "frozen")
AMP_CHOICES = ("auto", "bf16", "fp16", "none")
_PATH_KEYS = ("manifest", "out_dir", "feature_cache")


class ConfigError(PathError):
    """A training config that cannot be used."""


@dataclass
class TrainConfig:
    """Everything one training run needs. See :mod:`xt_core.train.loop` for each key."""

    model: dict[str, Any] | str
    manifest: str
    out_dir: str
    region_weights: str | None = None
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int | None = None
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    grad_clip: float | None = 5.0
    batch_size: int = 8
    workers: int = 2
    slides_per_step: int = 1
    mode: str = "exact"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    deterministic: bool = True
    freeze_bn: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    classification_weight: float = 1.0
    segmentation_weight: float = 1.0
    label_smoothing: float = 0.0
    train_split: str = "train"
    val_split: str | None = "val"
    monitor: str = "val_balanced_accuracy"
    tissue_threshold: float | None = None
    annotation_class_map: dict[str, str | None] | None = None
    annotation_min_coverage: float = 0.5
    annotation_oversample: int = 4
    feature_cache: str | None = None
    frozen_views: int = 1
    keep_checkpoints: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self._coerce_numbers()
        if isinstance(self.augment, (Mapping, bool)) or self.augment is None:
            self.augment = AugmentConfig.from_dict(self.augment)  # type: ignore[arg-type]
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.amp not in AMP_CHOICES:
            problems.append(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            problems.append(f"workers must be >= 0, got {self.workers}")
        if self.slides_per_step < 1:
            problems.append(f"slides_per_step must be >= 1, got {self.slides_per_step}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.classification_weight < 0 or self.segmentation_weight < 0:
            problems.append("loss weights must be >= 0")
        if self.classification_weight == 0 and self.segmentation_weight == 0:
            problems.append("classification_weight and segmentation_weight are both 0: nothing to learn")
        if self.frozen_views < 1:
            problems.append(f"frozen_views must be >= 1, got {self.frozen_views}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be >= 1 or null, got {self.keep_checkpoints}")
        if not isinstance(self.model, (str, dict)):
            problems.append("model must be an XTConfig mapping or the path of a checkpoint to fine-tune")
        if problems:
            raise ValueError("; ".join(problems))

    def _coerce_numbers(self) -> None:
        """YAML 1.1 reads ``1e-4`` (no dot) as a string: numbers given as text become numbers."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or f.name == "model":
                continue
            kind = str(f.type)
            try:
                if "float" in kind:
                    setattr(self, f.name, float(value))
                elif kind.startswith("int"):
                    setattr(self, f.name, int(value))
            except ValueError:
                raise ValueError(f"{f.name} must be a number, got {value!r}") from None

    def error(self, reason: str) -> ConfigError:
        """A :class:`ConfigError` naming the config file (or, for a config built in code, out_dir)."""
        return ConfigError(getattr(self, "source", None) or self.out_dir, reason)

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: str | os.PathLike | None = None) -> "TrainConfig":
        """Build from a mapping; relative paths resolve against ``base`` (a folder) when given."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        missing = [k for k in ("model", "manifest", "out_dir") if data.get(k) in (None, "")]
        if missing:
            raise ValueError(f"the training config needs {', '.join(missing)}")
        values = dict(data)
        if base is not None:
            base = Path(base)
            for key in _PATH_KEYS:
                if values.get(key):
                    values[key] = str(resolve_path(base, str(values[key])))
            if isinstance(values.get("model"), str):
                values["model"] = str(resolve_path(base, values["model"]))
            rw = values.get("region_weights")
            if isinstance(rw, str) and parse_weights_spec(rw).is_file:
                values["region_weights"] = str(resolve_path(base, rw))
        return cls(**values)

    def with_overrides(self, **changes: Any) -> "TrainConfig":
        d = self.to_dict()
        d.update(changes)
        return TrainConfig.from_dict(d)


def load_train_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file; ``overrides`` replace top-level keys."""
    path = Path(path)
    text = read_user_text(path, ConfigError, "training config")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise their own types
        raise ConfigError(path, f"not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                                f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "the config must be a mapping of keys to values")
    data.update(overrides or {})
    try:
        cfg = TrainConfig.from_dict(data, base=path.parent)
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, str(exc)) from None
    cfg.source = str(path)  # not a config key: where errors found later point to
    return cfg
