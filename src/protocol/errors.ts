/**
 * Every error code a device can receive, declared once, with the sentence it is sent with.
 *
 * The order is the order of precedence: when a message fails several checks, the broker
 * answers the first that applies (docs/protocol.md §Errors lists them in this order; a test
 * holds the two lists equal).
 */
export const ERROR_CODES = {
  rate_limited: "Too many messages from this device; slow down and retry later.",
  malformed: "The payload is not a JSON envelope of the documented shape.",
  unsupported_version: "The envelope's protocol version is not one this broker speaks.",
  sender_mismatch: "The envelope's sender is not the device this connection authenticated as.",
  misaddressed: "The envelope is not addressed to the broker.",
  busy: "The broker is past its capacity and starts no new payment now; retry after retryAfterMs.",
  bad_signature: "The signature does not verify against the sender's registered public key.",
  stale: "The timestamp is outside the broker's freshness window; check the device clock and send a new message.",
  backlog_full: "Too many messages wait for this device to receive them; subscribe to the down topic and acknowledge them before sending more.",
  message_id_reused: "This message id was already used for a different message; pick a new id.",
  unknown_type: "The broker does not handle this message type.",
  invalid_body: "The message body does not match the schema of its type.",
  wrong_device_kind: "This message type is for the other kind of device (terminal or phone).",
  pairing_code_invalid: "No live pairing code matches; check the code shown on the terminal.",
  pairing_code_expired: "The pairing code has expired or was replaced by a newer one; ask the terminal for a new code.",
  pairing_code_used: "The pairing code was already used; each code pairs once.",
  pairing_code_void: "The pairing code was voided after too many wrong tries; ask the terminal for a new code.",
  invalid_limits: "The limits are not acceptable (currency, amounts or their order).",
  agreement_not_found: "No active agreement with this id belongs to this device.",
  agreement_tampered: "The stored agreement failed its integrity check and cannot be used.",
  agreement_key_unavailable: "The stored agreement was sealed with a master key version the broker does not have.",
  not_bound: "This terminal has no active agreement for that login; bind it to the user's phone first.",
  unknown_merchant: "No merchant is registered under this id.",
  invalid_amount: "The amount must be a positive integer of minor units.",
  currency_mismatch: "The currency is not the one the agreement pays in.",
  over_limit: "The amount is above the agreement's per-payment maximum.",
  idempotency_conflict: "This idempotency key was already used for a payment with different fields.",
  payment_not_found: "No payment with this id belongs to this device.",
  payment_not_pending: "The payment is not in a state that allows this (it may already be final).",
  prompt_expired: "The confirmation prompt's deadline has passed.",
  task_expired: "The execution task's deadline has passed.",
  dynamic_link_mismatch: "The signed values do not match the payment (amount, currency, merchant, terminal or payee).",
  audit_entry_not_found: "No audit entry with this index is about a payment of this device.",
  audit_head_not_found: "The broker has signed no tree head of this size (or none that covers the entry).",
  unavailable: "The broker cannot store anything right now; retry the same message later.",
} as const satisfies Record<string, string>;

export type ErrorCode = keyof typeof ERROR_CODES;

export const ERROR_CODE_LIST = Object.keys(ERROR_CODES) as ErrorCode[];

export function isErrorCode(value: string): value is ErrorCode {
  return Object.hasOwn(ERROR_CODES, value);
}
