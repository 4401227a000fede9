"""The training manifest is the shared one: :mod:`xt_core.manifest` (kept importable here)."""

from xt_core.manifest import Manifest, ManifestError, ManifestRow, normalize_split, read_manifest, write_manifest

__all__ = ["Manifest", "ManifestError", "ManifestRow", "normalize_split", "read_manifest", "write_manifest"]
