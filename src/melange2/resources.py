"""CPU and memory amounts as melange configs and backends write them: Kubernetes
quantities.

melange keeps ``package.resources`` (``cpu``, ``memory``, ``disk``, ``cpumodel``) as
strings and hands them to its runner; on Kubernetes they become the pod's requests,
parsed as ``resource.Quantity`` (``k8s.io/apimachinery``). The farm reads them the same
way, because it places packages by them:

``<number><suffix>``: a decimal number (``4``, ``1.5``, ``.5``, ``+2``) and one suffix,

* binary: ``Ki`` ``Mi`` ``Gi`` ``Ti`` ``Pi`` ``Ei`` (powers of 1024),
* decimal: ``n`` ``u`` ``m`` (milli), none, ``k`` ``M`` ``G`` ``T`` ``P`` ``E``,
* or an exponent: ``e3``, ``E-2``.

So ``cpu: "500m"`` is half a core and ``memory: 16Gi`` is 16 x 2^30 bytes, while
``16G`` is 16 x 10^9 (melange's QEMU runner reads ``16G`` as GiB; Kubernetes, and the
farm, do not). A CPU amount is kept in millicores and a memory amount in bytes, each
rounded up as Kubernetes rounds a request (``0.0001`` cpu is ``1m``), so sums and
comparisons are exact integers.

Hand-written rather than a dependency: the only Python implementation in the field is
``kubernetes.utils.parse_quantity`` inside the whole Kubernetes client (and its HTTP
stack); the grammar is the dozen lines below.
"""

from __future__ import annotations

import decimal
import math
import re
from decimal import Decimal
from typing import Final

__all__ = [
    "MAX_CPU_MILLIS",
    "MAX_MEMORY_BYTES",
    "QuantityError",
    "cpu_millis",
    "format_cpu",
    "format_memory",
    "memory_bytes",
    "parse_quantity",
]

_QUANTITY: Final = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE]?)$"
)
_BINARY: Final = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL: Final = {
    **{"n": -9, "u": -6, "m": -3, "": 0},
    **{"k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18},
}

#: a million cores: more than any machine; keeps millicores in a 32-bit column
MAX_CPU_MILLIS: Final = 10**9
#: 2^62 bytes (4 EiB): far beyond any machine, within a signed 64-bit column
MAX_MEMORY_BYTES: Final = 2**62


class QuantityError(ValueError):
    """Not a Kubernetes quantity, negative, or beyond what the farm keeps."""


def parse_quantity(text: str) -> Decimal:
    """The exact value of a quantity (``"1.5Gi"`` -> ``Decimal(1610612736)``).

    >>> parse_quantity("500m"), parse_quantity("2Ki"), parse_quantity("1e3")
    (Decimal('0.500'), Decimal('2048'), Decimal('1E+3'))
    """
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise QuantityError(f"{text!r} is not a quantity (use e.g. 4, 500m, 1.5, 16Gi, 512Mi, 8G)")
    suffix = match["suffix"]
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        ctx.traps[decimal.Overflow] = True
        number = Decimal(match["number"])
        if suffix in _BINARY:
            return number * (Decimal(1024) ** _BINARY[suffix])
        if suffix in _DECIMAL:
            return number.scaleb(_DECIMAL[suffix])
        exponent = int(suffix[1:])
        if abs(exponent) > 30:
            raise QuantityError(f"{text!r}: exponent {exponent} is out of range")
        return number.scaleb(exponent)


def _whole(text: object, scale: int, limit: int, what: str) -> int:
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise QuantityError(f"expected a {what} quantity as a string or number, got {text!r}")
    if isinstance(text, float) and not math.isfinite(text):
        raise QuantityError(f"{text!r} is not a quantity")
    value = parse_quantity(str(text)) * scale
    if value < 0:
        raise QuantityError(f"{text!r}: must not be negative")
    if value > limit:
        raise QuantityError(f"{text!r}: more than the farm can keep")
    return int(value.to_integral_value(rounding=decimal.ROUND_CEILING))


def cpu_millis(text: object) -> int:
    """A CPU amount in millicores, rounded up (``"2"`` -> 2000, ``"250m"`` -> 250)."""
    return _whole(text, 1000, MAX_CPU_MILLIS, "cpu")


def memory_bytes(text: object) -> int:
    """A memory amount in bytes, rounded up (``"1Gi"`` -> 1073741824, ``"1k"`` -> 1000)."""
    return _whole(text, 1, MAX_MEMORY_BYTES, "memory")


def format_cpu(millis: int) -> str:
    """Millicores as a quantity: ``4000`` -> ``"4"``, ``1500`` -> ``"1500m"``."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(amount: int) -> str:
    """Bytes as the shortest exact quantity: ``"16Gi"``, ``"8G"``, ``"1536Mi"``, ``"100"``."""
    if amount == 0:
        return "0"
    exact = [str(amount)]
    for suffix, power in _BINARY.items():
        if amount % 1024**power == 0:
            exact.append(f"{amount // 1024**power}{suffix}")
    for suffix in ("k", "M", "G", "T", "P", "E"):
        if amount % 10 ** _DECIMAL[suffix] == 0:
            exact.append(f"{amount // 10 ** _DECIMAL[suffix]}{suffix}")
    return min(reversed(exact), key=len)
