/**
 * Money: integer minor units plus an ISO 4217 currency code. Never a float.
 *
 * Pure. The currency table gives each supported code its minor-unit exponent (ISO 4217), which
 * is all that parsing and formatting need.
 */
export const CURRENCY_EXPONENTS: Readonly<Record<string, number>> = Object.freeze({
  AUD: 2, BHD: 3, BRL: 2, CAD: 2, CHF: 2, CNY: 2, CZK: 2, DKK: 2, EUR: 2, GBP: 2, HKD: 2, HUF: 2,
  IDR: 2, INR: 2, ISK: 0, JOD: 3, JPY: 0, KRW: 0, KWD: 3, MXN: 2, NOK: 2, NZD: 2, PLN: 2, SEK: 2,
  SGD: 2, THB: 2, TRY: 2, TWD: 2, USD: 2, VND: 0, ZAR: 2,
});

/** The largest amount anywhere in the system: far above any payment, far below 2^53. */
export const MAX_AMOUNT_MINOR = 1_000_000_000_000_000;

const CURRENCY_SYMBOLS: Readonly<Record<string, string>> = { CNY: "¥", JPY: "¥", EUR: "€", USD: "$", GBP: "£", KRW: "₩", INR: "₹" };

export function isCurrency(code: string): boolean {
  return Object.hasOwn(CURRENCY_EXPONENTS, code);
}

export function isAmountMinor(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0 && n <= MAX_AMOUNT_MINOR;
}

/**
 * Parses a decimal amount typed by a person ("12.50", "12", "0.5") into minor units, exactly,
 * by string arithmetic. Returns null for anything else (signs, exponents, too many decimals).
 */
export function parseAmount(text: string, currency: string): number | null {
  const exp = CURRENCY_EXPONENTS[currency];
  if (exp === undefined) return null;
  const m = /^(\d{1,16})(?:\.(\d+))?$/.exec(text.trim());
  if (m === null) return null;
  const frac = m[2] ?? "";
  if (frac.length > exp) return null;
  const minor = Number(m[1]! + frac.padEnd(exp, "0"));
  return isAmountMinor(minor) ? minor : null;
}

/** Whole and fractional digits of a non-negative amount: (12805, 2) → ["128", "05"]. */
function splitMinor(minor: number, exp: number): [whole: string, fraction: string] {
  const digits = String(minor).padStart(exp + 1, "0");
  return [digits.slice(0, digits.length - exp), digits.slice(digits.length - exp)];
}

/** Minor units as a person types them, the inverse of parseAmount: plainAmount(5000, "CNY") === "50.00". */
export function plainAmount(minor: number, currency: string): string {
  const exp = CURRENCY_EXPONENTS[currency] ?? 2;
  const [whole, fraction] = splitMinor(minor, exp);
  return exp === 0 ? whole : `${whole}.${fraction}`;
}

/** Formats minor units for people: formatAmount(12800, "CNY") === "¥128.00". */
export function formatAmount(minor: number, currency: string): string {
  const exp = CURRENCY_EXPONENTS[currency] ?? 2;
  const negative = minor < 0;
  const [digits, fraction] = splitMinor(Math.abs(minor), exp);
  const whole = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const body = exp === 0 ? whole : `${whole}.${fraction}`;
  const symbol = CURRENCY_SYMBOLS[currency];
  return `${negative ? "-" : ""}${symbol ?? ""}${body}${symbol === undefined ? ` ${currency}` : ""}`;
}
