"""Kubernetes quantities (melange2.resources): the forms Kubernetes documents, rounding
up as it rounds requests, clear errors, and exact formatting round trips."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from melange2.resources import (
    MAX_CPU_MILLIS,
    MAX_MEMORY_BYTES,
    QuantityError,
    cpu_millis,
    format_cpu,
    format_memory,
    memory_bytes,
    parse_quantity,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # the examples of Kubernetes' "Resource Management for Pods and Containers"
        ("128974848", Decimal(128974848)),
        ("129e6", Decimal(129_000_000)),
        ("129M", Decimal(129_000_000)),
        ("128974848000m", Decimal(128974848)),
        ("123Mi", Decimal(123 * 2**20)),
        ("0.5", Decimal("0.5")),
        ("100m", Decimal("0.1")),
        (".5", Decimal("0.5")),
        ("+2", Decimal(2)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("1E", Decimal(10**18)),
        ("1E3", Decimal(1000)),
        ("5e-3", Decimal("0.005")),
        ("2n", Decimal("0.000000002")),
        ("3u", Decimal("0.000003")),
        ("4k", Decimal(4000)),
        ("1Ei", Decimal(2**60)),
        (" 16Gi ", Decimal(16 * 2**30)),
    ],
)
def test_quantities_as_kubernetes_reads_them(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "16 Gi", "16GB", "16K", "1.2.3", "0x10", "four", "1e"])
def test_what_is_not_a_quantity_is_refused_with_examples(text: str) -> None:
    with pytest.raises(QuantityError, match=r"is not a quantity \(use e\.g\. 4, 500m"):
        parse_quantity(text)


def test_cpu_in_millicores_rounded_up() -> None:
    assert cpu_millis("4") == 4000
    assert cpu_millis(4) == 4000
    assert cpu_millis(1.5) == 1500
    assert cpu_millis("250m") == 250
    assert cpu_millis("0.0001") == 1  # Kubernetes' precision is 1m, rounded up
    assert cpu_millis("0") == 0


def test_memory_in_bytes_rounded_up() -> None:
    assert memory_bytes("16Gi") == 16 * 2**30
    assert memory_bytes("16G") == 16 * 10**9
    assert memory_bytes("1500m") == 2
    assert memory_bytes(1024) == 1024


@pytest.mark.parametrize(
    ("call", "value", "needle"),
    [
        (cpu_millis, "-1", "must not be negative"),
        (memory_bytes, "-1Gi", "must not be negative"),
        (cpu_millis, "2e6", "more than the farm can keep"),
        (memory_bytes, "8Ei", "more than the farm can keep"),
        (memory_bytes, "1e99", "exponent 99 is out of range"),
        (cpu_millis, True, "as a string or number"),
        (cpu_millis, ["4"], "as a string or number"),
        (cpu_millis, float("nan"), "is not a quantity"),
    ],
)
def test_amounts_out_of_range_are_refused(call: object, value: object, needle: str) -> None:
    with pytest.raises(QuantityError, match=needle):
        call(value)  # type: ignore[operator]


def test_formatting_is_short_and_exact() -> None:
    assert format_cpu(4000) == "4"
    assert format_cpu(1500) == "1500m"
    assert format_cpu(0) == "0"
    assert format_memory(16 * 2**30) == "16Gi"
    assert format_memory(8 * 10**9) == "8G"
    assert format_memory(1536 * 2**20) == "1536Mi"
    assert format_memory(1000) == "1k"
    assert format_memory(1024) == "1Ki"
    assert format_memory(1023) == "1023"
    assert format_memory(0) == "0"


@given(st.integers(min_value=0, max_value=MAX_CPU_MILLIS))
def test_cpu_formatting_round_trips(millis: int) -> None:
    assert cpu_millis(format_cpu(millis)) == millis


@given(st.integers(min_value=0, max_value=MAX_MEMORY_BYTES))
def test_memory_formatting_round_trips(amount: int) -> None:
    assert memory_bytes(format_memory(amount)) == amount
