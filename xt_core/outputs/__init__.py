"""Everything written to disk: records, images, heatmaps. Always atomically (temp name, rename)."""

from xt_core.outputs.atomic import atomic_path, write_json
from xt_core.outputs.preview import save_png, tissue_overlay

__all__ = ["atomic_path", "save_png", "tissue_overlay", "write_json"]
