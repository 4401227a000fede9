"""Context encoders: long-sequence models over region tokens, one registry, one API.

``create_context_encoder(name, dim=..., ...)`` builds any of them; see ``base.py``.
"""

from xt_core.models.context import attention, hyper, mamba, none, transformer_xl  # noqa: F401  (registers)
from xt_core.models.context.base import CONTEXT_ENCODERS, ContextEncoder, create_context_encoder

__all__ = ["CONTEXT_ENCODERS", "ContextEncoder", "create_context_encoder"]
