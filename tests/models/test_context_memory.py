"""Context encoders at inference over 100,000 tokens on the CPU: memory linear in the token
count with a small constant (no L x L anywhere), each measured in a fresh process.

Slow (a fresh Python with torch per measurement, ~20 s in all): ``pytest -m slow``.
"""

from __future__ import annotations

import pytest
from xt_bench.context import inference_memory

#: Working memory beyond the input may be this many times the input sequence's own size
#: (the output is one, Mamba's reversed copy for its backward layers another; HyperAttention
#: keeps queries, keys, values and sort orders of every token), plus a constant for the
#: segment / query-chunk working set. Measured at 100k tokens of width 96 (37 MiB):
#: transformer_xl 50 MiB, mamba 125 MiB, hyper 421 MiB.
PER_SEQUENCE = {"transformer_xl": 2, "mamba": 3, "hyper": 10}
CONSTANT_MIB = 150


@pytest.mark.slow
@pytest.mark.parametrize("name", ["transformer_xl", "mamba", "hyper"])
def test_inference_memory_at_100k_tokens_is_linear_with_a_small_constant(name: str) -> None:
    small, large = inference_memory(name, 25_000), inference_memory(name, 100_000)
    k = PER_SEQUENCE[name]
    assert large["working_mib"] < k * large["sequence_mib"] + CONSTANT_MIB, large
    # Linear: 4x the tokens adds at most k x the added sequence (an L x L term would add 16x).
    added = large["working_mib"] - small["working_mib"]
    assert added < k * (large["sequence_mib"] - small["sequence_mib"]) + 32, (small, large)
