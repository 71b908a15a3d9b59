"""A real `sandboxer-host run` for the client's tests, started once per session.

A temp folder gets copies of the shipped `local` and `saas-stub` components and the shipped
profiles (`burst-sandbox` routes to `local`: real commands under bubblewrap, run by the
sandboxer-agent the host starts), a fresh state folder and a config with tenants `a`
(10 USD), `poor` (0.0001 USD) and `b` (never granted anything) and an admin. Credits are
granted with the `sandboxer` CLI on the same state while the host runs, as an operator
would. The host listens on a free loopback port (``--listen 127.0.0.1:0``, the address read
from its "listening on" line).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from sandboxer import Client

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("SANDBOXER_BIN_DIR", REPO / "target" / "debug"))
# The shipped components the tests need (built by `make extensions`); the cargo output
# is the fallback when they were built but not copied.
COMPONENTS = {
    "local.wasm": "local.wasm",
    "saas-stub.wasm": "saas_stub.wasm",
}


def _component(name: str) -> Path:
    for p in (
        REPO / "extensions" / name,
        REPO / "target" / "wasm32-wasip2" / "release" / COMPONENTS[name],
    ):
        if p.is_file():
            return p
    raise RuntimeError(f"extensions/{name} is missing: run `make extensions` first")


@dataclass
class Host:
    """The running host: its URL, the tokens, its log, and the CLI on its state."""

    base_url: str
    root: Path
    tokens: dict[str, str]
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [
                str(BIN / "sandboxer"),
                "--extensions-dir", str(self.root / "extensions"),
                "--profiles-dir", str(self.root / "profiles"),
                "--state-dir", str(self.root / "state"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, f"sandboxer {' '.join(args)}: {out.stderr}\n{out.stdout}"
        return out.stdout

    def client(self, who: str) -> Client:
        return Client(self.base_url, self.tokens[who])


def _start(root: Path, tokens: dict[str, str]) -> Host:
    for binary in ("sandboxer-host", "sandboxer", "sandboxer-agent"):
        if not (BIN / binary).is_file():
            raise RuntimeError(f"{BIN / binary} is missing: cargo build -p sandboxer-host -p sandboxer-agent")
    cmd = [
        str(BIN / "sandboxer-host"),
        "--extensions-dir", str(root / "extensions"),
        "--profiles-dir", str(root / "profiles"),
        "--state-dir", str(root / "state"),
        "run", "--listen", "127.0.0.1:0", "--config", str(root / "sandboxer.toml"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env["RUST_LOG"] = "info"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    lines: list[str] = []
    found = threading.Event()
    base: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            lines.append(line)
            marker = "sandboxer-host: listening on "
            if marker in line and not found.is_set():
                addr = line.split(marker, 1)[1].strip()
                base.append(addr if addr.startswith("http") else f"http://{addr}")
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 120
    while not found.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("sandboxer-host did not start:\n" + "\n".join(lines))
    return Host(base[0], root, tokens, proc, lines)


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("sandboxer-host")
    (root / "extensions").mkdir()
    (root / "profiles").mkdir()
    for name in COMPONENTS:
        shutil.copy(_component(name), root / "extensions" / name)
    for p in sorted((REPO / "profiles").glob("*.toml")):
        shutil.copy(p, root / "profiles" / p.name)
    tokens = {who: f"{who}-{secrets.token_hex(16)}" for who in ("a", "b", "poor", "admin")}
    (root / "sandboxer.toml").write_text(
        "".join(f'[tenants.{t}]\ntoken = "{tokens[t]}"\n' for t in ("a", "b", "poor"))
        + f'[admin]\ntoken = "{tokens["admin"]}"\n'
    )
    h = _start(root, tokens)
    try:
        h.cli("credits", "add", "a", "10", "--note", "python client tests")
        h.cli("credits", "add", "poor", "0.0001", "--note", "not enough for a sandbox")
        yield h
    finally:
        if request.session.testsfailed:
            print("\n---- the host's log (last 200 lines) ----\n" + h.log())
        h.proc.send_signal(signal.SIGTERM)
        try:
            h.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            h.proc.kill()
            h.proc.wait()


@pytest.fixture(scope="session")
def client(host: Host) -> Iterator[Client]:
    """Tenant `a`'s client (10 USD granted at the start)."""
    with host.client("a") as c:
        yield c
