// js-tiered: a metered SaaS provider with volume-discounted vCPU tiers, in JavaScript.
// Built with componentize-js (StarlingMonkey) against `wit/` by scripts/build-polyglot.sh.
// WIT mapping: records are objects with camelCase fields, u64 arrives as BigInt, `option`
// is undefined/null or the value, and a thrown { tag, val } is the `backend-error` result.
import { getAll } from 'wasi:config/store@0.2.0-rc.1';
import * as D from './decimal.js';
import { BackendError, settings, validate, price, quantities, encodeHandle, decodeHandle } from './pricing.js';

const VERSION = '0.1.0';

// The configuration is fixed for an instance's life, so it is parsed once per instance (a
// broken one is re-read, and fails, on every call). Nothing about sandboxes is kept.
let cached;

function config() {
  if (cached) return cached;
  let entries;
  try {
    entries = getAll();
  } catch (e) {
    throw new BackendError('unavailable', `configuration store failed: ${e?.payload?.val ?? e}`);
  }
  cached = settings(entries);
  return cached;
}

// Every fallible export goes through here so a failure always leaves as the WIT variant.
function guarded(f) {
  return (...args) => {
    try {
      return f(...args);
    } catch (e) {
      if (e instanceof BackendError) throw { tag: e.tag, val: e.message };
      throw { tag: 'internal', val: `js-tiered: ${e?.message ?? String(e)}` };
    }
  };
}

function lifetimeMs(ctx) {
  const ms = BigInt(ctx.nowMs) - BigInt(ctx.createdAtMs);
  return ms > 0n ? ms : 0n;
}

export const backend = {
  info() {
    let s;
    try {
      s = config();
    } catch {
      s = settings([]); // `info` must not fail: the defaults stand in for a broken config
    }
    return {
      id: 'js-tiered',
      name: 'Tiered SaaS provider (JavaScript)',
      version: VERSION,
      kind: 'saas',
      currency: s.currency,
      regions: s.regions,
      startupLatencyMs: s.startupLatencyMs,
      capabilities: ['status'],
    };
  },

  estimateCost: guarded((request) => {
    const s = config();
    validate(s, request);
    return price(s, request, BigInt(request.maxDurationSecs) * 1000n);
  }),

  create: guarded((request) => {
    const s = config();
    validate(s, request);
    return { handle: encodeHandle(request), region: request.region ?? s.regions[0] };
  }),

  status: guarded((ctx) => {
    const h = decodeHandle(ctx.handle);
    const expired = lifetimeMs(ctx) >= BigInt(ctx.request.maxDurationSecs) * 1000n;
    return { state: expired ? 'stopped' : 'running', detail: `${h.id}: ${expired ? 'expired' : 'running'}` };
  }),

  // Usage comes from the context alone: a second destroy, or an unknown handle, reports
  // the same usage, as the contract asks.
  destroy: guarded((ctx) => {
    const ms = lifetimeMs(ctx);
    const { vcpuSeconds, gibSeconds } = quantities(ctx.request, ms);
    return {
      durationMs: ms,
      measures: [
        { name: 'vcpu-seconds', quantity: D.format(vcpuSeconds), unit: 'vcpu-second' },
        { name: 'gib-seconds', quantity: D.format(gibSeconds), unit: 'gib-second' },
      ],
    };
  }),

  meterActual: guarded((request, usage) => {
    const s = config();
    validate(s, request);
    return price(s, request, BigInt(usage.durationMs));
  }),

  capacity: guarded(() => ({ maxSandboxes: undefined })),
};
