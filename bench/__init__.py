"""xt_bench: the benchmarks behind ``xt-slide bench`` and the README's figures (installed from ``bench/``).

Kept out of the engine (``xt_core``): they measure it, print figures, and are never asserted
in tests. ``reading`` (regions read and decoded per second), ``model`` (end to end against
the encoder alone), ``memory`` (peak memory against slide size, a fresh process per size),
``slides`` (generated pyramids of real tiles), ``context`` (context encoders at whole-slide
length: the selective scan, HyperAttention against exact attention, memory at inference and
in a training step), ``context_task`` (the clustered-vs-scattered slide task that only
context solves: which context encoder and which positions work). The ``run_*.py`` scripts beside them
regenerate the README's tables (``make bench``).
"""
