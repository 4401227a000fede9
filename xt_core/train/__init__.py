"""Training and evaluation of xT models on a lab's own slides.

``fit(config)`` is the one entry point (CLI: ``xt-slide train CONFIG``); ``evaluate(model,
manifest)`` gives the same metrics on any manifest (``xt-slide evaluate``). The pieces:

* :mod:`~xt_core.train.manifest`     the CSV manifest of slides, labels, annotations, splits
* :mod:`~xt_core.train.annotations`  GeoJSON polygons or mask images -> token-grid targets
* :mod:`~xt_core.train.augment`      region-level flips, rotations, colour and HED jitter
* :mod:`~xt_core.train.streaming`    the bounded-memory exact-gradient step of one slide
* :mod:`~xt_core.train.features`     the frozen-encoder feature cache
* :mod:`~xt_core.train.metrics`      accuracy, balanced accuracy, macro F1, AUC, confusion
* :mod:`~xt_core.train.loop`         fit(): set-up, epochs, schedule, AMP, resume, metrics.jsonl
* :mod:`~xt_core.train.checkpoints`  optimiser, schedule and RNG states of an epoch folder
* :mod:`~xt_core.train.config`       TrainConfig (keys documented in loop.py)
"""

from xt_core.train.augment import AugmentConfig
from xt_core.train.config import TrainConfig, load_train_config
from xt_core.train.evaluate import evaluate
from xt_core.train.loop import FitResult, fit
from xt_core.train.manifest import Manifest, ManifestError, ManifestRow, read_manifest, write_manifest
from xt_core.train.streaming import LossWeights, SlideTargets, StepResult, train_step

__all__ = [
    "AugmentConfig",
    "FitResult",
    "LossWeights",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "SlideTargets",
    "StepResult",
    "TrainConfig",
    "evaluate",
    "fit",
    "load_train_config",
    "read_manifest",
    "train_step",
    "write_manifest",
]
