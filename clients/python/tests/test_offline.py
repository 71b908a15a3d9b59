"""What the client does with answers the real host rarely gives on demand (every error
code, bodies that are not the API's, base64 output, a stream cut short), through httpx's
MockTransport: no host needed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

import sandboxer
from sandboxer import Client, OutputChunk, SandboxerError, StreamEnded

CODES: list[tuple[int, str, type[SandboxerError]]] = [
    (400, "bad_request", sandboxer.BadRequest),
    (400, "body_too_large", sandboxer.BodyTooLarge),
    (413, "body_too_large", sandboxer.BodyTooLarge),
    (401, "unauthorized", sandboxer.Unauthorized),
    (402, "insufficient_credits", sandboxer.InsufficientCredits),
    (403, "forbidden", sandboxer.Forbidden),
    (404, "not_found", sandboxer.NotFound),
    (405, "method_not_allowed", sandboxer.MethodNotAllowed),
    (409, "own_key_required", sandboxer.OwnKeyRequired),
    (409, "idempotency_conflict", sandboxer.IdempotencyConflict),
    (409, "wrong_state", sandboxer.WrongState),
    (409, "busy", sandboxer.Busy),
    (409, "conflict", sandboxer.Conflict),
    (500, "internal", sandboxer.InternalError),
    (501, "unsupported", sandboxer.Unsupported),
    (502, "extension_failed", sandboxer.ExtensionFailed),
    (502, "bad_meter", sandboxer.BadMeter),
    (503, "backend_unavailable", sandboxer.BackendUnavailable),
    (503, "no_backend_available", sandboxer.NoBackendAvailable),
    (503, "create_failed", sandboxer.CreateFailed),
    (503, "extension_missing", sandboxer.ExtensionMissing),
    (503, "secret_store_unavailable", sandboxer.SecretStoreUnavailable),
]


def client_answering(status: int, body: Any, content_type: str = "application/json") -> Client:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=raw, headers={"content-type": content_type})

    return Client("http://sandboxer.test", "t" * 20, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("status", "code", "cls"), CODES)
def test_every_documented_code_raises_its_class(status: int, code: str, cls: type[SandboxerError]) -> None:
    c = client_answering(status, {"error": {"code": code, "message": f"m-{code}", "state": "creating"}})
    with pytest.raises(cls) as e:
        c.credits()
    assert (e.value.status, e.value.code, e.value.message) == (status, code, f"m-{code}")
    assert e.value.details == {"state": "creating"}
    assert type(e.value) is cls


def test_details_are_typed() -> None:
    c = client_answering(402, {"error": {
        "code": "insufficient_credits", "message": "m",
        "need": {"amount": "0.01665", "currency": "USD"},
        "available": {"amount": "0.01", "currency": "USD"}}})
    with pytest.raises(sandboxer.InsufficientCredits) as e:
        c.create_sandbox("p")
    assert e.value.need == sandboxer.Money(Decimal("0.01665"), "USD")
    assert e.value.available == sandboxer.Money(Decimal("0.01"), "USD")


def test_unknown_codes_and_foreign_bodies_fall_back_on_the_status() -> None:
    with pytest.raises(sandboxer.Conflict) as e:
        client_answering(409, {"error": {"code": "brand_new", "message": "later host"}}).credits()
    assert e.value.code == "brand_new"
    with pytest.raises(sandboxer.ServerError) as e2:
        client_answering(504, b"<html>gateway timeout</html>", "text/html").credits()
    assert e2.value.status == 504 and "gateway timeout" in e2.value.message
    with pytest.raises(SandboxerError) as e3:
        client_answering(418, {"error": {"code": "teapot", "message": "no"}}).credits()
    assert type(e3.value) is SandboxerError and e3.value.code == "teapot"


def test_output_that_is_not_text_comes_as_exact_bytes() -> None:
    c = client_answering(200, {
        "status": "exited", "exit_code": 0, "duration_ms": 1, "cpu_ms": None, "detail": "",
        "stdout_b64": "//4=", "stdout_truncated": False, "stderr": "é", "stderr_truncated": True})
    r = c.exec("sb-1", ["x"])
    assert r.stdout_bytes == b"\xff\xfe" and r.stdout == "\ufffd\ufffd"
    assert r.stderr_bytes == "é".encode() and r.stderr_truncated and r.cpu_ms is None


def test_a_split_character_joins_and_a_cut_stream_raises() -> None:
    lines = [
        {"type": "started", "process_id": "p-1"},
        {"type": "stdout", "data_b64": "ww=="},  # "é" is c3 a9: split between two chunks
        {"type": "stdout", "data_b64": "qQ=="},
    ]
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    c = client_answering(200, body, "application/x-ndjson")
    with c.exec_stream("sb-1", "x") as s:
        got = []
        with pytest.raises(StreamEnded):
            for ev in s:
                got.append(ev)
    data = b"".join(ev.data for ev in got if isinstance(ev, OutputChunk))
    assert data.decode() == "é"


def test_an_error_line_after_the_start_raises_its_class() -> None:
    body = (json.dumps({"type": "started", "process_id": "p"}) + "\n"
            + json.dumps({"type": "error", "code": "backend_unavailable", "message": "agent gone"}) + "\n").encode()
    c = client_answering(200, body, "application/x-ndjson")
    with pytest.raises(sandboxer.BackendUnavailable) as e:
        c.exec_stream("sb-1", ["x"]).wait()
    assert e.value.status is None and e.value.message == "agent gone"


def test_money_never_goes_out_as_a_float_and_requests_have_the_api_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={
            "transfer_id": "t", "tenant": "a", "amount": {"amount": "0.1", "currency": "USD"},
            "note": "", "at": "2026-11-26T14:22:09.959123456Z",
            "balance": {"tenant": "a", "currency": "USD", "posted": "0.1", "held": "0", "available": "0.1"}})

    c = Client("http://sandboxer.test/", "tok-0123456789abcdef", transport=httpx.MockTransport(handler))
    g = c.grant_credits("a", Decimal("0.10"), idempotency_key="k-1")
    assert json.loads(seen[0].content) == {"amount": "0.10", "currency": "USD", "note": ""}
    assert seen[0].headers["authorization"] == "Bearer tok-0123456789abcdef"
    assert seen[0].headers["idempotency-key"] == "k-1"
    assert g.at is not None and g.at.microsecond == 959123 and g.balance.available == Decimal("0.1")
    with pytest.raises(TypeError):
        c.grant_credits("a", 0.1)  # type: ignore[arg-type]
    assert len(seen) == 1
    assert str(sandboxer.Money(Decimal("0.000000103"), "USD")) == "0.000000103 USD"


def test_paths_keep_their_dot_segments_for_the_host_to_judge() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(201, json={"path": "x", "size": 1})

    c = Client("http://sandboxer.test", "t" * 20, transport=httpx.MockTransport(handler))
    c.write_file("sb-1", "../../etc/passwd", b"x")
    c.write_file("sb-1", "a b/%2e.txt", b"x")
    assert seen == [
        "/v1/sandboxes/sb-1/files/%2E%2E/%2E%2E/etc/passwd",
        "/v1/sandboxes/sb-1/files/a%20b/%252e.txt",
    ]
