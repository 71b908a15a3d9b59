"""What the sync and async clients share: settings, request bodies, paths, answers."""

from __future__ import annotations

import base64
import json
import os
from decimal import Decimal
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import httpx

from .errors import error_from_body, error_from_error_object
from .models import Exit, ExecEvent, OutputChunk, Started

DEFAULT_URL = "http://127.0.0.1:7733"
#: Seconds for every request but exec (whose read timeout follows the command's).
DEFAULT_TIMEOUT = 30.0
#: The host's default exec timeout (docs/api.md): 60 s.
DEFAULT_EXEC_TIMEOUT_MS = 60_000
#: Extra seconds a blocking exec's answer may take past the command's own timeout.
EXEC_SLACK_SECS = 30.0
NDJSON = "application/x-ndjson"
USER_AGENT = "sandboxer-python/0.1.0"

Command = Sequence[str] | str


def settings(base_url: str | None, token: str | None) -> tuple[str, str]:
    """The base URL and token: the arguments, else ``SANDBOXER_URL`` / ``SANDBOXER_TOKEN``."""
    url = base_url or os.environ.get("SANDBOXER_URL") or DEFAULT_URL
    tok = token if token is not None else os.environ.get("SANDBOXER_TOKEN")
    if not tok:
        raise ValueError("a token is needed: Client(base_url, token) or SANDBOXER_TOKEN")
    return url.rstrip("/"), tok.strip()


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}


def seg(value: str) -> str:
    """One path segment, percent-encoded (an id or a tenant)."""
    return quote(value, safe="")


def file_path(sandbox_id: str, path: str) -> str:
    """``/v1/sandboxes/{id}/files/{path}`` with the path sent as given: each segment is
    percent-encoded, and ``.``/``..`` segments as ``%2E`` so that no URL normalisation (in
    httpx or a proxy) resolves them away. The host, not the client, decides what leaves
    the workspace, and refuses it with 400 naming ``path``."""
    base = f"/v1/sandboxes/{seg(sandbox_id)}/files"
    if path == "":
        return base
    parts = []
    for p in path.split("/"):
        parts.append("%2E" * len(p) if p in (".", "..") else quote(p, safe=""))
    return f"{base}/{'/'.join(parts)}"


def money_str(amount: Decimal | str | int) -> str:
    """An amount as the API's decimal string; floats are refused (they are not exact)."""
    if isinstance(amount, float) or isinstance(amount, bool):
        raise TypeError("money must be a Decimal, an int or a decimal string, not a float")
    if isinstance(amount, Decimal):
        return format(amount, "f")
    return str(amount)


def create_body(profile: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"profile": profile}
    for k, v in overrides.items():
        if v is not None:
            body[k] = dict(v) if isinstance(v, Mapping) else v
    return body


def exec_body(
    command: Command,
    *,
    env: Mapping[str, str] | None,
    cwd: str | None,
    stdin: str | bytes | None,
    timeout_ms: int | None,
    output_limit_bytes: int | None,
) -> dict[str, Any]:
    """A ``POST …/exec`` body: a list is ``argv`` (no shell), a string a ``shell`` line."""
    body: dict[str, Any] = {}
    if isinstance(command, str):
        body["shell"] = command
    else:
        argv = list(command)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError("command must be a non-empty list of strings or a shell line")
        body["argv"] = argv
    if env:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    if isinstance(stdin, bytes):
        body["stdin_b64"] = base64.b64encode(stdin).decode("ascii")
    elif stdin is not None:
        body["stdin"] = stdin
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    if output_limit_bytes is not None:
        body["output_limit_bytes"] = output_limit_bytes
    return body


def exec_timeout(timeout_ms: int | None, connect: float) -> httpx.Timeout:
    """A read timeout past the command's own (a silent command may be silent till then)."""
    read = (timeout_ms or DEFAULT_EXEC_TIMEOUT_MS) / 1000 + EXEC_SLACK_SECS
    return httpx.Timeout(connect, read=read)


def page_params(limit: int | None, after: str | None, **filters: str | None) -> dict[str, str]:
    p = {k: v for k, v in filters.items() if v is not None}
    if limit is not None:
        p["limit"] = str(limit)
    if after is not None:
        p["after"] = after
    return p


def raise_for(resp: httpx.Response) -> None:
    """Raises the typed error of an error answer (the body must have been read)."""
    if resp.status_code >= 400:
        raise error_from_body(resp.status_code, resp.content)


def json_of(resp: httpx.Response) -> Any:
    raise_for(resp)
    return json.loads(resp.content)


def event(line: str) -> ExecEvent | None:
    """One NDJSON line of a streamed exec: an event, ``None`` for a blank or unknown line;
    a ``{"type": "error"}`` line raises its typed error."""
    line = line.strip()
    if not line:
        return None
    obj = json.loads(line)
    kind = obj.get("type")
    if kind == "started":
        return Started(str(obj.get("process_id", "")))
    if kind in ("stdout", "stderr"):
        if obj.get("data") is not None:
            data = str(obj["data"]).encode("utf-8")
        else:
            data = base64.b64decode(obj.get("data_b64") or "")
        return OutputChunk(kind, data)
    if kind == "exit":
        return Exit(
            status=str(obj["status"]),
            exit_code=obj.get("exit_code"),
            duration_ms=int(obj.get("duration_ms", 0)),
            cpu_ms=obj.get("cpu_ms"),
            detail=str(obj.get("detail", "")),
            truncated=bool(obj.get("truncated", False)),
        )
    if kind == "error":
        raise error_from_error_object(obj, None)
    return None
