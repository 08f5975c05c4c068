"""Small helpers shared by the modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar

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


class AsyncWithOnly:
    """Base of async context managers that users may forget to ``async with``.

    Awaiting one, entering it with ``with``, or reaching for an attribute of what it
    yields (``conn.send_all`` on the manager) raise an error that says what to write,
    as trio's ``open_nursery()`` does. Hidden from type checkers, which flag these
    mistakes themselves.
    """

    __slots__ = ()

    #: The statement to write, e.g. ``"async with pool.connection(...) as conn"``.
    _usage: ClassVar[str]
    #: The type of what ``async with`` yields (its attributes get the hint).
    _yields: ClassVar[type]

    if not TYPE_CHECKING:

        def __await__(self) -> NoReturn:
            raise TypeError(
                f"{self._call()} cannot be awaited: it returns an async context manager;"
                f" write '{self._usage}:'"
            )

        def __enter__(self) -> NoReturn:
            raise TypeError(
                f"use '{self._usage}:', not 'with {self._call()}' (an async context manager)"
            )

        def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
            return None

        def __getattr__(self, name: str) -> NoReturn:
            message = f"{type(self).__name__!r} object has no attribute {name!r}"
            if not name.startswith("_") and hasattr(self._yields, name):
                variable = self._usage.rpartition(" as ")[2]
                message += (
                    f": {self._call()} returns an async context manager that lends a"
                    f" {self._yields.__name__}; write '{self._usage}:' and use"
                    f" {variable}.{name}"
                )
            raise AttributeError(message)

    def _call(self) -> str:
        """The call of the usage, ``pool.connection(...)``."""
        return self._usage.removeprefix("async with ").rpartition(" as ")[0]
