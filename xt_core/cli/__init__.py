"""The ``xt-slide`` command line: one module per command, shared options in ``_options``.

Each command is one call into xt_core that a lab script can make too.
"""
