"""Typed exceptions mapped from the API's one error shape.

Every error answer is ``{"error": {"code", "message", …details}}`` (docs/api.md, "Errors").
The client raises the class registered for ``code`` (falling back on the HTTP status), and
every exception carries ``status``, ``code``, ``message`` and the ``details`` as sent.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .models import Money, SandboxStatus

__all__ = [
    "SandboxerError",
    "BadRequest",
    "BodyTooLarge",
    "Unauthorized",
    "InsufficientCredits",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "IdempotencyConflict",
    "WrongState",
    "Busy",
    "OwnKeyRequired",
    "Unsupported",
    "StreamEnded",
    "ServerError",
    "InternalError",
    "ExtensionFailed",
    "BadMeter",
    "ServiceUnavailable",
    "BackendUnavailable",
    "NoBackendAvailable",
    "CreateFailed",
    "ExtensionMissing",
    "SecretStoreUnavailable",
    "error_from_body",
]


class SandboxerError(Exception):
    """An error answered by the API (or sent as the last line of a streamed exec).

    ``status`` is the HTTP status (``None`` for a streamed exec's error line, which comes
    after the 200), ``code`` the API's stable code, ``details`` the other keys of the error.
    """

    #: The API code a class stands for (the base class: any).
    api_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code if code is not None else (self.api_code or "unknown")
        self.details: Mapping[str, Any] = dict(details or {})

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class BadRequest(SandboxerError):
    """400: malformed or refused input; ``field`` names the part at fault when known
    (``profile`` for an unknown profile, ``path`` for a path that leaves the workspace)."""

    api_code = "bad_request"

    @property
    def field(self) -> str | None:
        f = self.details.get("field")
        return None if f is None else str(f)


class BodyTooLarge(SandboxerError):
    """400 (a JSON body over ``max_body_bytes``) or 413 (a file over ``max_file_bytes``)."""

    api_code = "body_too_large"


class Unauthorized(SandboxerError):
    """401: no token, a malformed header, or an unknown token."""

    api_code = "unauthorized"


class InsufficientCredits(SandboxerError):
    """402: the estimate cannot be held. ``need`` and ``available`` are the amounts the API
    sent (``None`` when the tenant has never had credits: the API sends neither then)."""

    api_code = "insufficient_credits"

    @property
    def need(self) -> Money | None:
        v = self.details.get("need")
        return Money.from_json(v) if isinstance(v, Mapping) else None

    @property
    def available(self) -> Money | None:
        v = self.details.get("available")
        return Money.from_json(v) if isinstance(v, Mapping) else None


class Forbidden(SandboxerError):
    """403: an admin token on a tenant endpoint or a tenant token on an admin endpoint."""

    api_code = "forbidden"


class NotFound(SandboxerError):
    """404: an unknown sandbox (or another tenant's), endpoint, file or folder."""

    api_code = "not_found"

    @property
    def id(self) -> str | None:
        v = self.details.get("id")
        return None if v is None else str(v)


class MethodNotAllowed(SandboxerError):
    api_code = "method_not_allowed"


class Conflict(SandboxerError):
    """409 (the base of the 409 codes; also the ledger's ``conflict``)."""

    api_code = "conflict"


class IdempotencyConflict(Conflict):
    """409: an ``Idempotency-Key`` reused for a different request."""

    api_code = "idempotency_conflict"


class WrongState(Conflict):
    """409: the sandbox is not in a state that allows it (``state`` says which it is in)."""

    api_code = "wrong_state"

    @property
    def state(self) -> str | None:
        v = self.details.get("state")
        return None if v is None else str(v)


class Busy(Conflict):
    """409: the sandbox is being finished by another process."""

    api_code = "busy"


class OwnKeyRequired(Conflict):
    """409: ``byok = "require"`` and no own provider key on any candidate."""

    api_code = "own_key_required"

    @property
    def extensions(self) -> list[str]:
        return [str(e) for e in self.details.get("extensions") or []]


class Unsupported(SandboxerError):
    """501: the sandbox's backend cannot run commands or move files."""

    api_code = "unsupported"


class StreamEnded(SandboxerError):
    """A streamed exec's connection ended before its ``exit`` line (the host went away)."""

    api_code = "stream_ended"


class ServerError(SandboxerError):
    """A 5xx answer (the base of the codes below)."""


class InternalError(ServerError):
    """500: the host failed (storage); details are in its log only."""

    api_code = "internal"


class ExtensionFailed(ServerError):
    """502: the extension failed while destroying or metering; retry later."""

    api_code = "extension_failed"


class BadMeter(ServerError):
    """502: the extension's meter reading was refused; retry later."""

    api_code = "bad_meter"


class ServiceUnavailable(ServerError):
    """503 (the base of the 503 codes)."""


class BackendUnavailable(ServiceUnavailable):
    """503: the sandbox's backend cannot be reached or is full right now; retry."""

    api_code = "backend_unavailable"


class NoBackendAvailable(ServiceUnavailable):
    """503: no extension can serve the request; ``candidates`` is the explain report."""

    api_code = "no_backend_available"

    @property
    def candidates(self) -> list[Mapping[str, Any]]:
        return list(self.details.get("candidates") or [])


class CreateFailed(ServiceUnavailable):
    """503: every attempt failed (each hold was released); ``sandbox`` is the failed status."""

    api_code = "create_failed"

    @property
    def sandbox(self) -> SandboxStatus | None:
        v = self.details.get("sandbox")
        return SandboxStatus.from_json(v) if isinstance(v, Mapping) else None


class ExtensionMissing(ServiceUnavailable):
    """503: the sandbox's extension is not loaded."""

    api_code = "extension_missing"


class SecretStoreUnavailable(ServiceUnavailable):
    """503: no OpenBao configured, or it cannot be reached."""

    api_code = "secret_store_unavailable"


_BY_CODE: dict[str, type[SandboxerError]] = {
    c.api_code: c
    for c in (
        BadRequest,
        BodyTooLarge,
        Unauthorized,
        InsufficientCredits,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        IdempotencyConflict,
        WrongState,
        Busy,
        OwnKeyRequired,
        Unsupported,
        InternalError,
        ExtensionFailed,
        BadMeter,
        BackendUnavailable,
        NoBackendAvailable,
        CreateFailed,
        ExtensionMissing,
        SecretStoreUnavailable,
    )
    if c.api_code is not None
}

_BY_STATUS: dict[int, type[SandboxerError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: BodyTooLarge,
    501: Unsupported,
    503: ServiceUnavailable,
}


def error_from_error_object(err: Mapping[str, Any], status: int | None) -> SandboxerError:
    """The exception for one ``error`` object (``{"code", "message", …}``)."""
    code = str(err.get("code") or "unknown")
    message = str(err.get("message") or code)
    details = {k: v for k, v in err.items() if k not in ("code", "message")}
    cls = _BY_CODE.get(code)
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else None)
    return (cls or SandboxerError)(message, status=status, code=code, details=details)


def error_from_body(status: int, body: bytes) -> SandboxerError:
    """The exception for an error answer: its JSON error object when it has one, else the
    status and the body's text."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, Mapping) and isinstance(obj.get("error"), Mapping):
        return error_from_error_object(obj["error"], status)
    text = body.decode("utf-8", errors="replace").strip()[:500]
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else SandboxerError)
    return cls(text or f"HTTP {status}", status=status, code=f"http_{status}")
