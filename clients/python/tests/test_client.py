"""The blocking client against a real host: lifecycle, exec (blocking and streamed),
files, credits, the statement and its paging, and the typed errors."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from conftest import Host
from sandboxer import (
    BadRequest,
    Client,
    Exit,
    Forbidden,
    InsufficientCredits,
    NotFound,
    OutputChunk,
    Sandbox,
    Started,
    Unauthorized,
    WrongState,
)

PROFILE = "burst-sandbox"


def test_create_exec_files_destroy_and_the_charge_on_the_statement(host: Host, client: Client) -> None:
    before = client.credits().balance("USD")
    assert before.posted >= Decimal("9"), before

    with Sandbox.create(profile=PROFILE, client=client) as sb:
        assert sb.state == "running"
        st = sb.status()
        assert st.id == sb.id and st.state == "running" and st.profile == PROFILE
        assert st.extension_id == "local", host.log()
        assert st.held is not None and st.held.amount > 0 and st.held.currency == "USD"
        assert isinstance(st.held.amount, Decimal)
        held = client.credits().balance("USD")
        assert held.held == before.held + st.held.amount
        assert held.available == held.posted - held.held

        r = sb.exec(["python3", "-c", "print(6*7)"])
        assert (r.status, r.exit_code, r.stdout, r.stderr) == ("exited", 0, "42\n", "")
        assert r.ok and not r.stdout_truncated

        bad = sb.exec("echo to-stderr >&2; exit 7")
        assert (bad.status, bad.exit_code, bad.stderr, bad.ok) == ("exited", 7, "to-stderr\n", False)

        env = sb.exec(["sh", "-c", 'printf "%s" "$GREETING"; cat'], env={"GREETING": "hi "}, stdin="there")
        assert env.stdout == "hi there"

        w = sb.files.write("data/notes.txt", "hello\nsandbox\n")
        assert (w.path, w.size) == ("data/notes.txt", 14)
        up = sb.exec("tr a-z A-Z < data/notes.txt > data/shout.txt")
        assert up.exit_code == 0, up
        assert sb.files.read("data/shout.txt") == b"HELLO\nSANDBOX\n"
        assert sb.files.read_text("data/notes.txt") == "hello\nsandbox\n"

        blob = bytes(range(256)) * 17
        assert sb.files.write("data/blob.bin", blob).size == len(blob)
        assert sb.files.read("data/blob.bin") == blob

        entries = sb.files.list("data")
        assert [(e.name, e.kind, e.size) for e in entries] == [
            ("blob.bin", "file", len(blob)),
            ("notes.txt", "file", 14),
            ("shout.txt", "file", 14),
        ]
        top = {e.name: e.kind for e in sb.files.list()}
        assert top.get("data") == "directory", top

        # Output that is not UTF-8 comes back as the exact bytes (the API's _b64 rule).
        raw = sb.exec(["printf", "\\377\\376ok"])
        assert raw.stdout_bytes == b"\xff\xfeok"

    # The block's end destroyed and settled it.
    final = sb.last
    assert final.state == "destroyed", final
    assert final.meter is not None
    charged = final.meter.total
    assert charged.currency == "USD" and charged.amount > 0, final.meter
    assert charged.amount + final.meter.released.amount == final.meter.held.amount
    assert sb.status().state == "destroyed"

    # Destroying again is idempotent: the same settlement, nothing charged twice.
    again = sb.destroy()
    assert again.meter is not None and again.meter.settlement_id == final.meter.settlement_id

    after = client.credits().balance("USD")
    assert after.posted == before.posted - charged.amount
    assert after.held == before.held

    lines = [e for e in client.iter_statement() if e.sandbox_id == sb.id]
    assert [e.kind for e in lines] == ["hold", "charge"], lines
    hold, charge = lines
    assert hold.held_delta == st.held.amount and hold.posted_delta == 0
    assert charge.posted_delta == -charged.amount
    assert charge.held_delta == -st.held.amount
    assert charge.exact == final.meter.exact

    # A destroyed sandbox runs nothing.
    with pytest.raises(WrongState) as e:
        sb.exec(["true"])
    assert e.value.status == 409 and e.value.code == "wrong_state"
    assert e.value.state == "destroyed"


def test_streamed_exec_delivers_output_as_it_comes(client: Client) -> None:
    with Sandbox.create(profile=PROFILE, client=client) as sb:
        script = "for i in 1 2 3; do echo step $i; sleep 0.3; done; echo oops >&2; exit 3"
        events: list[tuple[float, object]] = []
        with sb.exec_stream(script) as stream:
            for ev in stream:
                events.append((time.monotonic(), ev))
        assert isinstance(events[0][1], Started) and events[0][1].process_id
        assert stream.process_id == events[0][1].process_id
        last = events[-1][1]
        assert isinstance(last, Exit)
        assert (last.status, last.exit_code, last.ok) == ("exited", 3, False)
        assert stream.exit == last
        chunks = [(t, ev) for t, ev in events if isinstance(ev, OutputChunk)]
        out = b"".join(ev.data for _, ev in chunks if ev.stream == "stdout")
        err = b"".join(ev.data for _, ev in chunks if ev.stream == "stderr")
        assert (out, err) == (b"step 1\nstep 2\nstep 3\n", b"oops\n")
        # Streamed, not buffered: the first line arrived well before the last.
        firsts = [t for t, ev in chunks if b"step 1" in ev.data]
        lasts = [t for t, ev in chunks if b"step 3" in ev.data]
        assert firsts and lasts and lasts[0] - firsts[0] >= 0.4, chunks

        # wait(): the whole stream folded into one result.
        r = sb.exec_stream(["python3", "-c", "print('a'); print('b')"]).wait()
        assert (r.status, r.exit_code, r.stdout) == ("exited", 0, "a\nb\n")

        # Leaving the stream early closes the connection, which kills the command: the
        # file it would have written after 1.5 s never appears. (The command prints while
        # it runs; the host notices a client that left between its reads of the output,
        # which wait at most 1 s: host/tests/exec_and_files.rs covers a silent command.)
        with sb.exec_stream("for i in $(seq 15); do echo tick; sleep 0.1; done; touch data-late") as s:
            for ev in s:
                if isinstance(ev, OutputChunk):
                    break
        time.sleep(2.5)
        assert "data-late" not in {e.name for e in sb.files.list()}

        # An error before the command starts is the plain typed error.
        with pytest.raises(BadRequest) as e:
            with sb.exec_stream(["true"], timeout_ms=3_600_001):
                pass
        assert (e.value.status, e.value.field) == (400, "timeout_ms")
        with pytest.raises(NotFound):
            client.exec_stream("sb-00000000000000000000", ["true"]).wait()


def test_insufficient_credits_carries_need_and_available(host: Host) -> None:
    with host.client("poor") as poor:
        with pytest.raises(InsufficientCredits) as e:
            Sandbox.create(profile=PROFILE, client=poor)
        err = e.value
        assert (err.status, err.code) == (402, "insufficient_credits")
        assert err.available is not None and err.need is not None, err.details
        assert err.available.amount == Decimal("0.0001") and err.available.currency == "USD"
        assert isinstance(err.need.amount, Decimal) and err.need.amount > err.available.amount
        assert "insufficient credits" in err.message
        # Nothing was created or held.
        assert poor.sandboxes().sandboxes == ()
        bal = poor.credits().balance("USD")
        assert (bal.posted, bal.held) == (Decimal("0.0001"), Decimal(0))
        assert [x.kind for x in poor.iter_statement()] == ["grant"]

    # A tenant never granted anything: the same code and the same two amounts, zero available.
    with host.client("b") as b:
        with pytest.raises(InsufficientCredits) as e2:
            b.create_sandbox(PROFILE)
        assert e2.value.status == 402
        assert e2.value.available is not None and e2.value.need is not None, e2.value.details
        assert e2.value.available.amount == Decimal(0) and e2.value.available.currency == "USD"
        assert e2.value.need.amount > 0


def test_a_wrong_token_is_unauthorized(host: Host) -> None:
    with Client(host.base_url, "not-a-real-token-0123456789") as wrong:
        with pytest.raises(Unauthorized) as e:
            wrong.credits()
        assert (e.value.status, e.value.code) == (401, "unauthorized")
        with pytest.raises(Unauthorized):
            Sandbox.create(profile=PROFILE, client=wrong)
        assert wrong.health()["status"] == "ok"  # no auth on /healthz


def test_admin_and_tenant_tokens_keep_to_their_endpoints(host: Host, client: Client) -> None:
    with host.client("admin") as admin:
        with pytest.raises(Forbidden) as e:
            admin.credits()
        assert e.value.status == 403
        g = admin.grant_credits("b", Decimal("0.000000001"), note="one nano-dollar")
        assert g.amount.amount == Decimal("0.000000001") and g.tenant == "b"
        assert g.balance.posted == Decimal("0.000000001")
        with pytest.raises(TypeError):
            admin.grant_credits("b", 0.1)  # type: ignore[arg-type]  # refused at run time too
        with pytest.raises(BadRequest) as bad:
            admin.grant_credits("b", "-1")
        assert bad.value.field == "amount"
    with pytest.raises(Forbidden):
        client.grant_credits("a", "1")


def test_an_unknown_profile_is_a_bad_request_naming_profile(client: Client) -> None:
    with pytest.raises(BadRequest) as e:
        Sandbox.create(profile="no-such-profile", client=client)
    assert (e.value.status, e.value.code, e.value.field) == (400, "bad_request", "profile")
    assert "no-such-profile" in e.value.message
    with pytest.raises(BadRequest) as e2:
        client.create_sandbox(PROFILE, max_duration_secs=3601)
    assert e2.value.field == "max_duration_secs"


def test_paths_that_leave_the_workspace_are_refused(client: Client) -> None:
    with Sandbox.create(profile=PROFILE, client=client) as sb:
        for path in ("../../etc/passwd", "data/../../x", ".."):
            with pytest.raises(BadRequest) as e:
                sb.files.write(path, "owned")
            assert e.value.field == "path", (path, e.value)
            with pytest.raises(BadRequest) as e:
                sb.files.read(path)
            assert e.value.field == "path", (path, e.value)
        with pytest.raises(BadRequest):
            sb.files.read("/etc/passwd")
        with pytest.raises(BadRequest):
            sb.files.write("/etc/owned", "owned")
        # Nothing was written anywhere, and a missing file is a NotFound.
        assert sb.exec("test -e /etc/owned || test -e ../x || echo clean").stdout == "clean\n"
        with pytest.raises(NotFound) as nf:
            sb.files.read("no/such/file")
        assert nf.value.status == 404
        # A name with a percent sign or spaces is just a name.
        assert sb.files.write("odd %2e%2e name.txt", "x").size == 1
        assert sb.files.read("odd %2e%2e name.txt") == b"x"


def test_unknown_sandbox_is_not_found_and_another_tenants_too(host: Host, client: Client) -> None:
    with pytest.raises(NotFound) as e:
        client.sandbox("sb-00000000000000000000")
    assert e.value.id == "sb-00000000000000000000"
    with Sandbox.create(profile=PROFILE, client=client) as sb:
        with host.client("poor") as other:
            with pytest.raises(NotFound):
                Sandbox.connect(sb.id, client=other)
            with pytest.raises(NotFound):
                other.exec(sb.id, ["true"])
        same = Sandbox.connect(sb.id, client=client)
        assert same.last.state == "running"


def test_the_block_destroys_on_an_exception_too(client: Client) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Sandbox.create(profile=PROFILE, client=client) as sb:
            raise RuntimeError("boom")
    assert client.sandbox(sb.id).state == "destroyed"


def test_statement_and_sandbox_lists_page_as_the_api_pages(client: Client) -> None:
    key = f"py-idem-{time.time_ns()}"
    one = client.create_sandbox(PROFILE, idempotency_key=key, max_duration_secs=60)
    two = client.create_sandbox(PROFILE, idempotency_key=key, max_duration_secs=60)
    assert one.id == two.id and one.idempotency_key == key
    client.destroy_sandbox(one.id)

    whole = list(client.iter_statement())
    assert len(whole) >= 3 and whole[0].kind == "grant" and whole[0].note == "python client tests"
    assert whole[0].posted_delta == Decimal("10")
    paged = []
    page = client.statement(limit=2)
    pages = 1
    while True:
        assert len(page.entries) <= 2
        paged.extend(page.entries)
        if page.next is None:
            break
        page = client.statement(limit=2, after=page.next)
        pages += 1
    assert paged == whole and pages == (len(whole) + 1) // 2
    # A page that holds exactly the rest is the last one: no empty page after it.
    exact = client.statement(limit=len(whole))
    assert list(exact.entries) == whole and exact.next is None
    ids = [e.transfer_id for e in whole]
    assert len(set(ids)) == len(ids)

    listed = [s.id for s in client.iter_sandboxes(page_size=1)]
    assert one.id in listed and len(set(listed)) == len(listed)
    assert client.sandboxes(state="destroyed", limit=1).sandboxes[0].state == "destroyed"

    with pytest.raises(BadRequest) as e:
        client.statement(after="not-a-cursor")
    assert e.value.field == "after"
    with pytest.raises(BadRequest) as e:
        client.statement(limit=0)
    assert e.value.field == "limit"
