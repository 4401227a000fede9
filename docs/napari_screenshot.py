"""Regenerate docs/napari-widget.png: a real run of the bundled model on the sample slide, in napari.

    xvfb-run -s "-screen 0 1600x1000x24" .venv/bin/python docs/napari_screenshot.py [SLIDE]

SLIDE defaults to the sample slide (fetched and cached like File > Open Sample does). The
window is captured with the dock as a user sees it after the run, scaled down and reduced to
a palette so the PNG stays small.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "napari-widget.png"
WIDTH = 1400  # px of the saved image


def main() -> None:
    import napari
    import numpy as np
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    if len(sys.argv) > 1:
        slide = Path(sys.argv[1])
    else:
        from xt_core.sample_data import sample_slide_path

        slide = Path(sample_slide_path())
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(slide), plugin="napari-xt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-xt", "xT slide analysis")
    widget.start()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
    print(widget.status())
    viewer.reset_view()
    for _ in range(20):  # let the dock lay out its new text
        QApplication.processEvents()
        time.sleep(0.01)
    viewer.screenshot(canvas_only=False, flash=False)  # the first render after a change may be stale
    shot = np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
    image = Image.fromarray(shot)
    image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(OUT, optimize=True)
    print(f"{OUT}: {OUT.stat().st_size // 1024} KB")
    viewer.close()


if __name__ == "__main__":
    main()
