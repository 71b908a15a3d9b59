// Exact decimals for money: a BigInt of units at a scale (value = n / 10^scale).
// JavaScript numbers are binary floats, so no amount ever becomes a Number here.

const DECIMAL = /^[0-9]+(\.[0-9]+)?$/;

/** Parse a contract decimal string ("0.000014", "12"); throws on anything else. */
export function parse(text) {
  if (typeof text !== 'string' || !DECIMAL.test(text)) {
    throw new Error(`not a decimal string: ${JSON.stringify(text)}`);
  }
  const [whole, frac = ''] = text.split('.');
  return { n: BigInt(whole + frac), scale: frac.length };
}

/** An integer (BigInt or safe Number) as a decimal. */
export function int(value) {
  return { n: BigInt(value), scale: 0 };
}

/** n / 10^scale from integers, e.g. ratio(1500n, 3) = 1.5. */
export function ratio(n, scale) {
  return { n: BigInt(n), scale };
}

function align(a, b) {
  const scale = Math.max(a.scale, b.scale);
  return [a.n * 10n ** BigInt(scale - a.scale), b.n * 10n ** BigInt(scale - b.scale), scale];
}

export function add(a, b) {
  const [x, y, scale] = align(a, b);
  return { n: x + y, scale };
}

export function sub(a, b) {
  const [x, y, scale] = align(a, b);
  return { n: x - y, scale };
}

export function mul(a, b) {
  return { n: a.n * b.n, scale: a.scale + b.scale };
}

export function cmp(a, b) {
  const [x, y] = align(a, b);
  return x < y ? -1 : x > y ? 1 : 0;
}

export function min(a, b) {
  return cmp(a, b) <= 0 ? a : b;
}

export const ZERO = { n: 0n, scale: 0 };

/** Significant digits of the canonical form (the host accepts at most 28). */
export function digits(d) {
  return format(d).replace('.', '').replace(/^0+/, '').length;
}

/** The contract's string: digits, at most one '.', no sign, no exponent, no trailing zeros. */
export function format(d) {
  if (d.n < 0n) throw new Error('negative amount');
  let s = d.n.toString();
  if (d.scale === 0) return s;
  s = s.padStart(d.scale + 1, '0');
  const whole = s.slice(0, s.length - d.scale);
  const frac = s.slice(s.length - d.scale).replace(/0+$/, '');
  return frac ? `${whole}.${frac}` : whole;
}
