/** How the simulator and the demo show things to people: one wording, one look. */
import type { Limits } from "../src/core/agreement.ts";
import { formatAmount } from "../src/core/money.ts";

/** What a terminal's payment_update steps mean, in words. */
export const STEP_TEXT: Readonly<Record<string, string>> = {
  accepted: "accepted",
  prompt_sent: "asking the phone…",
  waiting_for_phone: "the phone is offline: the prompt waits for it…",
  prompt_delivered: "the phone shows the prompt",
  confirmed: "confirmed",
  executing: "the phone is paying…",
};

export function limitsText(l: Limits): string {
  return `auto-confirm up to ${formatAmount(l.autoConfirmMaxMinor, l.currency)} (at most ${formatAmount(l.autoConfirmDailyMinor, l.currency)} a day), any payment up to ${formatAmount(l.perPaymentMaxMinor, l.currency)}`;
}

/** A pairing code the way a TV shows it: big and boxed. */
export function codeBox(code: string): string {
  const line = `   ${code.split("").join(" ")}   `;
  const bar = "─".repeat(line.length);
  return [`┌${bar}┐`, `│${line}│`, `└${bar}┘`].join("\n");
}
