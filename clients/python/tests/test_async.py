"""The asyncio client against the same host (run with asyncio.run: no plugin needed)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from conftest import Host
from sandboxer import (
    AsyncClient,
    AsyncSandbox,
    BadRequest,
    Exit,
    InsufficientCredits,
    OutputChunk,
    Started,
    Unauthorized,
)


def test_async_lifecycle_exec_stream_files_and_statement(host: Host) -> None:
    async def main() -> None:
        async with AsyncClient(host.base_url, host.tokens["a"]) as c:
            before = (await c.credits()).balance("USD")
            async with AsyncSandbox.create(profile="burst-sandbox", client=c) as sb:
                assert (await sb.status()).state == "running"
                r = await sb.exec(["python3", "-c", "import sys; print(sys.argv)", "x"])
                assert (r.exit_code, r.stdout) == (0, "['-c', 'x']\n")
                assert (await sb.files.write("in/a.txt", b"abc")).size == 3
                assert await sb.files.read("in/a.txt") == b"abc"
                assert [e.name for e in await sb.files.list("in")] == ["a.txt"]

                events = []
                async with sb.exec_stream("echo one; sleep 0.2; echo two") as s:
                    async for ev in s:
                        events.append(ev)
                assert isinstance(events[0], Started)
                assert isinstance(events[-1], Exit) and events[-1].exit_code == 0
                out = b"".join(e.data for e in events if isinstance(e, OutputChunk))
                assert out == b"one\ntwo\n"

                # Several commands at once on one client.
                many = await asyncio.gather(*(sb.exec(["echo", str(i)]) for i in range(4)))
                assert [m.stdout for m in many] == ["0\n", "1\n", "2\n", "3\n"]

                with pytest.raises(BadRequest) as e:
                    await sb.files.read("../../etc/passwd")
                assert e.value.field == "path"
            final = sb.last
            assert final.state == "destroyed" and final.meter is not None
            after = (await c.credits()).balance("USD")
            assert after.posted == before.posted - final.meter.total.amount
            charges = [x async for x in c.iter_statement() if x.sandbox_id == sb.id and x.kind == "charge"]
            assert [x.posted_delta for x in charges] == [-final.meter.total.amount]

            # Awaiting create (no block): destroyed by hand.
            sb2 = await AsyncSandbox.create(profile="burst-sandbox", client=c)
            assert (await sb2.destroy()).state == "destroyed"

        async with AsyncClient(host.base_url, host.tokens["poor"]) as poor:
            with pytest.raises(InsufficientCredits) as e2:
                await AsyncSandbox.create(profile="burst-sandbox", client=poor)
            assert e2.value.available is not None
            assert e2.value.available.amount == Decimal("0.0001")

        async with AsyncClient(host.base_url, "wrong-token-0123456789abcdef") as wrong:
            with pytest.raises(Unauthorized):
                await wrong.credits()

    asyncio.run(main())
