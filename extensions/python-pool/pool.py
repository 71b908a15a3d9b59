"""Pricing and validation for a flat-rate self-hosted pool, independent of the bindings.

Kept apart from `app.py` so it runs under plain CPython for unit tests
(`python3 -m unittest discover extensions/python-pool`). Money is `decimal.Decimal`
throughout and leaves as a plain decimal string (`format(d, "f")`), never a float.
"""

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, ROUND_CEILING, localcontext
import json
import re

# Billing granularity: hundredths of a sandbox-hour (36 s), every started one counted.
# Hundredths keep `quantity x unit-price = amount` exact, which seconds / 3600 would not.
HOUR_STEP = Decimal("0.01")
MS_PER_STEP = 36_000

DEFAULTS = {
    "price_per_sandbox_hour": "0.05",
    "setup_fee": "0",
    "currency": "USD",
    "capacity": "4",
    "max_vcpus": "8",
    "max_memory_mib": "16384",
    "regions": "",
    "templates": "",
    "startup_latency_ms": "1500",
}

_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
HANDLE_VERSION = 1


class PoolError(Exception):
    """A failure mapped 1:1 onto the WIT `backend-error` variant by `app.py`."""

    def __init__(self, case: str, message: str):
        super().__init__(message)
        self.case = case
        self.message = message


def fmt(d: Decimal) -> str:
    """A decimal as the contract's string: digits, at most one '.', never an exponent."""
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"


@dataclass(frozen=True)
class Settings:
    """The pool's configuration, parsed once per call from `wasi:config/store` values."""

    price_per_sandbox_hour: Decimal
    setup_fee: Decimal
    currency: str
    capacity: int
    max_vcpus: int
    max_memory_mib: int
    regions: tuple
    templates: tuple
    startup_latency_ms: int

    @staticmethod
    def parse(values: dict) -> "Settings":
        """Build settings from config strings; a bad value is an `internal` error naming the key."""
        merged = dict(DEFAULTS)
        merged.update({k: v for k, v in values.items() if k in DEFAULTS})

        def money(key):
            raw = merged[key].strip()
            if not _DECIMAL.match(raw):
                raise PoolError("internal", f"config `{key}`: expected a decimal like 0.05, got {raw!r}")
            return Decimal(raw)

        def count(key, minimum):
            raw = merged[key].strip()
            if not raw.isdigit() or int(raw) < minimum:
                raise PoolError("internal", f"config `{key}`: expected an integer >= {minimum}, got {raw!r}")
            return int(raw)

        def names(key):
            return tuple(x.strip() for x in merged[key].split(",") if x.strip())

        currency = merged["currency"].strip()
        if not _CURRENCY.match(currency):
            raise PoolError("internal", f"config `currency`: expected a code like USD, got {currency!r}")
        return Settings(
            price_per_sandbox_hour=money("price_per_sandbox_hour"),
            setup_fee=money("setup_fee"),
            currency=currency,
            capacity=count("capacity", 0),
            max_vcpus=count("max_vcpus", 1),
            max_memory_mib=count("max_memory_mib", 1),
            regions=names("regions"),
            templates=names("templates"),
            startup_latency_ms=count("startup_latency_ms", 0),
        )


def validate(s: Settings, template, vcpus, memory_mib, gpu, max_duration_secs, region):
    """Reject what this pool cannot serve: `invalid-request` if malformed, `unsupported` if out of reach."""
    if not template:
        raise PoolError("invalid-request", "template must not be empty")
    if vcpus < 1:
        raise PoolError("invalid-request", f"resources.vcpus must be at least 1, got {vcpus}")
    if memory_mib < 1:
        raise PoolError("invalid-request", f"resources.memory-mib must be at least 1, got {memory_mib}")
    if max_duration_secs < 1:
        raise PoolError("invalid-request", "max-duration-secs must be at least 1, got 0")
    if gpu is not None:
        raise PoolError("unsupported", f"this pool has no GPUs (asked for {gpu!r})")
    if vcpus > s.max_vcpus:
        raise PoolError("unsupported", f"resources.vcpus {vcpus} exceeds the pool's largest machine ({s.max_vcpus})")
    if memory_mib > s.max_memory_mib:
        raise PoolError(
            "unsupported", f"resources.memory-mib {memory_mib} exceeds the pool's largest machine ({s.max_memory_mib})"
        )
    if region is not None and s.regions and region not in s.regions:
        raise PoolError("unsupported", f"region {region!r} is not one of {', '.join(s.regions)}")
    if s.templates and template not in s.templates:
        raise PoolError("unsupported", f"template {template!r} is not one of {', '.join(s.templates)}")


def billed_hours(duration_ms: int) -> Decimal:
    """Sandbox-hours billed for a lifetime: started hundredths of an hour."""
    steps = -(-duration_ms // MS_PER_STEP)  # ceiling division in integers
    return Decimal(steps) * HOUR_STEP


def price(s: Settings, duration_ms: int):
    """Line items and total for one sandbox over `duration_ms`, as (total, [items])."""
    with localcontext() as ctx:
        ctx.prec = 60  # far above 28 significant digits: no rounding can happen here
        ctx.traps[InvalidOperation] = True
        hours = billed_hours(duration_ms)
        items = [("Sandbox time (flat rate)", hours, "sandbox-hour", s.price_per_sandbox_hour,
                  hours * s.price_per_sandbox_hour)]
        if s.setup_fee > 0:
            items.append(("Setup fee", Decimal(1), "sandbox", s.setup_fee, s.setup_fee))
        total = sum((amount for *_, amount in items), Decimal(0))
    # The host accepts at most 28 significant digits: say so here rather than be rejected.
    if any(significant_digits(x) > 28 for item in items for x in item[1:] if isinstance(x, Decimal)) \
            or significant_digits(total) > 28:
        raise PoolError("invalid-request",
                        "the price needs more than 28 significant digits: duration or configured prices out of range")
    return total, items


def significant_digits(d: Decimal) -> int:
    """Digits of the contract string without leading zeros, e.g. 0.0250 -> 2 ("0.025")."""
    return len(fmt(d).replace(".", "").lstrip("0"))


def encode_handle(sandbox_id: str, vcpus: int, memory_mib: int, slot: int) -> str:
    """The opaque handle: everything later calls need, so the extension keeps no state."""
    return json.dumps({"v": HANDLE_VERSION, "id": sandbox_id, "vcpus": vcpus, "mem": memory_mib,
                       "slot": slot}, separators=(",", ":"), sort_keys=True)


def decode_handle(handle: str) -> dict:
    """Parse a handle from `encode_handle`; anything else is `not-found` (not one of ours)."""
    try:
        h = json.loads(handle)
    except ValueError:
        raise PoolError("not-found", "handle is not one this pool issued") from None
    if not isinstance(h, dict) or h.get("v") != HANDLE_VERSION or not isinstance(h.get("id"), str):
        raise PoolError("not-found", "handle is not one this pool issued")
    return h


def slot_for(sandbox_id: str, capacity: int) -> int:
    """A stable machine slot for a sandbox id (FNV-1a: deterministic across processes, unlike hash())."""
    h = 0xCBF29CE484222325
    for b in sandbox_id.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % max(capacity, 1)
