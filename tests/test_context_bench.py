"""The context-encoder benchmarks (xt_bench.context): behaviour, never timing."""

from __future__ import annotations

import torch
from xt_bench.context import mamba_scan_inputs, previous_chunked_scan, scan_benchmark

from xt_core.models.context.selective_scan import selective_scan_reference


def test_the_baseline_scan_is_the_recurrence() -> None:
    """The benchmark's 'previous scan' baseline must compute the same thing as the loop."""
    inputs = {k: v.double() for k, v in mamba_scan_inputs(50, d_model=8, d_state=4).items()}
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    got = previous_chunked_scan(**inputs, delta_softplus=True, chunk_size=16)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_scan_benchmark_reports_every_scan() -> None:
    rows = scan_benchmark(length=64, d_model=8, repeats=1)
    assert [r["scan"] for r in rows] == ["sequential loop (reference)", "previous chunked scan (doubling)",
                                         "log-space chunked scan"]  # fmt: skip
    for row in rows:
        assert row["forward_s"] > 0 and row["forward_backward_s"] > 0 and row["saved_bytes_per_token"] > 0
        assert row["max_abs_diff"] < 1e-5
