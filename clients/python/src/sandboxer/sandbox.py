"""`Sandbox` and `AsyncSandbox`: one sandbox as an object, destroyed when its ``with``
block ends.

    with Sandbox.create(profile="burst-sandbox", client=client) as sb:
        print(sb.exec(["python3", "-c", "print(6*7)"]).stdout)   # 42
    print(sb.last.meter.total)                                    # what it cost
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Callable, Coroutine, Generator, Mapping

from ._http import Command
from .client import AsyncClient, AsyncExecStream, Client, ExecStream
from .models import ExecResult, FileEntry, FileWritten, SandboxStatus

__all__ = ["Sandbox", "AsyncSandbox", "Files", "AsyncFiles"]


class Files:
    """``sb.files``: move files in and out of the sandbox's workspace."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def write(self, path: str, data: bytes | str) -> FileWritten:
        """Writes ``data`` (a ``str`` is written as UTF-8) to ``path``, relative to the
        workspace; parent folders are created."""
        return self._sb.client.write_file(self._sb.id, path, data)

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path``."""
        return self._sb.client.read_file(self._sb.id, path)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def list(self, path: str = "") -> list[FileEntry]:
        """The entries of the folder ``path`` (``""``: the workspace), sorted by name."""
        return self._sb.client.list_files(self._sb.id, path)


class Sandbox:
    """A sandbox of the tenant the client's token speaks for.

    ``Sandbox.create(profile=..., client=...)`` creates one (holding its estimate on the
    tenant's credits); as a context manager it is destroyed (and settled) when the block
    ends, even on an exception. ``last`` is the latest status the client saw: after the
    block, the destroyed status with its ``meter``.
    """

    def __init__(self, client: Client, status: SandboxStatus, *, owns_client: bool = False) -> None:
        self.client = client
        self.id = status.id
        self.last = status
        self.files = Files(self)
        self._owns_client = owns_client

    @classmethod
    def create(
        cls,
        profile: str,
        *,
        client: Client | None = None,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        max_duration_secs: int | None = None,
        region: str | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        byok: str | None = None,
        idempotency_key: str | None = None,
    ) -> Sandbox:
        """Creates a sandbox from ``profile`` (with the API's overrides). Without
        ``client``, a :class:`Client` from ``SANDBOXER_URL``/``SANDBOXER_TOKEN`` is opened
        and closed with the sandbox."""
        owns = client is None
        c = client if client is not None else Client()
        try:
            status = c.create_sandbox(
                profile, vcpus=vcpus, memory_mib=memory_mib, max_duration_secs=max_duration_secs,
                region=region, env=env, metadata=metadata, byok=byok,
                idempotency_key=idempotency_key,
            )
        except BaseException:
            if owns:
                c.close()
            raise
        return cls(c, status, owns_client=owns)

    @classmethod
    def connect(cls, sandbox_id: str, *, client: Client) -> Sandbox:
        """An existing sandbox by id (404 :class:`~sandboxer.NotFound` if it is not the
        tenant's)."""
        return cls(client, client.sandbox(sandbox_id))

    @property
    def state(self) -> str:
        """The state at the last status the client saw (``status()`` refreshes it)."""
        return self.last.state

    def status(self) -> SandboxStatus:
        """The sandbox's current status (``GET /v1/sandboxes/{id}``)."""
        self.last = self.client.sandbox(self.id)
        return self.last

    def exec(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> ExecResult:
        """Runs ``command`` to its end: a list is a program and its arguments (no shell),
        a string a line for ``/bin/sh -c``."""
        return self.client.exec(
            self.id, command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )

    def exec_stream(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> ExecStream:
        """Runs ``command``, its output as it comes: ``with sb.exec_stream([...]) as s:
        for ev in s: ...`` (see :class:`~sandboxer.ExecStream`)."""
        return self.client.exec_stream(
            self.id, command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )

    def destroy(self) -> SandboxStatus:
        """Destroys and settles it (idempotent: again returns the same settlement)."""
        self.last = self.client.destroy_sandbox(self.id)
        return self.last

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.destroy()
        except Exception as destroy_error:
            if e is None:
                raise
            # Keep the block's own exception; say the destroy failed too.
            e.add_note(f"sandboxer: destroying {self.id} failed as well: {destroy_error}")
        finally:
            if self._owns_client:
                self.client.close()

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, state={self.last.state!r})"


class AsyncFiles:
    """``sb.files`` of an :class:`AsyncSandbox`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def write(self, path: str, data: bytes | str) -> FileWritten:
        return await self._sb.client.write_file(self._sb.id, path, data)

    async def read(self, path: str) -> bytes:
        return await self._sb.client.read_file(self._sb.id, path)

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def list(self, path: str = "") -> list[FileEntry]:
        return await self._sb.client.list_files(self._sb.id, path)


class _Creating:
    """What ``AsyncSandbox.create(...)`` returns: await it for the sandbox, or use it in
    ``async with`` to have the sandbox destroyed at the end of the block."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, AsyncSandbox]]) -> None:
        self._make = make
        self._sb: AsyncSandbox | None = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._make().__await__()

    async def __aenter__(self) -> AsyncSandbox:
        sb = await self._make()
        self._sb = sb
        return sb

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sb is not None:
            await self._sb.__aexit__(t, e, tb)


class AsyncSandbox:
    """The asyncio twin of :class:`Sandbox`:

        async with AsyncSandbox.create(profile="burst-sandbox", client=client) as sb:
            print((await sb.exec(["echo", "hi"])).stdout)
    """

    def __init__(self, client: AsyncClient, status: SandboxStatus, *, owns_client: bool = False) -> None:
        self.client = client
        self.id = status.id
        self.last = status
        self.files = AsyncFiles(self)
        self._owns_client = owns_client

    @classmethod
    def create(
        cls,
        profile: str,
        *,
        client: AsyncClient | None = None,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        max_duration_secs: int | None = None,
        region: str | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        byok: str | None = None,
        idempotency_key: str | None = None,
    ) -> _Creating:
        async def make() -> AsyncSandbox:
            owns = client is None
            c = client if client is not None else AsyncClient()
            try:
                status = await c.create_sandbox(
                    profile, vcpus=vcpus, memory_mib=memory_mib,
                    max_duration_secs=max_duration_secs, region=region, env=env,
                    metadata=metadata, byok=byok, idempotency_key=idempotency_key,
                )
            except BaseException:
                if owns:
                    await c.aclose()
                raise
            return cls(c, status, owns_client=owns)

        return _Creating(make)

    @classmethod
    async def connect(cls, sandbox_id: str, *, client: AsyncClient) -> AsyncSandbox:
        return cls(client, await client.sandbox(sandbox_id))

    @property
    def state(self) -> str:
        return self.last.state

    async def status(self) -> SandboxStatus:
        self.last = await self.client.sandbox(self.id)
        return self.last

    async def exec(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> ExecResult:
        return await self.client.exec(
            self.id, command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )

    def exec_stream(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        timeout_ms: int | None = None,
        output_limit_bytes: int | None = None,
    ) -> AsyncExecStream:
        return self.client.exec_stream(
            self.id, command, env=env, cwd=cwd, stdin=stdin, timeout_ms=timeout_ms,
            output_limit_bytes=output_limit_bytes,
        )

    async def destroy(self) -> SandboxStatus:
        self.last = await self.client.destroy_sandbox(self.id)
        return self.last

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.destroy()
        except Exception as destroy_error:
            if e is None:
                raise
            e.add_note(f"sandboxer: destroying {self.id} failed as well: {destroy_error}")
        finally:
            if self._owns_client:
                await self.client.aclose()

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, state={self.last.state!r})"
