"""Objects that cannot be half-made: a class whose instances only its own factory makes.

trio's pattern (its own helper is private, so this is ours): calling the class
raises TypeError; the factory, which does the set-up that makes an instance
whole (an opened journal, an accepted handshake), builds it with ``_create``.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass: ``Cls(...)`` raises TypeError; ``Cls._create(...)`` builds one."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__qualname__} has no public constructor; use its factory")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]
