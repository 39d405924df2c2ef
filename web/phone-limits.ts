/**
 * The phone page's limits, as a person types them: three amounts in major units ("50.00") and a
 * currency, read exactly (parseAmount: string arithmetic, never floats) and checked in the
 * person's words before the broker checks them again (docs/protocol.md §Binding, limits).
 *
 * No DOM here, so a unit test reads it in Node (test/unit/phone-limits.test.ts).
 */
import type { Limits } from "../src/core/agreement.ts";
import { CURRENCY_EXPONENTS, formatAmount, parseAmount } from "../src/core/money.ts";

/** The three amount fields, by the names the forms use. */
export type LimitField = "autoMax" | "autoDaily" | "max";

export const LIMIT_LABELS: Readonly<Record<LimitField, string>> = {
  autoMax: "Auto-confirm up to",
  autoDaily: "Auto-confirm per day",
  max: "Largest payment",
};

export const LIMIT_HINTS: Readonly<Record<LimitField, string>> = {
  autoMax: "A payment up to this amount is paid without asking you.",
  autoDaily: "Payments paid without asking add up to at most this much per day (UTC).",
  max: "No payment from this terminal may be more than this, asked or not.",
};

/** The defaults the pair form starts with (the issue's contract: 50.00, 200.00, 500.00). */
export const DEFAULT_LIMIT_TEXT: Readonly<Record<LimitField, string>> = { autoMax: "50.00", autoDaily: "200.00", max: "500.00" };

export const CURRENCIES: readonly string[] = Object.keys(CURRENCY_EXPONENTS).sort();

/** How an amount is written in this currency, for a message: "like 50.00 (CNY has 2 decimals)". */
function amountShape(currency: string): string {
  const exp = CURRENCY_EXPONENTS[currency] ?? 2;
  return exp === 0 ? `like 50 (${currency} has no decimals)` : `like 50.${"0".repeat(exp)} (${currency} has ${exp} decimals)`;
}

export type LimitsReading = { readonly ok: true; readonly limits: Limits } | { readonly ok: false; readonly field: LimitField | null; readonly message: string };

/**
 * Reads the typed limits. The checks are the broker's (src/core/agreement.ts limitsProblem), in
 * the order a person fixes them: each amount readable, the largest payment above zero, then the
 * auto-confirm amount within the two others.
 */
export function readLimits(currency: string, text: Readonly<Record<LimitField, string>>): LimitsReading {
  if (CURRENCY_EXPONENTS[currency] === undefined) return { ok: false, field: null, message: `${currency} is not a currency this broker knows.` };
  const minor: Partial<Record<LimitField, number>> = {};
  for (const f of ["autoMax", "autoDaily", "max"] as const) {
    const value = parseAmount(text[f], currency);
    if (value === null) {
      const typed = text[f].trim();
      return { ok: false, field: f, message: `${LIMIT_LABELS[f]}: ${typed === "" ? "enter an amount" : `“${typed}” is not an amount`}, ${amountShape(currency)}.` };
    }
    minor[f] = value;
  }
  const limits: Limits = { currency, autoConfirmMaxMinor: minor.autoMax!, autoConfirmDailyMinor: minor.autoDaily!, perPaymentMaxMinor: minor.max! };
  const money = (m: number) => formatAmount(m, currency);
  if (limits.perPaymentMaxMinor === 0) return { ok: false, field: "max", message: `${LIMIT_LABELS.max} must be more than ${money(0)}, or no payment could ever be made.` };
  if (limits.autoConfirmMaxMinor > limits.perPaymentMaxMinor) {
    return { ok: false, field: "autoMax", message: `${LIMIT_LABELS.autoMax} (${money(limits.autoConfirmMaxMinor)}) cannot be more than ${LIMIT_LABELS.max.toLowerCase()} (${money(limits.perPaymentMaxMinor)}).` };
  }
  if (limits.autoConfirmMaxMinor > limits.autoConfirmDailyMinor) {
    return { ok: false, field: "autoMax", message: `${LIMIT_LABELS.autoMax} (${money(limits.autoConfirmMaxMinor)}) cannot be more than the daily auto-confirm total (${money(limits.autoConfirmDailyMinor)}).` };
  }
  return { ok: true, limits };
}

/** One line for an agreement's limits. */
export function limitsLine(l: Limits): string {
  return `Auto-confirm up to ${formatAmount(l.autoConfirmMaxMinor, l.currency)}, at most ${formatAmount(l.autoConfirmDailyMinor, l.currency)} a day · largest payment ${formatAmount(l.perPaymentMaxMinor, l.currency)}`;
}
