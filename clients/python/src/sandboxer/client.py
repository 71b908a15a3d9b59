"""`Client` (blocking) and `AsyncClient` (asyncio): one method per endpoint of the API.

Both speak for one token: a tenant's (sandboxes, exec, files, credits, statement) or the
admin's (``grant_credits``, ``extensions``). Every error answer raises the typed exception
of its code (:mod:`sandboxer.errors`); transport failures are httpx's own exceptions.
"""

from __future__ import annotations

import json
from decimal import Decimal
from types import TracebackType
from typing import Any, AsyncIterator, Iterator, Mapping

import httpx

from . import _http
from ._http import Command
from .errors import StreamEnded
from .models import (
    Credits,
    ExecEvent,
    ExecResult,
    Exit,
    FileEntry,
    FileWritten,
    Grant,
    OutputChunk,
    SandboxPage,
    SandboxStatus,
    Started,
    StatementEntry,
    StatementPage,
    Balance,
)

__all__ = ["Client", "AsyncClient", "ExecStream", "AsyncExecStream"]


def _credits(obj: Mapping[str, Any]) -> Credits:
    return Credits(str(obj["tenant"]), tuple(Balance.from_json(b) for b in obj.get("balances", [])))


def _page(obj: Mapping[str, Any]) -> SandboxPage:
    return SandboxPage(
        tuple(SandboxStatus.from_json(s) for s in obj.get("sandboxes", [])), obj.get("next")
    )


def _entries(obj: Mapping[str, Any]) -> list[FileEntry]:
    return [FileEntry.from_json(e) for e in obj.get("entries", [])]


def _written(obj: Mapping[str, Any]) -> FileWritten:
    return FileWritten(str(obj["path"]), int(obj["size"]))


class _Collect:
    """Folds stream events into what a blocking exec answers."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit: Exit | None = None

    def add(self, ev: ExecEvent) -> None:
        if isinstance(ev, OutputChunk):
            (self.stdout if ev.stream == "stdout" else self.stderr).extend(ev.data)
        elif isinstance(ev, Exit):
            self.exit = ev

    def result(self) -> ExecResult:
        if self.exit is None:
            raise StreamEnded("the stream ended before the command's exit")
        e = self.exit
        return ExecResult(
            e.status, e.exit_code, e.duration_ms, e.cpu_ms, e.detail,
            bytes(self.stdout), bytes(self.stderr), e.truncated, e.truncated,
        )


class ExecStream:
    """A streamed exec (``Accept: application/x-ndjson``): iterate it for
    :class:`~sandboxer.Started`, :class:`~sandboxer.OutputChunk` and a last
    :class:`~sandboxer.Exit`. Use it as a context manager; leaving it early closes the
    connection, which kills the command. An error before the command started raises when
    the stream is opened; one after it raises from the iteration."""

    def __init__(self, http: httpx.Client, path: str, body: dict[str, Any], timeout: httpx.Timeout) -> None:
        self._http = http
        self._args = (path, body, timeout)
        self._cm: Any = None
        self._resp: httpx.Response | None = None
        self._collect = _Collect()
        self.process_id: str | None = None

    @property
    def exit(self) -> Exit | None:
        """How the command ended, once the ``exit`` event has been read."""
        return self._collect.exit

    def _open(self) -> httpx.Response:
        if self._resp is None:
            path, body, timeout = self._args
            self._cm = self._http.stream(
                "POST", path, json=body, headers={"Accept": _http.NDJSON}, timeout=timeout
            )
            resp = self._cm.__enter__()
            if resp.status_code >= 400:
                resp.read()
                self.close()
                _http.raise_for(resp)
            self._resp = resp
        return self._resp

    def __enter__(self) -> ExecStream:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)

    def __iter__(self) -> Iterator[ExecEvent]:
        resp = self._open()
        try:
            for line in resp.iter_lines():
                ev = _http.event(line)
                if ev is None:
                    continue
                self._collect.add(ev)
                if isinstance(ev, Started):
                    self.process_id = ev.process_id
                yield ev
                if isinstance(ev, Exit):
                    return
            raise StreamEnded("the stream ended before the command's exit")
        finally:
            self.close()

    def wait(self) -> ExecResult:
        """Reads the rest of the stream; the whole output and the exit as one result."""
        for _ in self:
            pass
        return self._collect.result()


class AsyncExecStream:
    """The asyncio twin of :class:`ExecStream`: ``async with`` and ``async for``."""

    def __init__(self, http: httpx.AsyncClient, path: str, body: dict[str, Any], timeout: httpx.Timeout) -> None:
        self._http = http
        self._args = (path, body, timeout)
        self._cm: Any = None
        self._resp: httpx.Response | None = None
        self._collect = _Collect()
        self.process_id: str | None = None

    @property
    def exit(self) -> Exit | None:
        return self._collect.exit

    async def _open(self) -> httpx.Response:
        if self._resp is None:
            path, body, timeout = self._args
            self._cm = self._http.stream(
                "POST", path, json=body, headers={"Accept": _http.NDJSON}, timeout=timeout
            )
            resp = await self._cm.__aenter__()
            if resp.status_code >= 400:
                await resp.aread()
                await self.aclose()
                _http.raise_for(resp)
            self._resp = resp
        return self._resp

    async def __aenter__(self) -> AsyncExecStream:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            await cm.__aexit__(None, None, None)

    async def __aiter__(self) -> AsyncIterator[ExecEvent]:
        resp = await self._open()
        try:
            async for line in resp.aiter_lines():
                ev = _http.event(line)
                if ev is None:
                    continue
                self._collect.add(ev)
                if isinstance(ev, Started):
                    self.process_id = ev.process_id
                yield ev
                if isinstance(ev, Exit):
                    return
            raise StreamEnded("the stream ended before the command's exit")
        finally:
            await self.aclose()

    async def wait(self) -> ExecResult:
        async for _ in self:
            pass
        return self._collect.result()


class Client:
    """A blocking client of one ``sandboxer-host run``.

    ``Client("http://127.0.0.1:7733", token)``; without arguments, ``SANDBOXER_URL``
    (default ``http://127.0.0.1:7733``) and ``SANDBOXER_TOKEN``. ``timeout`` (seconds)
    bounds every request except exec, whose read timeout is the command's plus 30 s.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = _http.DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, token = _http.settings(base_url, token)
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_http.headers(token),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return _http.json_of(self._http.request(method, path, **kw))

    # ---- sandboxes -------------------------------------------------------------------

    def create_sandbox(
        self,
        profile: str,
        *,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        max_duration_secs: int | None = None,
        region: str | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        byok: str | None = None,
        idempotency_key: str | None = None,
    ) -> SandboxStatus:
        """``POST /v1/sandboxes``: routes, holds the estimate, creates; the status (201)."""
        body = _http.create_body(
            profile, vcpus=vcpus, memory_mib=memory_mib, max_duration_secs=max_duration_secs,
            region=region, env=env, metadata=metadata, byok=byok,
        )
        hdrs = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        # A create may try several backends: allow it the exec slack too.
        timeout = httpx.Timeout(self._timeout, read=self._timeout + _http.EXEC_SLACK_SECS)
        return SandboxStatus.from_json(
            self._json("POST", "/v1/sandboxes", json=body, headers=hdrs, timeout=timeout)
        )

    def sandbox(self, sandbox_id: str) -> SandboxStatus:
        """``GET /v1/sandboxes/{id}``."""
        return SandboxStatus.from_json(self._json("GET", f"/v1/sandboxes/{_http.seg(sandbox_id)}"))

    def destroy_sandbox(self, sandbox_id: str) -> SandboxStatus:
        """``DELETE /v1/sandboxes/{id}``: destroys and settles (idempotent); the status with
        its ``meter``."""
        timeout = httpx.Timeout(self._timeout, read=self._timeout + _http.EXEC_SLACK_SECS)
        return SandboxStatus.from_json(
            self._json("DELETE", f"/v1/sandboxes/{_http.seg(sandbox_id)}", timeout=timeout)
        )

    def sandboxes(
        self, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> SandboxPage:
        """One page of ``GET /v1/sandboxes`` (newest first); pass ``page.next`` as ``after``."""
        return _page(self._json("GET", "/v1/sandboxes", params=_http.page_params(limit, after, state=state)))

    def iter_sandboxes(self, *, state: str | None = None, page_size: int = 1000) -> Iterator[SandboxStatus]:
        """Every sandbox, page after page."""
        after: str | None = None
        while True:
            page = self.sandboxes(state=state, limit=page_size, after=after)
            yield from page.sandboxes
            if page.next is None:
                return
            after = page.next

    def explain_route(self, profile: str, **overrides: Any) -> dict[str, Any]:
        """``POST /v1/route/explain``: the routing report as JSON (nothing is created)."""
        result: dict[str, Any] = self._json("POST", "/v1/route/explain", json=_http.create_body(profile, **overrides))
        return result

    # ---- exec and files --------------------------------------------------------------

    def exec(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> ExecResult:
        """``POST /v1/sandboxes/{id}/exec``: runs to the end; its exit and output."""
        body = _http.exec_body(
            command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )
        return ExecResult.from_json(
            self._json(
                "POST", f"/v1/sandboxes/{_http.seg(sandbox_id)}/exec", json=body,
                timeout=_http.exec_timeout(timeout_ms, self._timeout),
            )
        )

    def exec_stream(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> ExecStream:
        """The streamed exec: events as the command prints (see :class:`ExecStream`)."""
        body = _http.exec_body(
            command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )
        return ExecStream(
            self._http, f"/v1/sandboxes/{_http.seg(sandbox_id)}/exec", body,
            _http.exec_timeout(timeout_ms, self._timeout),
        )

    def write_file(self, sandbox_id: str, path: str, data: bytes | str) -> FileWritten:
        """``PUT …/files/{path}``: creates parent folders, replaces an existing file."""
        content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return _written(self._json("PUT", _http.file_path(sandbox_id, path), content=content))

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        """``GET …/files/{path}``: the file's bytes."""
        resp = self._http.get(_http.file_path(sandbox_id, path))
        _http.raise_for(resp)
        return resp.content

    def list_files(self, sandbox_id: str, path: str = "") -> list[FileEntry]:
        """``GET …/files/{path}?list``: a folder's entries, sorted by name (``""``: the
        workspace)."""
        return _entries(self._json("GET", _http.file_path(sandbox_id, path), params={"list": ""}))

    # ---- credits ---------------------------------------------------------------------

    def credits(self) -> Credits:
        """``GET /v1/credits``: the tenant's balances."""
        return _credits(self._json("GET", "/v1/credits"))

    def statement(self, *, limit: int | None = None, after: str | None = None) -> StatementPage:
        """One page of ``GET /v1/credits/entries`` (oldest first); pass ``page.next`` as
        ``after`` for the next one (``None`` on the last page)."""
        return StatementPage.from_json(
            self._json("GET", "/v1/credits/entries", params=_http.page_params(limit, after))
        )

    def iter_statement(self, *, page_size: int = 1000) -> Iterator[StatementEntry]:
        """Every statement line, page after page."""
        after: str | None = None
        while True:
            page = self.statement(limit=page_size, after=after)
            yield from page.entries
            if page.next is None:
                return
            after = page.next

    # ---- admin -----------------------------------------------------------------------

    def grant_credits(
        self,
        tenant: str,
        amount: Decimal | str | int,
        *,
        currency: str = "USD",
        note: str = "",
        idempotency_key: str | None = None,
    ) -> Grant:
        """``POST /v1/tenants/{tenant}/credits`` (admin token)."""
        body = {"amount": _http.money_str(amount), "currency": currency, "note": note}
        hdrs = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Grant.from_json(
            self._json("POST", f"/v1/tenants/{_http.seg(tenant)}/credits", json=body, headers=hdrs)
        )

    def extensions(self) -> dict[str, Any]:
        """``GET /v1/extensions``: the loaded extensions as JSON."""
        result: dict[str, Any] = self._json("GET", "/v1/extensions")
        return result

    def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no auth): ``{"status": "ok", "version": …}``."""
        resp = self._http.get("/healthz")
        result: dict[str, Any] = json.loads(resp.content)
        return result


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same methods, awaited; the iterators are
    ``async for``. Use ``async with AsyncClient(...)`` or ``await client.aclose()``."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = _http.DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, token = _http.settings(base_url, token)
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_http.headers(token),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return _http.json_of(await self._http.request(method, path, **kw))

    async def create_sandbox(
        self,
        profile: str,
        *,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        max_duration_secs: int | None = None,
        region: str | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        byok: str | None = None,
        idempotency_key: str | None = None,
    ) -> SandboxStatus:
        body = _http.create_body(
            profile, vcpus=vcpus, memory_mib=memory_mib, max_duration_secs=max_duration_secs,
            region=region, env=env, metadata=metadata, byok=byok,
        )
        hdrs = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        timeout = httpx.Timeout(self._timeout, read=self._timeout + _http.EXEC_SLACK_SECS)
        return SandboxStatus.from_json(
            await self._json("POST", "/v1/sandboxes", json=body, headers=hdrs, timeout=timeout)
        )

    async def sandbox(self, sandbox_id: str) -> SandboxStatus:
        return SandboxStatus.from_json(await self._json("GET", f"/v1/sandboxes/{_http.seg(sandbox_id)}"))

    async def destroy_sandbox(self, sandbox_id: str) -> SandboxStatus:
        timeout = httpx.Timeout(self._timeout, read=self._timeout + _http.EXEC_SLACK_SECS)
        return SandboxStatus.from_json(
            await self._json("DELETE", f"/v1/sandboxes/{_http.seg(sandbox_id)}", timeout=timeout)
        )

    async def sandboxes(
        self, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> SandboxPage:
        return _page(await self._json("GET", "/v1/sandboxes", params=_http.page_params(limit, after, state=state)))

    async def iter_sandboxes(
        self, *, state: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[SandboxStatus]:
        after: str | None = None
        while True:
            page = await self.sandboxes(state=state, limit=page_size, after=after)
            for s in page.sandboxes:
                yield s
            if page.next is None:
                return
            after = page.next

    async def explain_route(self, profile: str, **overrides: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "POST", "/v1/route/explain", json=_http.create_body(profile, **overrides)
        )
        return result

    async def exec(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> ExecResult:
        body = _http.exec_body(
            command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )
        return ExecResult.from_json(
            await self._json(
                "POST", f"/v1/sandboxes/{_http.seg(sandbox_id)}/exec", json=body,
                timeout=_http.exec_timeout(timeout_ms, self._timeout),
            )
        )

    def exec_stream(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> AsyncExecStream:
        body = _http.exec_body(
            command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )
        return AsyncExecStream(
            self._http, f"/v1/sandboxes/{_http.seg(sandbox_id)}/exec", body,
            _http.exec_timeout(timeout_ms, self._timeout),
        )

    async def write_file(self, sandbox_id: str, path: str, data: bytes | str) -> FileWritten:
        content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return _written(await self._json("PUT", _http.file_path(sandbox_id, path), content=content))

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        resp = await self._http.get(_http.file_path(sandbox_id, path))
        _http.raise_for(resp)
        return resp.content

    async def list_files(self, sandbox_id: str, path: str = "") -> list[FileEntry]:
        return _entries(await self._json("GET", _http.file_path(sandbox_id, path), params={"list": ""}))

    async def credits(self) -> Credits:
        return _credits(await self._json("GET", "/v1/credits"))

    async def statement(self, *, limit: int | None = None, after: str | None = None) -> StatementPage:
        return StatementPage.from_json(
            await self._json("GET", "/v1/credits/entries", params=_http.page_params(limit, after))
        )

    async def iter_statement(self, *, page_size: int = 1000) -> AsyncIterator[StatementEntry]:
        after: str | None = None
        while True:
            page = await self.statement(limit=page_size, after=after)
            for e in page.entries:
                yield e
            if page.next is None:
                return
            after = page.next

    async def grant_credits(
        self,
        tenant: str,
        amount: Decimal | str | int,
        *,
        currency: str = "USD",
        note: str = "",
        idempotency_key: str | None = None,
    ) -> Grant:
        body = {"amount": _http.money_str(amount), "currency": currency, "note": note}
        hdrs = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Grant.from_json(
            await self._json("POST", f"/v1/tenants/{_http.seg(tenant)}/credits", json=body, headers=hdrs)
        )

    async def extensions(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/v1/extensions")
        return result

    async def health(self) -> dict[str, Any]:
        resp = await self._http.get("/healthz")
        result: dict[str, Any] = json.loads(resp.content)
        return result
