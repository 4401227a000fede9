"""npe2 sample data: the CMU-1-Small-Region slide (fetched once and cached by xt_core.sample_data)."""

from __future__ import annotations

from napari_xt._reader import LayerData, slide_layer_data


def make_sample_slide() -> list[LayerData]:
    """CMU-1-Small-Region.svs as a lazy multiscale RGB layer, like File > Open would give."""
    from xt_core.sample_data import sample_slide_path
    from xt_core.slide import open_slide

    return [slide_layer_data(open_slide(sample_slide_path()))]
