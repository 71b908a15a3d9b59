"""The API's answers as typed, immutable dataclasses (docs/api.md).

Money is always :class:`decimal.Decimal` parsed from the API's decimal strings, never a
float. Each dataclass that mirrors a large answer keeps the JSON it came from in ``raw``, so
fields the client does not model yet are still reachable.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Mapping

__all__ = [
    "Money",
    "LineItem",
    "Cost",
    "Measure",
    "Usage",
    "Meter",
    "SandboxStatus",
    "SandboxPage",
    "ExecResult",
    "Started",
    "OutputChunk",
    "Exit",
    "ExecEvent",
    "FileEntry",
    "FileWritten",
    "Balance",
    "Credits",
    "StatementEntry",
    "StatementPage",
    "Grant",
]

Json = Mapping[str, Any]

#: A sandbox's state as the API names it.
SandboxState = Literal["creating", "running", "destroying", "destroyed", "failed"]


def _dec(v: Any) -> Decimal:
    if isinstance(v, float):  # never produced by the API; refuse rather than round
        raise TypeError(f"money must be a decimal string, got the float {v!r}")
    return Decimal(str(v))


def _opt_dec(v: Any) -> Decimal | None:
    return None if v is None else _dec(v)


def _time(v: Any) -> datetime | None:
    if v is None:
        return None
    # The host writes RFC 3339 with 'Z' and up to nanoseconds; Python keeps microseconds.
    s = str(v).replace("Z", "+00:00")
    head, sep, rest = s.partition(".")
    if sep:
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        s = f"{head}.{digits[:6].ljust(6, '0')}{rest[i:]}"
    return datetime.fromisoformat(s)


def _bytes(obj: Json, name: str) -> bytes:
    """The API's output rule: ``name`` as text when valid UTF-8, else ``name_b64``."""
    if obj.get(name) is not None:
        return str(obj[name]).encode("utf-8")
    b64 = obj.get(f"{name}_b64")
    return base64.b64decode(b64) if b64 is not None else b""


@dataclass(frozen=True)
class Money:
    """An exact amount in one currency, e.g. ``Money(Decimal("0.0111"), "USD")``."""

    amount: Decimal
    currency: str

    @classmethod
    def from_json(cls, obj: Json) -> Money:
        return cls(_dec(obj["amount"]), str(obj["currency"]))

    @classmethod
    def opt(cls, obj: Json | None) -> Money | None:
        return None if obj is None else cls.from_json(obj)

    def __str__(self) -> str:
        # Positional notation: str(Decimal("0.000000103")) would be "1.03E-7".
        return f"{self.amount:f} {self.currency}"


@dataclass(frozen=True)
class LineItem:
    """One priced line of an estimate or a meter."""

    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount: Decimal

    @classmethod
    def from_json(cls, obj: Json) -> LineItem:
        return cls(
            str(obj["description"]),
            _dec(obj["quantity"]),
            str(obj["unit"]),
            _dec(obj["unit_price"]),
            _dec(obj["amount"]),
        )


@dataclass(frozen=True)
class Cost:
    """An estimate: a total and its line items."""

    total: Money
    line_items: tuple[LineItem, ...]

    @classmethod
    def opt(cls, obj: Json | None) -> Cost | None:
        if obj is None:
            return None
        return cls(
            Money.from_json(obj["total"]),
            tuple(LineItem.from_json(li) for li in obj.get("line_items", [])),
        )


@dataclass(frozen=True)
class Measure:
    """One measured quantity of a sandbox's usage (``cpu-seconds``…)."""

    name: str
    quantity: Decimal
    unit: str


@dataclass(frozen=True)
class Usage:
    """What a sandbox consumed, as its backend reported it."""

    duration_ms: int
    measures: tuple[Measure, ...]

    @classmethod
    def from_json(cls, obj: Json) -> Usage:
        return cls(
            int(obj.get("duration_ms", 0)),
            tuple(
                Measure(str(m["name"]), _dec(m["quantity"]), str(m["unit"]))
                for m in obj.get("measures", [])
            ),
        )


@dataclass(frozen=True)
class Meter:
    """A destroyed sandbox's settled bill: what was charged, held, released."""

    total: Money
    exact: Decimal
    line_items: tuple[LineItem, ...]
    usage: Usage
    held: Money
    released: Money
    written_off: Money
    debt: Money
    settlement_id: str
    transfer_id: str
    event_id: str
    settled_at: datetime | None

    @classmethod
    def opt(cls, obj: Json | None) -> Meter | None:
        if obj is None:
            return None
        return cls(
            total=Money.from_json(obj["total"]),
            exact=_dec(obj["exact"]),
            line_items=tuple(LineItem.from_json(li) for li in obj.get("line_items", [])),
            usage=Usage.from_json(obj.get("usage") or {}),
            held=Money.from_json(obj["held"]),
            released=Money.from_json(obj["released"]),
            written_off=Money.from_json(obj["written_off"]),
            debt=Money.from_json(obj["debt"]),
            settlement_id=str(obj["settlement_id"]),
            transfer_id=str(obj["transfer_id"]),
            event_id=str(obj["event_id"]),
            settled_at=_time(obj.get("settled_at")),
        )


@dataclass(frozen=True)
class SandboxStatus:
    """``GET /v1/sandboxes/{id}``: a sandbox's state, route, hold and (once destroyed) meter."""

    id: str
    tenant: str
    profile: str
    state: str
    extension_id: str | None
    handle: str | None
    estimate: Cost | None
    hold_id: str | None
    held: Money | None
    meter: Meter | None
    error: str | None
    idempotency_key: str | None
    created_at: datetime | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Json) -> SandboxStatus:
        return cls(
            id=str(obj["id"]),
            tenant=str(obj["tenant"]),
            profile=str(obj["profile"]),
            state=str(obj["state"]),
            extension_id=obj.get("extension_id"),
            handle=obj.get("handle"),
            estimate=Cost.opt(obj.get("estimate")),
            hold_id=obj.get("hold_id"),
            held=Money.opt(obj.get("held")),
            meter=Meter.opt(obj.get("meter")),
            error=obj.get("error"),
            idempotency_key=obj.get("idempotency_key"),
            created_at=_time(obj.get("created_at")),
            raw=obj,
        )


@dataclass(frozen=True)
class SandboxPage:
    """One page of ``GET /v1/sandboxes``; ``next`` is the cursor of the next page or None."""

    sandboxes: tuple[SandboxStatus, ...]
    next: str | None


@dataclass(frozen=True)
class ExecResult:
    """How a command ended and what it printed (``POST /v1/sandboxes/{id}/exec``).

    ``stdout_bytes``/``stderr_bytes`` are exact; ``stdout``/``stderr`` are them decoded as
    UTF-8 (invalid bytes replaced).
    """

    status: str
    exit_code: int | None
    duration_ms: int
    cpu_ms: int | None
    detail: str
    stdout_bytes: bytes
    stderr_bytes: bytes
    stdout_truncated: bool
    stderr_truncated: bool

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        """True when the command exited on its own with code 0."""
        return self.status == "exited" and self.exit_code == 0

    @classmethod
    def from_json(cls, obj: Json) -> ExecResult:
        return cls(
            status=str(obj["status"]),
            exit_code=obj.get("exit_code"),
            duration_ms=int(obj.get("duration_ms", 0)),
            cpu_ms=obj.get("cpu_ms"),
            detail=str(obj.get("detail", "")),
            stdout_bytes=_bytes(obj, "stdout"),
            stderr_bytes=_bytes(obj, "stderr"),
            stdout_truncated=bool(obj.get("stdout_truncated", False)),
            stderr_truncated=bool(obj.get("stderr_truncated", False)),
        )


@dataclass(frozen=True)
class Started:
    """Streamed exec: the command runs (``{"type": "started"}``)."""

    process_id: str


@dataclass(frozen=True)
class OutputChunk:
    """Streamed exec: a piece of output, exact bytes (``data`` or ``data_b64``)."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        """The chunk as UTF-8; a character split between chunks decodes only when joined."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Exit:
    """Streamed exec: how the command ended (the last event)."""

    status: str
    exit_code: int | None
    duration_ms: int
    cpu_ms: int | None
    detail: str
    truncated: bool

    @property
    def ok(self) -> bool:
        return self.status == "exited" and self.exit_code == 0


ExecEvent = Started | OutputChunk | Exit


@dataclass(frozen=True)
class FileEntry:
    """One entry of a folder in a sandbox."""

    name: str
    kind: Literal["file", "directory", "symlink", "other"]
    size: int
    modified_ms: int | None

    @classmethod
    def from_json(cls, obj: Json) -> FileEntry:
        return cls(str(obj["name"]), obj["kind"], int(obj.get("size", 0)), obj.get("modified_ms"))


@dataclass(frozen=True)
class FileWritten:
    """``PUT …/files/{path}``: the path as given and the bytes written."""

    path: str
    size: int


@dataclass(frozen=True)
class Balance:
    """A tenant's balance in one currency: ``available = posted - held``."""

    tenant: str
    currency: str
    posted: Decimal
    held: Decimal
    available: Decimal

    @classmethod
    def from_json(cls, obj: Json) -> Balance:
        return cls(
            str(obj["tenant"]),
            str(obj["currency"]),
            _dec(obj["posted"]),
            _dec(obj["held"]),
            _dec(obj["available"]),
        )


@dataclass(frozen=True)
class Credits:
    """``GET /v1/credits``: the tenant's balances, one per currency."""

    tenant: str
    balances: tuple[Balance, ...]

    def balance(self, currency: str = "USD") -> Balance:
        """The balance in ``currency`` (zero when the tenant has none in it)."""
        for b in self.balances:
            if b.currency == currency:
                return b
        zero = Decimal(0)
        return Balance(self.tenant, currency, zero, zero, zero)


@dataclass(frozen=True)
class StatementEntry:
    """One line of the statement: one ledger transfer touching the tenant."""

    at: datetime | None
    kind: Literal["grant", "hold", "charge", "void", "overdraft", "debt"]
    transfer_id: str
    hold_id: str | None
    currency: str
    posted_delta: Decimal
    held_delta: Decimal
    exact: Decimal | None
    sandbox_id: str | None
    note: str | None

    @classmethod
    def from_json(cls, obj: Json) -> StatementEntry:
        return cls(
            at=_time(obj.get("at")),
            kind=obj["kind"],
            transfer_id=str(obj["transfer_id"]),
            hold_id=obj.get("hold_id"),
            currency=str(obj["currency"]),
            posted_delta=_dec(obj["posted_delta"]),
            held_delta=_dec(obj["held_delta"]),
            exact=_opt_dec(obj.get("exact")),
            sandbox_id=obj.get("sandbox_id"),
            note=obj.get("note"),
        )


@dataclass(frozen=True)
class StatementPage:
    """One page of ``GET /v1/credits/entries``; ``next`` is the next page's cursor or None."""

    tenant: str
    entries: tuple[StatementEntry, ...]
    next: str | None

    @classmethod
    def from_json(cls, obj: Json) -> StatementPage:
        return cls(
            str(obj["tenant"]),
            tuple(StatementEntry.from_json(e) for e in obj.get("entries", [])),
            obj.get("next"),
        )


@dataclass(frozen=True)
class Grant:
    """``POST /v1/tenants/{tenant}/credits`` (admin): the grant and the balance after it."""

    transfer_id: str
    tenant: str
    amount: Money
    note: str
    at: datetime | None
    balance: Balance

    @classmethod
    def from_json(cls, obj: Json) -> Grant:
        return cls(
            str(obj["transfer_id"]),
            str(obj["tenant"]),
            Money.from_json(obj["amount"]),
            str(obj.get("note", "")),
            _time(obj.get("at")),
            Balance.from_json(obj["balance"]),
        )
