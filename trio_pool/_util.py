"""Small helpers shared by the modules."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


def check_int(name: str, value: object) -> int:
    """``value`` if it is an int (a bool is not), else ``TypeError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def check_timeout(name: str, value: object) -> None:
    """Check a wait in seconds: ``None`` (no limit) or a number >= 0 (``0`` fails fast)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0 or None, got {value!r}")


def check_connect_timeout(value: object) -> None:
    """Check a per-acquire ``connect_timeout``: a number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"connect_timeout must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"connect_timeout must be > 0 seconds, got {value!r}")


class NoPublicConstructor(type):
    """Metaclass for classes users get from a factory, never by calling the class
    (as trio does for its nursery and cancel status objects)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor;"
            " use trio_pool.open_pool()"
        )

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]
