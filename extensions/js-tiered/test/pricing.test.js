// Unit tests for the tiered pricing under Node: node --test extensions/js-tiered/test
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as D from '../src/decimal.js';
import { settings, price, validate, BackendError } from '../src/pricing.js';

const req = (vcpus, memoryMib) => ({ sandboxId: 's', template: 'base', resources: { vcpus, memoryMib, diskMib: 0 },
  maxDurationSecs: 3600n });

test('decimals format without exponent or float error', () => {
  assert.equal(D.format(D.mul(D.parse('0.1'), D.parse('0.2'))), '0.02');
  assert.equal(D.format(D.add(D.parse('0.1'), D.parse('0.2'))), '0.3');
  assert.equal(D.format(D.parse('0.0000100')), '0.00001');
  assert.equal(D.format(D.parse('12.000')), '12');
  assert.throws(() => D.parse('1e-5'));
  assert.throws(() => D.parse('-1'));
});

test('vCPU time crosses tiers with a line item per tier and exact amounts', () => {
  const s = settings([]);
  const { total, lineItems } = price(s, req(4, 1024), 3_600_000n); // 14400 vcpu-seconds
  const vcpu = lineItems.filter((li) => li.unit === 'vcpu-second');
  assert.deepEqual(vcpu.map((li) => li.quantity), ['3600', '10800']);
  let sum = D.ZERO;
  for (const li of lineItems) {
    assert.equal(D.format(D.mul(D.parse(li.quantity), D.parse(li.unitPrice))), li.amount);
    sum = D.add(sum, D.parse(li.amount));
  }
  assert.equal(D.format(sum), total.amount);
});

test('volume discount: the second hour costs less than the first', () => {
  const s = settings([]);
  const one = D.parse(price(s, req(1, 1024), 3_600_000n).total.amount);
  const two = D.parse(price(s, req(1, 1024), 7_200_000n).total.amount);
  assert.equal(D.cmp(D.sub(two, one), one), -1);
});

test('a shorter meter never exceeds the full estimate', () => {
  const s = settings([]);
  const full = D.parse(price(s, req(3, 3000), 36_000_000n).total.amount);
  for (const ms of [0n, 1n, 999n, 3_600_000n, 35_999_999n, 36_000_000n]) {
    assert.ok(D.cmp(D.parse(price(s, req(3, 3000), ms).total.amount), full) <= 0);
  }
});

test('bad config and bad requests name what is wrong', () => {
  assert.throws(() => settings([['gib_second_price', '4.5e-6']]), /gib_second_price/);
  assert.throws(() => validate(settings([]), { ...req(1, 1), resources: { vcpus: 0, memoryMib: 1 } }),
    (e) => e instanceof BackendError && e.tag === 'invalid-request' && /vcpus/.test(e.message));
  assert.throws(() => validate(settings([]), { ...req(1, 1), region: 'mars' }),
    (e) => e instanceof BackendError && e.tag === 'unsupported');
});
