// A minimal sandboxer extension in JavaScript: a metered backend priced per vCPU-second.
// Build:  scripts/build-polyglot.sh  (or: componentize-js src/index.js --wit ../../../wit
//         -n backend-extension -d http fetch-event -o my-ext.wasm)
// Check:  sandboxer extensions check my-ext.wasm
//
// Money is never a Number (binary float): amounts are BigInt nano-dollars, formatted as
// exact decimal strings. u64 values (durations, timestamps) arrive as BigInt.
import { get } from 'wasi:config/store@0.2.0-rc.1';

const CURRENCY = 'USD';
const NANOS = 9;

/** "0.00001" -> 10000n nano-units; throws on anything but plain decimals with <= 9 places. */
function toNanos(text) {
  const m = /^([0-9]+)(?:\.([0-9]{1,9}))?$/.exec(text);
  if (!m) throw { tag: 'internal', val: `config price_per_vcpu_second: not a decimal: ${text}` };
  return BigInt(m[1]) * 10n ** BigInt(NANOS) + BigInt((m[2] ?? '').padEnd(NANOS, '0'));
}

/** n / 10^scale as a plain decimal string without trailing zeros. */
function fmt(n, scale) {
  const s = n.toString().padStart(scale + 1, '0');
  const frac = s.slice(s.length - scale).replace(/0+$/, '');
  return frac ? `${s.slice(0, s.length - scale)}.${frac}` : s.slice(0, s.length - scale);
}

function check(r) {
  if (r.resources.vcpus < 1 || r.resources.memoryMib < 1 || r.maxDurationSecs < 1n) {
    throw { tag: 'invalid-request', val: 'vcpus, memory-mib and max-duration-secs must be at least 1' };
  }
  if (r.resources.gpu != null) throw { tag: 'unsupported', val: 'no GPUs here' };
}

function cost(r, durationMs) {
  const priceNanos = toNanos(get('price_per_vcpu_second') ?? '0.00001');
  const qtyMillis = BigInt(r.resources.vcpus) * BigInt(durationMs); // vcpu-seconds at scale 3
  const amount = qtyMillis * priceNanos; // scale 3 + 9
  const item = { description: 'vCPU time', quantity: fmt(qtyMillis, 3), unit: 'vcpu-second',
    unitPrice: fmt(priceNanos, NANOS), amount: fmt(amount, 3 + NANOS) };
  return { total: { amount: item.amount, currency: CURRENCY }, lineItems: [item] };
}

export const backend = {
  info: () => ({ id: 'my-extension', name: 'My extension (JavaScript)', version: '0.1.0', kind: 'saas',
    currency: CURRENCY, regions: [], startupLatencyMs: 1000, capabilities: [] }),
  estimateCost(request) {
    check(request);
    return cost(request, BigInt(request.maxDurationSecs) * 1000n);
  },
  create(request) {
    check(request);
    return { handle: request.sandboxId }; // the handle is all the state there is
  },
  status: () => ({ state: 'running', detail: 'running' }),
  destroy(ctx) {
    const ms = BigInt(ctx.nowMs) - BigInt(ctx.createdAtMs);
    return { durationMs: ms > 0n ? ms : 0n, measures: [] };
  },
  meterActual(request, usage) {
    check(request);
    return cost(request, usage.durationMs);
  },
  capacity: () => ({}),
};
