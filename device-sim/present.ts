/** How the simulator and the demo show things to people: one wording, one look. */
import type { Limits } from "../src/core/agreement.ts";
import { formatAmount } from "../src/core/money.ts";

/**
 * What a terminal's payment_update steps mean, in words. The broker pushes an update only for
 * the last step of a transaction it did not answer the terminal in: "prompt_delivered" (the
 * phone's PUBACK), "executing" (the phone approved: the confirmation is in the same step),
 * "waiting_for_phone". The other steps are still events (payment_status lists them).
 */
export const STEP_TEXT: Readonly<Record<string, string>> = {
  accepted: "accepted",
  prompt_sent: "asking the phone…",
  waiting_for_phone: "the phone is offline: the prompt waits for it…",
  prompt_delivered: "the phone shows the prompt",
  confirmed: "confirmed",
  executing: "confirmed on the phone: the phone is paying…",
};

/**
 * What a payment_accepted says, in words: the answer carries the steps the broker took with it
 * (auto-confirmed and handed to the phone, or a prompt sent), since no update follows for them.
 * `again`: the answer to a retried request, naming a payment the terminal was already told of.
 */
export function acceptedText(b: { status?: unknown; mode?: unknown }, again = false): string {
  switch (b.status) {
    case "awaiting_confirmation":
      return again ? "still waiting for the phone's answer" : "prompt sent to the phone, waiting for its answer";
    case "executing":
      return b.mode === "auto" ? "auto-confirmed within the limits: the phone is paying…" : "confirmed on the phone: the phone is paying…";
    default:
      return `already ${String(b.status)}`;
  }
}

export function limitsText(l: Limits): string {
  return `auto-confirm up to ${formatAmount(l.autoConfirmMaxMinor, l.currency)} (at most ${formatAmount(l.autoConfirmDailyMinor, l.currency)} a day), any payment up to ${formatAmount(l.perPaymentMaxMinor, l.currency)}`;
}

/** A pairing code the way a TV shows it: big and boxed. */
export function codeBox(code: string): string {
  const line = `   ${code.split("").join(" ")}   `;
  const bar = "─".repeat(line.length);
  return [`┌${bar}┐`, `│${line}│`, `└${bar}┘`].join("\n");
}
