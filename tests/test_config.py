"""PoolConfig: defaults, validation, presets, ``replace``, ``open_pool`` overrides, sizing."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest

import trio_pool
from trio_pool import PoolConfig, recommended_max_size

TIME_FIELDS = ("max_idle_time", "connection_timeout", "health_check_interval")
OPTIONAL_TIME_FIELDS = ("max_lifetime", "leak_detection_threshold")


def kwargs(field: str, value: object) -> dict[str, Any]:
    return {field: value}


def test_defaults() -> None:
    config = PoolConfig()
    assert config.max_size == 100
    assert config.min_size == 0
    assert config.max_idle_time == 90.0
    assert config.connection_timeout == 5.0
    assert config.health_check_interval == 30.0
    assert config.acquire_timeout == 30.0
    assert config.max_lifetime is None
    assert config.max_total is None
    assert config.leak_detection_threshold is None


def test_frozen() -> None:
    config = PoolConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_size = 5  # type: ignore[misc]
    assert config.max_size == 100


def test_equal_configs_compare_equal_and_hash() -> None:
    assert PoolConfig(max_size=7) == PoolConfig(max_size=7)
    assert PoolConfig(max_size=7) != PoolConfig(max_size=8)
    assert hash(PoolConfig(max_size=7)) == hash(PoolConfig(max_size=7))


@pytest.mark.parametrize("value", [0, -1])
def test_max_size_must_be_positive(value: int) -> None:
    with pytest.raises(ValueError, match="max_size"):
        PoolConfig(max_size=value)


@pytest.mark.parametrize("value", ["10", 10.0, True, None])
def test_max_size_must_be_int(value: object) -> None:
    with pytest.raises(TypeError, match="max_size"):
        PoolConfig(max_size=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("min_size", "max_size"), [(-1, 10), (11, 10), (2, 1)])
def test_min_size_range(min_size: int, max_size: int) -> None:
    with pytest.raises(ValueError, match="min_size"):
        PoolConfig(min_size=min_size, max_size=max_size)


def test_min_size_bounds_are_inclusive() -> None:
    assert PoolConfig(min_size=0, max_size=1).min_size == 0
    assert PoolConfig(min_size=10, max_size=10).min_size == 10


@pytest.mark.parametrize("value", ["1", 1.5, False, None])
def test_min_size_must_be_int(value: object) -> None:
    with pytest.raises(TypeError, match="min_size"):
        PoolConfig(min_size=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", TIME_FIELDS + OPTIONAL_TIME_FIELDS)
@pytest.mark.parametrize("value", [0, 0.0, -1.0, -math.inf, math.nan])
def test_times_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PoolConfig(**kwargs(field, value))


@pytest.mark.parametrize("field", TIME_FIELDS + OPTIONAL_TIME_FIELDS)
@pytest.mark.parametrize("value", ["5", True, [1.0]])
def test_times_must_be_numbers(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        PoolConfig(**kwargs(field, value))


@pytest.mark.parametrize("field", TIME_FIELDS)
def test_required_times_reject_none(field: str) -> None:
    with pytest.raises(TypeError, match=field):
        PoolConfig(**kwargs(field, None))


@pytest.mark.parametrize("field", TIME_FIELDS + OPTIONAL_TIME_FIELDS)
def test_times_accept_int_and_float(field: str) -> None:
    assert getattr(PoolConfig(**kwargs(field, 2)), field) == 2
    assert getattr(PoolConfig(**kwargs(field, 0.25)), field) == 0.25


@pytest.mark.parametrize("field", OPTIONAL_TIME_FIELDS)
def test_optional_times_accept_none(field: str) -> None:
    assert getattr(PoolConfig(**kwargs(field, None)), field) is None


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 30, None])
def test_acquire_timeout_accepts_zero_and_none(value: float | None) -> None:
    assert PoolConfig(acquire_timeout=value).acquire_timeout == value


@pytest.mark.parametrize("value", [-0.001, -1, math.nan])
def test_acquire_timeout_range(value: float) -> None:
    with pytest.raises(ValueError, match="acquire_timeout"):
        PoolConfig(acquire_timeout=value)


@pytest.mark.parametrize("value", ["1", True])
def test_acquire_timeout_type(value: object) -> None:
    with pytest.raises(TypeError, match="acquire_timeout"):
        PoolConfig(acquire_timeout=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -5])
def test_max_total_range(value: int) -> None:
    with pytest.raises(ValueError, match="max_total"):
        PoolConfig(max_total=value)


@pytest.mark.parametrize("value", ["5", 5.0, True])
def test_max_total_type(value: object) -> None:
    with pytest.raises(TypeError, match="max_total"):
        PoolConfig(max_total=value)  # type: ignore[arg-type]


def test_high_traffic_preset() -> None:
    config = PoolConfig.high_traffic()
    assert (config.max_size, config.min_size) == (500, 50)
    assert (config.max_idle_time, config.connection_timeout) == (120.0, 3.0)
    # everything else stays at the defaults
    assert config.health_check_interval == 30.0
    assert config.acquire_timeout == 30.0


def test_low_latency_preset() -> None:
    config = PoolConfig.low_latency()
    assert (config.max_size, config.min_size) == (200, 20)
    assert (config.max_idle_time, config.connection_timeout) == (60.0, 1.0)
    assert config.health_check_interval == 10.0
    assert config.acquire_timeout == 30.0


def test_resource_constrained_preset() -> None:
    config = PoolConfig.resource_constrained()
    assert (config.max_size, config.min_size) == (20, 0)
    assert (config.max_idle_time, config.connection_timeout) == (30.0, 10.0)
    assert config.health_check_interval == 30.0


def test_presets_take_overrides() -> None:
    config = PoolConfig.high_traffic(acquire_timeout=None, min_size=10)
    assert (config.max_size, config.min_size, config.acquire_timeout) == (500, 10, None)
    with pytest.raises(TypeError, match="bogus"):
        PoolConfig.low_latency(bogus=1)
    with pytest.raises(ValueError, match="min_size"):
        PoolConfig.resource_constrained(min_size=21)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (
            lambda: PoolConfig.low_latency(max_size=5),
            r"min_size=20 from the PoolConfig\.low_latency",
        ),
        (
            lambda: PoolConfig.low_latency(min_size=300),
            r"max_size=200 from the PoolConfig\.low_lat",
        ),
        (
            lambda: PoolConfig.high_traffic(max_size=10),
            r"min_size=50 from the PoolConfig\.high_tra",
        ),
        (
            lambda: PoolConfig.resource_constrained(min_size=21),
            r"max_size=20 from the PoolConfig\.resource_constrained\(\) preset, min_size=21"
            r" from the keyword argument; override max_size as well",
        ),
    ],
)
def test_preset_errors_say_which_values_came_from_the_preset(
    make: Callable[[], PoolConfig], named: str
) -> None:
    with pytest.raises(ValueError, match=named) as info:
        make()
    assert str(info.value).startswith("min_size must be between 0 and max_size")


def test_preset_errors_about_the_callers_values_alone_are_unchanged() -> None:
    with pytest.raises(ValueError, match=r"^max_size must be >= 1, got 0$"):
        PoolConfig.high_traffic(max_size=0)
    with pytest.raises(ValueError, match=r"^min_size must be between 0 and max_size \(5\), got 9$"):
        PoolConfig.low_latency(max_size=5, min_size=9)


def test_replace() -> None:
    base = PoolConfig()
    changed = base.replace(max_size=3, acquire_timeout=None)
    assert (changed.max_size, changed.acquire_timeout) == (3, None)
    assert changed.connection_timeout == base.connection_timeout
    assert base.max_size == 100  # the original is untouched


def test_replace_validates_again() -> None:
    with pytest.raises(ValueError, match="max_size"):
        PoolConfig().replace(max_size=0)
    with pytest.raises(ValueError, match="min_size"):
        PoolConfig(min_size=5, max_size=10).replace(max_size=4)


def test_replace_unknown_field() -> None:
    with pytest.raises(TypeError, match="max_sise"):
        PoolConfig().replace(max_sise=3)


async def test_open_pool_overrides() -> None:
    async with trio_pool.open_pool(max_size=3, acquire_timeout=None) as pool:
        assert pool.config == PoolConfig(max_size=3, acquire_timeout=None)


async def test_open_pool_overrides_apply_over_config() -> None:
    async with trio_pool.open_pool(PoolConfig.low_latency(), min_size=1) as pool:
        assert pool.config == PoolConfig.low_latency().replace(min_size=1)
    async with trio_pool.open_pool(config=PoolConfig(max_size=2)) as pool:
        assert pool.config.max_size == 2


async def test_open_pool_error_says_which_value_came_from_the_preset() -> None:
    """``open_pool(PoolConfig.high_traffic(), max_size=5)``: the 50 is the preset's."""
    with pytest.raises(ValueError) as info:
        async with trio_pool.open_pool(PoolConfig.high_traffic(), max_size=5):
            pytest.fail("the pool must not open")  # pragma: no cover
    assert str(info.value) == (
        "min_size must be between 0 and max_size (5), got 50 (min_size=50 from the"
        " PoolConfig.high_traffic() preset, max_size=5 from the keyword argument;"
        " override min_size as well)"
    )


@pytest.mark.parametrize(
    ("make", "origin"),
    [
        (
            lambda: PoolConfig.low_latency(acquire_timeout=None).replace(max_size=5),
            "min_size=20 from the PoolConfig.low_latency() preset",
        ),
        (lambda: PoolConfig(min_size=8).replace(max_size=5), "min_size=8 from the config"),
        (lambda: PoolConfig().replace(min_size=101), "max_size=100 from the config"),
    ],
)
def test_replace_errors_say_which_value_came_from_where(
    make: Callable[[], PoolConfig], origin: str
) -> None:
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert message.startswith("min_size must be between 0 and max_size")
    assert f"({origin}, " in message
    assert " from the keyword argument; override " in message


async def test_open_pool_without_config_names_the_default() -> None:
    with pytest.raises(ValueError) as info:
        async with trio_pool.open_pool(min_size=101):
            pytest.fail("the pool must not open")  # pragma: no cover
    assert "(max_size=100 from PoolConfig's defaults, min_size=101 from the keyword" in str(
        info.value
    )


async def test_open_pool_unknown_override() -> None:
    with pytest.raises(TypeError, match="no_such_field"):
        async with trio_pool.open_pool(no_such_field=1):
            pytest.fail("the pool must not open")  # pragma: no cover


async def test_open_pool_bad_override_value() -> None:
    with pytest.raises(ValueError, match="max_size"):
        async with trio_pool.open_pool(max_size=0):
            pytest.fail("the pool must not open")  # pragma: no cover


async def test_open_pool_bad_config_type() -> None:
    with pytest.raises(TypeError, match="config"):
        async with trio_pool.open_pool({"max_size": 3}):  # type: ignore[arg-type]
            pytest.fail("the pool must not open")  # pragma: no cover


@pytest.mark.parametrize(
    ("peak_rps", "avg_response_time", "expected"),
    [
        (100, 0.05, 5),
        (1000, 0.1, 100),  # 100.00000000000001 in floats: must not round up to 101
        (10, 0.25, 3),  # 2.5 in use on average: ceil
        (0.1, 0.1, 1),  # at least one
        (0, 5.0, 1),
        (5, 0, 1),
        (2000, 0.02, 40),
        (3, 1, 3),
    ],
)
def test_recommended_max_size(peak_rps: float, avg_response_time: float, expected: int) -> None:
    size = recommended_max_size(peak_rps, avg_response_time)
    assert size == expected
    assert isinstance(size, int)


def test_recommended_max_size_fits_pool_config() -> None:
    assert PoolConfig(max_size=recommended_max_size(0, 0)).max_size == 1


@pytest.mark.parametrize(
    ("peak_rps", "avg_response_time", "field"),
    [
        (-1, 0.1, "peak_rps"),
        (math.inf, 0.1, "peak_rps"),
        (math.nan, 0.1, "peak_rps"),
        (10, -0.1, "avg_response_time"),
        (10, math.inf, "avg_response_time"),
        (10, math.nan, "avg_response_time"),
    ],
)
def test_recommended_max_size_bad_values(
    peak_rps: float, avg_response_time: float, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        recommended_max_size(peak_rps, avg_response_time)


@pytest.mark.parametrize(
    ("peak_rps", "avg_response_time", "field"),
    [("10", 0.1, "peak_rps"), (True, 0.1, "peak_rps"), (10, None, "avg_response_time")],
)
def test_recommended_max_size_bad_types(
    peak_rps: object, avg_response_time: object, field: str
) -> None:
    with pytest.raises(TypeError, match=field):
        recommended_max_size(peak_rps, avg_response_time)  # type: ignore[arg-type]


def test_hand_off_and_waiting_defaults() -> None:
    config = PoolConfig()
    assert config.max_connecting == 64
    assert config.max_waiters is None
    assert PoolConfig(max_connecting=None).max_connecting is None  # tied connects
    assert PoolConfig(max_waiters=0).max_waiters == 0


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_connecting", 0, ValueError),
        ("max_connecting", -1, ValueError),
        ("max_connecting", 1.5, TypeError),
        ("max_connecting", True, TypeError),
        ("max_waiters", -1, ValueError),
        ("max_waiters", "3", TypeError),
    ],
)
def test_hand_off_and_waiting_fields_are_checked(
    field: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=field):
        PoolConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1.0, "1", True])
async def test_connect_timeout_argument_is_checked(value: object) -> None:
    import trio_pool

    async with trio_pool.open_pool() as pool:
        for acquire in (pool.acquire, pool.acquire_tls, pool.acquire_new):
            with pytest.raises((TypeError, ValueError), match="connect_timeout"):
                await acquire("127.0.0.1", 1, connect_timeout=value)  # type: ignore[arg-type]
        assert pool.statistics() == trio_pool.PoolStatistics()
