"""Region batches: same order and pixels for any worker count, bounded read-ahead."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xt_core import open_slide, stream
from xt_core.stream import iter_region_batches
from xt_core.tokenize import make_region_grid


@pytest.fixture(scope="module")
def slide_and_grid(slides_dir: Path):
    slide = open_slide(slides_dir / "CMU-1-Small-Region_pyramid.ome.tiff")  # tiffslide: per-thread handles
    grid = make_region_grid(slide, target_mpp=0.7, region_size=256, chunk_size=128)
    yield slide, grid
    slide.close()


def _collect(batches):
    indices, images = [], []
    for batch in batches:
        assert len(batch.indices) == len(batch.rows) == len(batch.images)
        indices.append(batch.indices)
        images.append(np.asarray(batch.images))
    return np.concatenate(indices), np.concatenate(images)


def test_same_batches_for_0_1_2_workers(slide_and_grid) -> None:
    slide, grid = slide_and_grid
    ref_idx, ref_img = _collect(iter_region_batches(slide, grid, batch_size=3, workers=0))
    assert list(ref_idx) == list(range(grid.n_regions))
    for i in (0, 5, grid.n_regions - 1):
        np.testing.assert_array_equal(ref_img[i], grid.read(slide, i))
    for workers in (1, 2):
        idx, img = _collect(iter_region_batches(slide, grid, batch_size=3, workers=workers))
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(img, ref_img)


def test_batch_boundaries_do_not_change_content(slide_and_grid) -> None:
    slide, grid = slide_and_grid
    _, one = _collect(iter_region_batches(slide, grid, batch_size=1, workers=2))
    _, sixteen = _collect(iter_region_batches(slide, grid, batch_size=16, workers=2))
    np.testing.assert_array_equal(one, sixteen)


def test_rows_cols_and_skipping_keep_grid_positions(slide_and_grid) -> None:
    slide, grid = slide_and_grid
    chosen = np.array([1, 4, 5, 11, grid.n_regions - 1])
    batches = list(iter_region_batches(slide, grid, batch_size=2, workers=2, indices=chosen))
    assert [len(b) for b in batches] == [2, 2, 1]
    idx = np.concatenate([b.indices for b in batches])
    rows = np.concatenate([b.rows for b in batches])
    cols = np.concatenate([b.cols for b in batches])
    np.testing.assert_array_equal(idx, chosen)
    np.testing.assert_array_equal(rows * grid.cols + cols, chosen)


def test_as_tensor_is_a_channels_last_view(slide_and_grid) -> None:
    import torch

    slide, grid = slide_and_grid
    batch = next(iter_region_batches(slide, grid, batch_size=4, workers=1, as_tensor=True))
    assert batch.images.shape == (4, 3, 256, 256) and batch.images.dtype == torch.uint8
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(batch.images[2].permute(1, 2, 0).numpy(), grid.read(slide, 2))


def test_read_ahead_is_bounded(slide_and_grid, monkeypatch) -> None:
    """However slow the consumer, at most ``prefetch`` batches are read ahead of it."""
    slide, grid = slide_and_grid
    started, consumed, worst = [0], [0], [0]
    lock = threading.Lock()
    real = stream._read_batch

    def counting(*args, **kwargs):
        with lock:
            started[0] += 1
            worst[0] = max(worst[0], started[0] - consumed[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "_read_batch", counting)
    for _ in iter_region_batches(slide, grid, batch_size=1, workers=2, prefetch=3):
        time.sleep(0.01)
        with lock:
            consumed[0] += 1
    assert started[0] == grid.n_regions
    assert worst[0] <= 3


def test_stopping_early_shuts_the_readers_down(slide_and_grid) -> None:
    slide, grid = slide_and_grid
    before = {t.name for t in threading.enumerate()}
    gen = iter_region_batches(slide, grid, batch_size=1, workers=2)
    next(gen)
    gen.close()
    leftover = [t for t in threading.enumerate() if t.name.startswith("xt-read") and t.name not in before]
    assert not leftover


def test_bad_arguments(slide_and_grid) -> None:
    slide, grid = slide_and_grid
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_region_batches(slide, grid, batch_size=0))
    with pytest.raises(ValueError, match="workers"):
        next(iter_region_batches(slide, grid, workers=-1))


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_readers_run_at_background_priority(slide_and_grid, monkeypatch) -> None:
    """Reader threads take only cores the model leaves idle (see xt_core.stream's docstring)."""
    slide, grid = slide_and_grid
    policies = []
    real = stream._read_batch

    def recording(*args, **kwargs):
        policies.append((threading.current_thread().name, os.sched_getscheduler(0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "_read_batch", recording)
    assert len(list(iter_region_batches(slide, grid, batch_size=4, workers=2))) > 1
    assert {policy for _, policy in policies} == {os.SCHED_IDLE}
    assert all(name.startswith("xt-read_") for name, _ in policies)
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the consumer's own priority is untouched


def test_starved_readers_move_to_normal_priority(slide_and_grid, monkeypatch) -> None:
    """Background readers that never get a core (every core busy elsewhere) do not stall the pass:
    after PATIENCE_S the batches are read at normal priority, same batches, same order."""
    slide, grid = slide_and_grid
    ref_idx, ref_img = _collect(iter_region_batches(slide, grid, batch_size=3, workers=0))
    readers = []
    real = stream._read_batch

    def recording(*args, **kwargs):
        readers.append(threading.current_thread().name)
        return real(*args, **kwargs)

    released = threading.Event()
    monkeypatch.setattr(stream, "_run_in_background", lambda: released.wait(timeout=1.0))  # starved
    monkeypatch.setattr(stream, "_read_batch", recording)
    try:
        idx, img = _collect(iter_region_batches(slide, grid, batch_size=3, workers=2))
    finally:
        released.set()
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(img, ref_img)
    consumer = threading.current_thread().name
    assert readers.count(consumer) == 1  # the late batch, read by the consumer itself
    assert len(readers) == -(-len(ref_idx) // 3) > 2  # each batch read once: none by a starved reader
    assert all(name.startswith("xt-read-now") for name in readers if name != consumer)


def test_readers_busy_with_a_slow_batch_are_waited_for(slide_and_grid, monkeypatch) -> None:
    """A batch that takes longer than PATIENCE_S to read is not starvation while its reader runs:
    no move to normal priority, every batch read once, by the background readers."""
    slide, grid = slide_and_grid
    readers = []
    real = stream._read_batch

    def slow(*args, **kwargs):
        readers.append(threading.current_thread().name)
        end = time.thread_time() + 2.5 * stream.PATIENCE_S  # CPU work, as a slow decode
        while time.thread_time() < end:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "_run_in_background", lambda: None)  # busy readers get a core however loaded the machine
    monkeypatch.setattr(stream, "_read_batch", slow)
    batches = list(iter_region_batches(slide, grid, batch_size=16, workers=1))
    assert len(readers) == len(batches) > 1
    assert all(name.startswith("xt-read_") for name in readers)
