"""python-pool: a flat-rate self-hosted sandbox pool, written in Python.

Built with componentize-py against `wit/` (world `backend-extension`) by
`scripts/build-polyglot.sh`. Configuration comes from `wasi:config/store` (the sidecar's
`[config]` table); the pricing and validation live in `pool.py`.
"""

from decimal import Decimal

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import backend as b
from wit_world.imports import store

import pool

VERSION = "0.1.0"

_ERRORS = {
    "invalid-request": b.BackendError_InvalidRequest,
    "unsupported": b.BackendError_Unsupported,
    "capacity-exhausted": b.BackendError_CapacityExhausted,
    "unavailable": b.BackendError_Unavailable,
    "not-found": b.BackendError_NotFound,
    "unauthorized": b.BackendError_Unauthorized,
    "internal": b.BackendError_Internal,
}


def _fail(e: pool.PoolError):
    return Err(_ERRORS[e.case](e.message))


# The configuration is fixed for an instance's life, so it is parsed once per instance (a
# broken one is re-read, and fails, on every call). Nothing about sandboxes is kept.
_settings_cache = None


def _settings() -> pool.Settings:
    global _settings_cache
    if _settings_cache is None:
        try:
            values = dict(store.get_all())
        except Err as e:
            raise pool.PoolError("unavailable", f"configuration store failed: {e.value.value}") from None
        _settings_cache = pool.Settings.parse(values)
    return _settings_cache


def _check(s: pool.Settings, r: b.SandboxRequest):
    pool.validate(s, r.template, r.resources.vcpus, r.resources.memory_mib, r.resources.gpu,
                  r.max_duration_secs, r.region)


def _cost(s: pool.Settings, duration_ms: int) -> b.Cost:
    total, items = pool.price(s, duration_ms)
    return b.Cost(
        total=b.Money(amount=pool.fmt(total), currency=s.currency),
        line_items=[b.LineItem(description=d, quantity=pool.fmt(q), unit=u, unit_price=pool.fmt(p),
                               amount=pool.fmt(a)) for d, q, u, p, a in items],
    )


def _lifetime_ms(ctx: b.SandboxContext) -> int:
    return max(ctx.now_ms - ctx.created_at_ms, 0)


class Backend(exports.Backend):
    def info(self) -> b.ExtensionInfo:
        # `info` must not fail: fall back to the defaults when the config is unreadable.
        try:
            s = _settings()
        except pool.PoolError:
            s = pool.Settings.parse({})
        return b.ExtensionInfo(
            id="python-pool",
            name="Self-hosted pool, flat rate (Python)",
            version=VERSION,
            kind=b.Kind.SELF_HOSTED,
            currency=s.currency,
            regions=list(s.regions),
            startup_latency_ms=s.startup_latency_ms,
            capabilities=[b.Capability.CAPACITY, b.Capability.STATUS],
        )

    def estimate_cost(self, request: b.SandboxRequest) -> b.Cost:
        try:
            s = _settings()
            _check(s, request)
            return _cost(s, request.max_duration_secs * 1000)
        except pool.PoolError as e:
            raise _fail(e)

    def create(self, request: b.SandboxRequest) -> b.Created:
        try:
            s = _settings()
            _check(s, request)
            if s.capacity == 0:
                raise pool.PoolError("capacity-exhausted", "the pool has no machines (capacity 0)")
            slot = pool.slot_for(request.sandbox_id, s.capacity)
            handle = pool.encode_handle(request.sandbox_id, request.resources.vcpus,
                                        request.resources.memory_mib, slot)
            region = request.region if request.region is not None else (s.regions[0] if s.regions else None)
            return b.Created(handle=handle, region=region)
        except pool.PoolError as e:
            raise _fail(e)

    def status(self, sandbox: b.SandboxContext) -> b.SandboxStatus:
        try:
            h = pool.decode_handle(sandbox.handle)
        except pool.PoolError as e:
            raise _fail(e)
        if _lifetime_ms(sandbox) >= sandbox.request.max_duration_secs * 1000:
            return b.SandboxStatus(state=b.SandboxState.STOPPED, detail=f"slot {h.get('slot')}: expired")
        return b.SandboxStatus(state=b.SandboxState.RUNNING, detail=f"slot {h.get('slot')}: running")

    def destroy(self, sandbox: b.SandboxContext) -> b.Usage:
        # Usage comes from the context alone, so a second destroy (or an unknown handle)
        # reports the same usage, as the contract asks.
        ms = _lifetime_ms(sandbox)
        seconds = Decimal(ms) / 1000
        vcpus = sandbox.request.resources.vcpus
        return b.Usage(
            duration_ms=ms,
            measures=[
                b.Measure(name="sandbox-seconds", quantity=pool.fmt(seconds), unit="sandbox-second"),
                b.Measure(name="vcpu-seconds", quantity=pool.fmt(seconds * vcpus), unit="vcpu-second"),
            ],
        )

    def meter_actual(self, request: b.SandboxRequest, usage: b.Usage) -> b.Cost:
        try:
            s = _settings()
            _check(s, request)
            return _cost(s, usage.duration_ms)
        except pool.PoolError as e:
            raise _fail(e)

    def capacity(self) -> b.PoolCapacity:
        try:
            return b.PoolCapacity(max_sandboxes=_settings().capacity)
        except pool.PoolError as e:
            raise _fail(e)
