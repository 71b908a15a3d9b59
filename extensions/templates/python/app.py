"""A minimal sandboxer extension in Python: a metered backend priced per vCPU-second.

Build:  scripts/build-polyglot.sh   (or: componentize-py -d ../../../wit -w backend-extension componentize app -o my-ext.wasm)
Check:  sandboxer extensions check my-ext.wasm
"""

from decimal import Decimal

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import backend as b
from wit_world.imports import store

CURRENCY = "USD"


def fmt(d: Decimal) -> str:
    """Money leaves as a plain decimal string: never a float, never an exponent."""
    s = format(d, "f")
    return (s.rstrip("0").rstrip(".") if "." in s else s) or "0"


def unit_price() -> Decimal:
    # Configuration the operator granted, from the sidecar's [config] table.
    return Decimal(store.get("price_per_vcpu_second") or "0.00001")


def check(r: b.SandboxRequest):
    if r.resources.vcpus < 1 or r.resources.memory_mib < 1 or r.max_duration_secs < 1:
        raise Err(b.BackendError_InvalidRequest("vcpus, memory-mib and max-duration-secs must be at least 1"))
    if r.resources.gpu is not None:
        raise Err(b.BackendError_Unsupported("no GPUs here"))


def cost(r: b.SandboxRequest, duration_ms: int) -> b.Cost:
    qty = Decimal(r.resources.vcpus) * Decimal(duration_ms) / 1000
    price = unit_price()
    amount = qty * price
    item = b.LineItem(description="vCPU time", quantity=fmt(qty), unit="vcpu-second",
                      unit_price=fmt(price), amount=fmt(amount))
    return b.Cost(total=b.Money(amount=fmt(amount), currency=CURRENCY), line_items=[item])


class Backend(exports.Backend):
    def info(self) -> b.ExtensionInfo:
        return b.ExtensionInfo(id="my-extension", name="My extension (Python)", version="0.1.0",
                               kind=b.Kind.SAAS, currency=CURRENCY, regions=[], startup_latency_ms=1000,
                               capabilities=[])

    def estimate_cost(self, request: b.SandboxRequest) -> b.Cost:
        check(request)
        return cost(request, request.max_duration_secs * 1000)

    def create(self, request: b.SandboxRequest) -> b.Created:
        check(request)
        # The handle is all the state there is: put in it what later calls need.
        return b.Created(handle=request.sandbox_id, region=None)

    def status(self, sandbox: b.SandboxContext) -> b.SandboxStatus:
        return b.SandboxStatus(state=b.SandboxState.RUNNING, detail="running")

    def destroy(self, sandbox: b.SandboxContext) -> b.Usage:
        ms = max(sandbox.now_ms - sandbox.created_at_ms, 0)
        return b.Usage(duration_ms=ms, measures=[])

    def meter_actual(self, request: b.SandboxRequest, usage: b.Usage) -> b.Cost:
        check(request)
        return cost(request, usage.duration_ms)

    def capacity(self) -> b.PoolCapacity:
        return b.PoolCapacity(max_sandboxes=None)
