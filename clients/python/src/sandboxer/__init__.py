"""Python client for the sandboxer-host HTTP API (docs/api.md), sync and async.

    from sandboxer import Client, Sandbox
    client = Client("http://127.0.0.1:7733", token)
    with Sandbox.create(profile="burst-sandbox", client=client) as sb:
        print(sb.exec(["python3", "-c", "print(6*7)"]).stdout)   # 42
"""

from .client import AsyncClient, AsyncExecStream, Client, ExecStream
from .errors import (
    BackendUnavailable,
    BadMeter,
    BadRequest,
    BodyTooLarge,
    Busy,
    Conflict,
    CreateFailed,
    ExtensionFailed,
    ExtensionMissing,
    Forbidden,
    IdempotencyConflict,
    InsufficientCredits,
    InternalError,
    MethodNotAllowed,
    NoBackendAvailable,
    NotFound,
    OwnKeyRequired,
    SandboxerError,
    SecretStoreUnavailable,
    ServerError,
    ServiceUnavailable,
    StreamEnded,
    Unauthorized,
    Unsupported,
    WrongState,
)
from .models import (
    Balance,
    Cost,
    Credits,
    ExecEvent,
    ExecResult,
    Exit,
    FileEntry,
    FileWritten,
    Grant,
    LineItem,
    Measure,
    Meter,
    Money,
    OutputChunk,
    SandboxPage,
    SandboxStatus,
    Started,
    StatementEntry,
    StatementPage,
    Usage,
)
from .sandbox import AsyncFiles, AsyncSandbox, Files, Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncExecStream", "AsyncFiles", "AsyncSandbox", "BackendUnavailable",
    "BadMeter", "BadRequest", "Balance", "BodyTooLarge", "Busy", "Client", "Conflict", "Cost",
    "CreateFailed", "Credits", "ExecEvent", "ExecResult", "ExecStream", "Exit",
    "ExtensionFailed", "ExtensionMissing", "FileEntry", "FileWritten", "Files", "Forbidden",
    "Grant", "IdempotencyConflict", "InsufficientCredits", "InternalError", "LineItem",
    "Measure", "Meter", "MethodNotAllowed", "Money", "NoBackendAvailable", "NotFound",
    "OutputChunk", "OwnKeyRequired", "Sandbox", "SandboxPage", "SandboxStatus",
    "SandboxerError", "SecretStoreUnavailable", "ServerError", "ServiceUnavailable",
    "Started", "StatementEntry", "StatementPage", "StreamEnded", "Unauthorized",
    "Unsupported", "Usage", "WrongState",
]
