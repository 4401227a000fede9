"""The torchvision import repair: it repairs here, and does nothing where torchvision loads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env_path = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    prelude = f"import sys; sys.path[:0] = {env_path!r}\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_timm_imports_after_the_repair() -> None:
    proc = _run("""
        from xt_core._compat import ensure_torchvision
        status = ensure_torchvision()
        import timm, torch
        model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
        print(status, tuple(model(torch.zeros(1, 3, 64, 64)).shape))
    """)
    assert proc.returncode == 0, proc.stderr
    status, shape = proc.stdout.split(maxsplit=1)
    assert status in {"native", "schemas"}
    assert shape.strip() == "(1, 3)"


def test_nothing_is_defined_where_torchvision_imports_normally(tmp_path: Path) -> None:
    """A torchvision that imports on its own (as a CUDA install does) is left alone."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("LOADED = 'fake'\n")
    proc = _run("""
        import torch
        from xt_core import _compat
        print(_compat.ensure_torchvision(), _compat._library is None)
        try:
            torch.ops.torchvision.nms
            print("defined")
        except (AttributeError, RuntimeError):
            print("undefined")
    """, extra_path=tmp_path)
    # tmp_path comes after the repo on sys.path but before site-packages
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["native", "True", "undefined"]


def test_other_import_errors_are_not_swallowed(tmp_path: Path) -> None:
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('something else broke')\n")
    proc = _run("""
        from xt_core._compat import ensure_torchvision
        ensure_torchvision()
    """, extra_path=tmp_path)
    assert proc.returncode != 0 and "something else broke" in proc.stderr
