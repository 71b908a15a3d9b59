// Tiered pricing for a metered SaaS provider, independent of the bindings so it runs
// under Node for unit tests (`node --test extensions/js-tiered/test`).
import * as D from './decimal.js';

export class BackendError extends Error {
  /** `tag` is a WIT `backend-error` case, e.g. 'invalid-request'. */
  constructor(tag, message) {
    super(message);
    this.tag = tag;
  }
}

export const DEFAULTS = {
  currency: 'USD',
  // vCPU time in volume tiers: "UP-TO-VCPU-SECONDS:PRICE,…,PRICE" (last tier unbounded).
  vcpu_tiers: '3600:0.000014,36000:0.0000126,0.0000105',
  gib_second_price: '0.0000045',
  regions: 'us-east,eu-west',
  max_vcpus: '32',
  startup_latency_ms: '800',
};

function count(values, key, minimum) {
  const raw = String(values[key]).trim();
  if (!/^[0-9]+$/.test(raw) || BigInt(raw) < BigInt(minimum) || raw.length > 9) {
    throw new BackendError('internal', `config \`${key}\`: expected an integer >= ${minimum}, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

function decimal(key, raw) {
  try {
    return D.parse(raw.trim());
  } catch {
    throw new BackendError('internal', `config \`${key}\`: expected a decimal like 0.000014, got ${JSON.stringify(raw)}`);
  }
}

/** Parse the provider's configuration; a bad value is an `internal` error naming the key. */
export function settings(configEntries) {
  const values = { ...DEFAULTS };
  for (const [k, v] of configEntries) if (k in DEFAULTS) values[k] = v;
  const currency = values.currency.trim();
  if (!/^[A-Z]{3}$/.test(currency)) {
    throw new BackendError('internal', `config \`currency\`: expected a code like USD, got ${JSON.stringify(currency)}`);
  }
  const parts = values.vcpu_tiers.split(',').map((p) => p.trim()).filter(Boolean);
  if (parts.length === 0) throw new BackendError('internal', 'config `vcpu_tiers`: no tiers');
  let from = D.ZERO;
  const tiers = parts.map((part, i) => {
    const last = i === parts.length - 1;
    const [limit, price] = last ? [null, part] : part.split(':');
    if (!last && price === undefined) {
      throw new BackendError('internal', `config \`vcpu_tiers\`: expected LIMIT:PRICE, got ${JSON.stringify(part)}`);
    }
    const upTo = limit === null ? null : decimal('vcpu_tiers', limit);
    if (upTo !== null && D.cmp(upTo, from) <= 0) {
      throw new BackendError('internal', 'config `vcpu_tiers`: limits must increase');
    }
    const tier = { from, upTo, price: decimal('vcpu_tiers', price) };
    if (upTo !== null) from = upTo;
    return tier;
  });
  return {
    currency,
    tiers,
    gibSecondPrice: decimal('gib_second_price', values.gib_second_price),
    regions: values.regions.split(',').map((r) => r.trim()).filter(Boolean),
    maxVcpus: count(values, 'max_vcpus', 1),
    startupLatencyMs: count(values, 'startup_latency_ms', 0),
  };
}

/** Reject malformed requests (`invalid-request`) and ones this provider cannot serve (`unsupported`). */
export function validate(s, req) {
  if (!req.template) throw new BackendError('invalid-request', 'template must not be empty');
  if (req.resources.vcpus < 1) throw new BackendError('invalid-request', `resources.vcpus must be at least 1, got ${req.resources.vcpus}`);
  if (req.resources.memoryMib < 1) throw new BackendError('invalid-request', `resources.memory-mib must be at least 1, got ${req.resources.memoryMib}`);
  if (BigInt(req.maxDurationSecs) < 1n) throw new BackendError('invalid-request', 'max-duration-secs must be at least 1, got 0');
  if (req.resources.gpu != null) throw new BackendError('unsupported', `no GPUs on this provider (asked for ${JSON.stringify(req.resources.gpu)})`);
  if (req.resources.vcpus > s.maxVcpus) throw new BackendError('unsupported', `resources.vcpus ${req.resources.vcpus} exceeds the provider's maximum (${s.maxVcpus})`);
  if (req.region != null && s.regions.length > 0 && !s.regions.includes(req.region)) {
    throw new BackendError('unsupported', `region ${JSON.stringify(req.region)} is not one of ${s.regions.join(', ')}`);
  }
}

/** vCPU-seconds and GiB-seconds for a lifetime, exactly (ms / 1000, MiB / 1024). */
export function quantities(req, durationMs) {
  const seconds = D.ratio(BigInt(durationMs), 3);
  const vcpuSeconds = D.mul(D.int(req.resources.vcpus), seconds);
  // 1/1024 = 0.0009765625 exactly, so GiB stays an exact decimal.
  const gib = D.mul(D.int(req.resources.memoryMib), D.ratio(9765625n, 10));
  return { vcpuSeconds, gibSeconds: D.mul(gib, seconds) };
}

/** The price of `durationMs` of this sandbox: { total, lineItems } with decimal strings. */
export function price(s, req, durationMs) {
  const { vcpuSeconds, gibSeconds } = quantities(req, durationMs);
  const items = [];
  s.tiers.forEach((tier, i) => {
    if (D.cmp(vcpuSeconds, tier.from) <= 0) return;
    const top = tier.upTo === null ? vcpuSeconds : D.min(vcpuSeconds, tier.upTo);
    const qty = D.sub(top, tier.from);
    const label = tier.upTo === null
      ? `vCPU time, tier ${i + 1} (beyond ${D.format(tier.from)} vcpu-seconds)`
      : `vCPU time, tier ${i + 1} (${D.format(tier.from)}-${D.format(tier.upTo)} vcpu-seconds)`;
    items.push({ description: label, quantity: qty, unit: 'vcpu-second', unitPrice: tier.price });
  });
  items.push({ description: 'Memory', quantity: gibSeconds, unit: 'gib-second', unitPrice: s.gibSecondPrice });
  let total = D.ZERO;
  const lineItems = items.map((it) => {
    const amount = D.mul(it.quantity, it.unitPrice);
    total = D.add(total, amount);
    return {
      description: it.description,
      quantity: D.format(it.quantity),
      unit: it.unit,
      unitPrice: D.format(it.unitPrice),
      amount: D.format(amount),
    };
  });
  if (D.digits(total) > 28) {
    throw new BackendError('invalid-request', 'the price needs more than 28 significant digits: resources or duration out of range');
  }
  return { total: { amount: D.format(total), currency: s.currency }, lineItems };
}

/** The opaque handle: what later calls need, so the extension keeps no state. */
export function encodeHandle(req) {
  return JSON.stringify({ v: 1, id: req.sandboxId, vcpus: req.resources.vcpus });
}

export function decodeHandle(handle) {
  let h;
  try {
    h = JSON.parse(handle);
  } catch {
    throw new BackendError('not-found', 'handle is not one this provider issued');
  }
  if (!h || h.v !== 1 || typeof h.id !== 'string') throw new BackendError('not-found', 'handle is not one this provider issued');
  return h;
}
