/**
 * docs/protocol.md §Conventions: the length of a string is its number of Unicode code points,
 * what Python's len(), Go's utf8.RuneCountInString and Rust's chars().count() give. Characters
 * outside the Basic Multilingual Plane (an emoji) are two UTF-16 units in JavaScript but one
 * code point, so they sit right on the line a broker counting `.length` would draw elsewhere.
 * A table test over every length-limited string of the body and payload schemas: the limit in
 * code points is accepted, one more is refused.
 */
import { describe, expect, it } from "vitest";
import type { z } from "zod";
import { payloadSchema } from "../../src/protocol/envelope.ts";
import { upBodies } from "../../src/protocol/messages.ts";

/** U+1F600, one code point, two UTF-16 units. */
const EMOJI = "\u{1F600}";
const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 0, autoConfirmDailyMinor: 0, perPaymentMaxMinor: 100 };
const PAY = "pay_aaaaaaaaaaaaaaaaaaaa";

/** A valid value of each schema that has a length-limited string, keyed like the paths below. */
const VALID: Record<string, Record<string, unknown>> = {
  bind_request: { login: "alice", terminal: { model: "TV", serial: "1", displayName: "Living room" } },
  bind_confirm: { code: "BCDF-GHJK", limits: LIMITS },
  pay_request: { login: "alice", merchantId: "m1", amountMinor: 1, currency: "CNY", orderRef: "o1", idempotencyKey: "k1", description: "coffee" },
  payment_approve: { paymentId: PAY, amountMinor: 1, currency: "CNY", merchantName: "Coffee", terminalName: "TV" },
  payment_execute: { paymentId: PAY, amountMinor: 1, currency: "CNY", payee: "m1" },
  ping: { echo: "hello" },
  payload: { v: 1, type: "ping", id: "p1", from: "dmw3am46w5weex4a4fqr", to: "broker", ts: 0, body: {} },
};

/** Every string field with a maximum length (a pattern-only string has none), as "schema.path". */
function maxLengthFields(schema: z.ZodType, path: string, out: Map<string, number>): Map<string, number> {
  const def = schema._zod.def as { type: string; shape?: Record<string, z.ZodType>; innerType?: z.ZodType; element?: z.ZodType };
  if (def.type === "object") for (const [k, v] of Object.entries(def.shape!)) maxLengthFields(v, `${path}.${k}`, out);
  else if (def.type === "optional") maxLengthFields(def.innerType!, path, out);
  else if (def.type === "array") maxLengthFields(def.element!, `${path}[]`, out);
  else if (def.type === "string") {
    const max = (schema as z.ZodString).maxLength;
    if (max !== null) out.set(path, max);
  }
  return out;
}

const FIELDS = new Map<string, number>();
for (const [type, schema] of Object.entries(upBodies)) maxLengthFields(schema, type, FIELDS);
maxLengthFields(payloadSchema, "payload", FIELDS);

/** The fields in docs/protocol.md with their documented limits (§Messages, §Envelope, §Limits). */
const DOCUMENTED: Record<string, number> = {
  "bind_request.login": 128,
  "bind_request.terminal.model": 64,
  "bind_request.terminal.serial": 64,
  "bind_request.terminal.displayName": 64,
  "bind_confirm.code": 32,
  "pay_request.login": 128,
  "pay_request.currency": 8,
  "pay_request.orderRef": 64,
  "pay_request.description": 140,
  "payment_approve.currency": 8,
  "payment_approve.merchantName": 128,
  "payment_approve.terminalName": 128,
  "payment_execute.currency": 8,
  "payment_execute.payee": 64,
  "ping.echo": 256,
  "payload.from": 64,
  "payload.to": 64,
};

function withField(path: string, value: string): { schema: z.ZodType; input: Record<string, unknown> } {
  const [root, ...rest] = path.split(".");
  const schema = root === "payload" ? payloadSchema : upBodies[root as keyof typeof upBodies];
  const input = structuredClone(VALID[root!]!);
  let at: Record<string, unknown> = input;
  for (const k of rest.slice(0, -1)) at = at[k] as Record<string, unknown>;
  at[rest.at(-1)!] = value;
  return { schema, input };
}

describe("string lengths are counted in Unicode code points", () => {
  it("the table below covers every length-limited string the schemas have, with the documented limit", () => {
    expect(Object.fromEntries(FIELDS)).toEqual(DOCUMENTED);
  });

  it("every sample body is valid as it stands", () => {
    for (const root of Object.keys(VALID)) {
      const schema = root === "payload" ? payloadSchema : upBodies[root as keyof typeof upBodies];
      expect({ root, ok: schema.safeParse(VALID[root]).success }).toEqual({ root, ok: true });
    }
  });

  it.each(Object.entries(DOCUMENTED))("%s: %i characters outside the BMP are accepted, one more is refused", (path, max) => {
    const atLimit = withField(path, EMOJI.repeat(max));
    const over = withField(path, EMOJI.repeat(max + 1));
    expect(EMOJI.repeat(max).length).toBe(2 * max); // twice the limit in UTF-16 units
    expect(atLimit.schema.safeParse(atLimit.input).success).toBe(true);
    const refused = over.schema.safeParse(over.input);
    expect(refused.success).toBe(false);
    expect(refused.error?.issues[0]).toMatchObject({ code: "too_big", maximum: max, path: path.split(".").slice(1) });
  });

  it("a text field counts code points after trimming: a lone character outside the BMP is one, and enough", () => {
    const one = withField("bind_request.login", `  ${EMOJI}  `);
    expect(one.schema.safeParse(one.input)).toMatchObject({ success: true, data: { login: EMOJI } });
    const padded = withField("pay_request.orderRef", ` ${EMOJI.repeat(64)} `);
    expect(padded.schema.safeParse(padded.input).success).toBe(true);
  });
});
