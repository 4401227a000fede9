"""A small name -> constructor registry, in the manner of timm's ``create_model``.

Region encoders, context encoders and heads each keep one :class:`Registry`, so that a
config file can name a component by string and every component of a kind is built the
same way: ``REGISTRY.create(name, **kwargs)``.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to constructors for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``fn`` (a class or factory) under ``name``."""

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return decorator

    def create(self, name: str, **kwargs) -> T:
        """Build the component registered as ``name`` with ``kwargs``."""
        try:
            factory = self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None
        return factory(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
