/**
 * The agreement: what a binding leaves behind — terminal device info, the login on the
 * terminal, the user and phone, the limits the user chose, and the usage so far.
 *
 * Pure: no clock, no randomness, no I/O. The service seals it with the master key before it
 * touches the database (src/service/sealing.ts).
 */
import { CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR, isAmountMinor } from "./money.ts";

export interface Limits {
  readonly currency: string;
  /** A payment up to this amount may be confirmed without asking the phone. */
  readonly autoConfirmMaxMinor: number;
  /** Auto-confirmed payments of one UTC day may add up to this much. */
  readonly autoConfirmDailyMinor: number;
  /** No payment from this terminal may exceed this amount, confirmed or not. */
  readonly perPaymentMaxMinor: number;
}

export interface Usage {
  readonly paymentCount: number;
  /** The UTC day (YYYY-MM-DD) the "today" totals belong to; null before the first payment. */
  readonly day: string | null;
  readonly todayTotalMinor: number;
  readonly todayAutoMinor: number;
  /** Auto-confirmations in a row since the user last confirmed on the phone. */
  readonly consecutiveAuto: number;
  readonly lastUsedMs: number | null;
}

export interface TerminalInfo {
  readonly deviceId: string;
  readonly model: string;
  readonly serial: string;
  readonly displayName: string;
}

export interface Agreement {
  readonly id: string;
  readonly terminal: TerminalInfo;
  readonly login: string;
  readonly userId: string;
  readonly phoneId: string;
  readonly limits: Limits;
  readonly usage: Usage;
  readonly status: "active";
  /** Bumped by every change; the sealed row carries it too. */
  readonly version: number;
  readonly boundAtMs: number;
}

export const EMPTY_USAGE: Usage = Object.freeze({ paymentCount: 0, day: null, todayTotalMinor: 0, todayAutoMinor: 0, consecutiveAuto: 0, lastUsedMs: null });

/** Why a set of limits is refused, or null when it is acceptable. */
export function limitsProblem(l: Limits): string | null {
  if (!Object.hasOwn(CURRENCY_EXPONENTS, l.currency)) return `currency ${l.currency} is not a supported ISO 4217 code`;
  for (const [name, v] of [
    ["autoConfirmMaxMinor", l.autoConfirmMaxMinor],
    ["autoConfirmDailyMinor", l.autoConfirmDailyMinor],
    ["perPaymentMaxMinor", l.perPaymentMaxMinor],
  ] as const) {
    if (!isAmountMinor(v)) return `${name} must be an integer number of minor units from 0 to ${MAX_AMOUNT_MINOR}`;
  }
  if (l.perPaymentMaxMinor === 0) return "perPaymentMaxMinor must be above 0, or no payment could ever be made";
  if (l.autoConfirmMaxMinor > l.perPaymentMaxMinor) return "autoConfirmMaxMinor cannot exceed perPaymentMaxMinor";
  if (l.autoConfirmMaxMinor > l.autoConfirmDailyMinor) return "autoConfirmMaxMinor cannot exceed autoConfirmDailyMinor";
  return null;
}

export function newAgreement(a: {
  id: string;
  terminal: TerminalInfo;
  login: string;
  userId: string;
  phoneId: string;
  limits: Limits;
  nowMs: number;
}): Agreement {
  return { id: a.id, terminal: a.terminal, login: a.login, userId: a.userId, phoneId: a.phoneId, limits: a.limits, usage: EMPTY_USAGE, status: "active", version: 1, boundAtMs: a.nowMs };
}

export function withLimits(a: Agreement, limits: Limits): Agreement {
  return { ...a, limits, version: a.version + 1 };
}
