/**
 * Keeps docs/protocol.md honest: the document a stranger writes a device from must say what the
 * code does. It checks the error table against ERROR_CODES (names and order), every message
 * type, CONNECT refusal and default limit it names, the currency table, the payment field
 * patterns against the body schemas, which device kind may send which message against the
 * real handlers, the answer each payment message gets and the auto and prompted flow diagrams
 * against a real run of the handlers, and every test vector against the real signing code and
 * the broker's own checks. When python3 with `cryptography` is installed, it also runs the
 * document's Python sketch against the vectors, against payment messages of that run, and
 * against broker messages that break each rule a device must check (its MQTT part runs against
 * a real broker in test/e2e/python-device.test.ts). It checks the audit log vectors (entries, leaf
 * hashes, roots, proofs, a signed head and a receipt) against the broker's Merkle code and against
 * the RFC 9162 definitions written again here, and, when a python3 with PyNaCl is installed, runs
 * the document's receipt verifier against them, against tampered receipts and against the proofs
 * of the broker's code for every pair of tree sizes up to 40.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { DELIVERY_WINDOW } from "../../broker/delivery.ts";
import { MAX_SUBSCRIBES_PER_CONNECTION } from "../../broker/frame-guard.ts";
import { describe, expect, it } from "vitest";
import { computeVectors } from "../../scripts/vectors.ts";
import { consistencyProof, EMPTY_ROOT, headSignedBytes, inclusionPath, leafHash, rootOf, verifyConsistency, verifyInclusion } from "../../src/core/merkle.ts";
import { BROKER_OPTIONS } from "../../src/config.ts";
import { CURRENCY_EXPONENTS } from "../../src/core/money.ts";
import { FINAL_STATUSES } from "../../src/core/payment.ts";
import { CODE_ALPHABET, MAX_WRONG_TRIES } from "../../src/core/pairing.ts";
import { keyPairFromSeed, Signer, verify } from "../../src/crypto/ed25519.ts";
import { fromBase64, toBase32, toBase64 } from "../../src/crypto/encoding.ts";
import { DEVICE_ID_RE, deviceIdFor } from "../../src/crypto/ids.ts";
import { BROKER_ID, MESSAGE_ID_RE, parseEnvelope, payloadSchema, sealEnvelope, type Payload } from "../../src/protocol/envelope.ts";
import { ERROR_CODES } from "../../src/protocol/errors.ts";
import { downBodies, upBodies } from "../../src/protocol/messages.ts";
import { NONCE_RE, parseToken, tokenSignedBytes } from "../../src/protocol/token.ts";
import { TOPIC_ROOT, downTopic, upTopic } from "../../src/protocol/topics.ts";
import { BINDING_DEFAULTS, registerBinding } from "../../src/service/binding.ts";
import { CONNECT_REFUSALS, ConnectAuthenticator } from "../../src/service/connect.ts";
import { Inbox } from "../../src/service/inbox.ts";
import { signedDown } from "../../src/service/outgoing.ts";
import { PAYMENT_DEFAULTS, Payments } from "../../src/service/payments.ts";
import { registerDevice } from "../../src/service/devices.ts";
import { addMerchant, creditWallet } from "../../src/service/ledger.ts";
import { Keyring } from "../../src/crypto/keyring.ts";
import { openDatabase } from "../../src/store/db.ts";
import { DeviceRepo } from "../../src/store/devices.ts";
import { AUDIT_KINDS } from "../../src/store/audit.ts";

const DOC = readFileSync(new URL("../../docs/protocol.md", import.meta.url), "utf8");
const utf8 = new TextEncoder();
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const fromHex = (h: string) => new Uint8Array(Buffer.from(h, "hex"));

/** The text of a `## title` section, up to the next `## ` heading. */
function section(title: string): string {
  const start = DOC.indexOf(`\n## ${title}\n`);
  if (start < 0) throw new Error(`docs/protocol.md has no "## ${title}" section`);
  const end = DOC.indexOf("\n## ", start + 1);
  return DOC.slice(start, end < 0 ? undefined : end);
}

/** The first backticked word of each table row, in order: "| `code` | …". */
function rowKeys(text: string): string[] {
  return [...text.matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]!);
}

/** The labelled vector blocks: ```vector <label>\n<value>\n```, in document order. */
const DOC_VECTORS: [string, string][] = [...DOC.matchAll(/^```vector ([a-z0-9.-]+)\n([\s\S]*?)\n```$/gm)].map((m) => [m[1]!, m[2]!]);
const VECTORS = new Map(DOC_VECTORS);

function vec(label: string): string {
  const value = VECTORS.get(label);
  if (value === undefined) throw new Error(`docs/protocol.md has no vector block "${label}"`);
  return value;
}

const FRESHNESS_MS = Number(BROKER_OPTIONS.find((o) => o.key === "freshnessMs")!.def);
const optionDefault = (key: string) => BROKER_OPTIONS.find((o) => o.key === key)!.def;

/** The first markdown table after `header` (a line starting with it): its rows of cells. */
function tableAfter(text: string, header: string): string[][] {
  const lines = text.split("\n");
  const first = lines.findIndex((l) => l.startsWith(header));
  if (first < 0) throw new Error(`no table with the header "${header}"`);
  const rows: string[][] = [];
  for (const line of lines.slice(first + 2)) {
    if (!line.startsWith("|")) break;
    rows.push(line.slice(1, -1).split(" | ").map((c) => c.trim()));
  }
  return rows;
}

/** The backticked words of a table cell. */
const ticked = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

/** The text of a `### \`type\` (…)` message subsection, up to the next `### ` or `## ` heading. */
function messageSection(type: string): string {
  const text = section("Messages");
  const start = text.search(new RegExp(`^### \`${type}\` \\(`, "m"));
  if (start < 0) throw new Error(`§Messages has no subsection for ${type}`);
  const bodyStart = text.indexOf("\n", start) + 1;
  const end = text.slice(bodyStart).search(/^##/m);
  return text.slice(start, end < 0 ? undefined : bodyStart + end);
}

describe("docs/protocol.md §Errors", () => {
  const documented = rowKeys(section("Errors"));
  const declared = Object.keys(ERROR_CODES);

  it("documents every error code the broker declares", () => {
    expect(declared.filter((c) => !documented.includes(c))).toEqual([]);
  });

  it("documents no error code the broker does not declare", () => {
    expect(documented.filter((c) => !declared.includes(c))).toEqual([]);
  });

  it("lists the codes once each, in the precedence order of ERROR_CODES", () => {
    expect(documented).toEqual(declared);
  });
});

describe("docs/protocol.md §Messages", () => {
  const text = section("Messages");
  const headings = [...text.matchAll(/^### `([a-z_]+)` \((device → broker|broker → device)\)$/gm)].map((m) => ({ type: m[1]!, up: m[2] === "device → broker" }));

  it.each(Object.keys(upBodies))("documents the up message type %s (device → broker)", (type) => {
    expect(headings).toContainEqual({ type, up: true });
  });

  it.each(Object.keys(downBodies))("documents the down message type %s (broker → device)", (type) => {
    expect(headings).toContainEqual({ type, up: false });
  });

  it("lists the supported currencies and the pairing code alphabet as the code has them", () => {
    expect(text).toContain(`| one of ${Object.keys(CURRENCY_EXPONENTS).join(" ")} |`);
    expect(text).toContain(`8 letters from \`${CODE_ALPHABET}\``);
  });

  it("documents no message type the code does not have", () => {
    const known = (h: { type: string; up: boolean }) => Object.hasOwn(h.up ? upBodies : downBodies, h.type);
    expect(headings.filter((h) => !known(h))).toEqual([]);
  });
});

describe("docs/protocol.md §Messages: payments", () => {
  const text = section("Messages");

  it("gives the currency table of src/core/money.ts, minor-unit digits included", () => {
    const rows = tableAfter(text, "| minor-unit digits | currencies |");
    const documented = Object.fromEntries(rows.flatMap((r) => ticked(r[1]!).map((c) => [c, Number(r[0])])));
    expect(documented).toEqual({ ...CURRENCY_EXPONENTS });
  });

  it("gives a result reason for each final status and only for those", () => {
    const rows = tableAfter(text, "| reason | status | when |");
    expect([...new Set(rows.map((r) => ticked(r[1]!)[0]))].sort()).toEqual([...FINAL_STATUSES].sort());
    expect(downBodies.payment_result.shape.status.options.slice().sort()).toEqual([...FINAL_STATUSES].sort());
  });

  it("states the payment defaults and fixed limits the broker has", () => {
    expect(text).toContain(`(\`--prompt-ttl-ms\`, ${optionDefault("promptTtlMs")} ms by default)`);
    expect(text).toContain(`(\`--task-ttl-ms\`, ${optionDefault("taskTtlMs")} ms)`);
    expect(text).toContain(`(default ${optionDefault("maxConsecutiveAuto")}, option \`--max-consecutive-auto\`)`);
    expect(text).toContain(`may have ${PAYMENT_DEFAULTS.maxLivePerTerminal} unfinished payments`);
    expect(text).toContain(`and a phone ${PAYMENT_DEFAULTS.maxPromptsPerPhone} open prompts`);
    const limits = section("Limits");
    expect(limits).toContain(`| unfinished payments per terminal | ${PAYMENT_DEFAULTS.maxLivePerTerminal} | fixed | \`rate_limited\` |`);
    expect(limits).toContain(`| open prompts per phone | ${PAYMENT_DEFAULTS.maxPromptsPerPhone} | fixed | \`rate_limited\` |`);
    // The service's own defaults (used where no config is given) agree with the broker options.
    expect([PAYMENT_DEFAULTS.promptMs, PAYMENT_DEFAULTS.taskMs, PAYMENT_DEFAULTS.maxConsecutiveAuto].map(String)).toEqual([optionDefault("promptTtlMs"), optionDefault("taskTtlMs"), optionDefault("maxConsecutiveAuto")]);
    expect(String(BINDING_DEFAULTS.pairingTtlMs)).toBe(optionDefault("pairingTtlMs"));
  });

  /** Strings on both sides of the documented id and key patterns. */
  const SAMPLES = ["", "a", "A", "0", "-a", "a-b.c_d", "a:b", "a b", "ä", "a\n", "coffee-corner", "Coffee", "a".repeat(64), "a".repeat(65), "pay_" + "a".repeat(20), "pay_" + "a".repeat(19), "pay_" + "a".repeat(21), "pay_" + "2".repeat(20), "pay_" + "1".repeat(20), "pay_" + "A".repeat(20), "PAY_" + "a".repeat(20), "ag_" + "a".repeat(20)];

  const patterned = Object.keys(upBodies).flatMap((type) => {
    if (!/^(pay_|payment_|prompt_)/.test(type)) return [];
    return tableAfter(messageSection(type), "| body member | type | limits |").flatMap((r) => {
      const pattern = /`(\^[^`]+\$)`/.exec(r[2]!)?.[1];
      return pattern === undefined ? [] : [[type, ticked(r[0]!)[0]!, pattern] as const];
    });
  });

  it("documents a pattern for the ids and keys of every payment message", () => {
    const members = patterned.map(([type, member]) => `${type}.${member}`);
    for (const type of ["prompt_received", "payment_approve", "payment_decline", "payment_execute", "payment_cancel", "payment_status"]) expect(members).toContain(`${type}.paymentId`);
    expect(members).toEqual(expect.arrayContaining(["pay_request.merchantId", "pay_request.idempotencyKey"]));
  });

  it.each(patterned)("documents for %s.%s a pattern (%s) that accepts exactly what the body schema accepts", (type, member, pattern) => {
    const schema = (upBodies[type as keyof typeof upBodies] as unknown as { shape: Record<string, { safeParse(v: unknown): { success: boolean } }> }).shape[member];
    expect(schema, `${type} has no member ${member}`).toBeDefined();
    const re = new RegExp(pattern);
    for (const s of SAMPLES) expect({ s, documented: re.test(s) }).toEqual({ s, documented: schema!.safeParse(s).success });
  });
});

describe("docs/protocol.md: which device kind sends what, against the real handlers", () => {
  const paymentId = "pay_" + "a".repeat(20);
  const agreementId = "ag_" + "a".repeat(20);
  const limits = { currency: "CNY", autoConfirmMaxMinor: 100, autoConfirmDailyMinor: 1000, perPaymentMaxMinor: 10_000 };
  /** A body of the right shape for each type that has a handler beyond the foundation. */
  const BODIES: Record<string, Record<string, unknown>> = {
    bind_request: { login: "alice@tv", terminal: { model: "TV", serial: "SN1", displayName: "Living room TV" } },
    bind_confirm: { code: "BCDF-GHJK", limits },
    agreements_list: {},
    set_limits: { agreementId, limits },
    unbind: { agreementId },
    pay_request: { login: "alice@tv", merchantId: "coffee-corner", amountMinor: 100, currency: "CNY", orderRef: "order-1", idempotencyKey: "key-1" },
    prompt_received: { paymentId },
    payment_approve: { paymentId, amountMinor: 100, currency: "CNY", merchantName: "Coffee Corner", terminalName: "Living room TV" },
    payment_decline: { paymentId },
    payment_execute: { paymentId, amountMinor: 100, currency: "CNY", payee: "coffee-corner" },
    payment_cancel: { paymentId },
    payment_status: { paymentId },
  };

  /** type → the kinds the broker answers wrong_device_kind. */
  async function refusals(): Promise<Map<string, Set<"terminal" | "phone">>> {
    const nowMs = 1_767_225_600_000;
    const db = openDatabase(":memory:");
    try {
      const keyring = new Keyring(new Map([[1, new Uint8Array(32).fill(7)]]), 1);
      const log = pino({ level: "silent" });
      const devices = (["terminal", "phone"] as const).map((kind, i) => {
        const pair = keyPairFromSeed(new Uint8Array(32).fill(i + 1));
        const res = registerDevice(db, keyring, { kind, name: kind, publicKey: toBase64(pair.publicKey), ...(kind === "phone" ? { userId: "alice" } : {}) }, nowMs);
        if (!res.ok) throw new Error(res.error);
        return { kind, id: res.device.id, signer: new Signer(pair) };
      });
      const sent: Uint8Array[] = [];
      const inbox = new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log, freshnessMs: FRESHNESS_MS, clock: () => nowMs, publish: (_to, bytes) => sent.push(bytes) });
      registerBinding(inbox, db, { keyring: () => keyring, log, pairingTtlMs: BINDING_DEFAULTS.pairingTtlMs, bindRequestsPerWindow: BINDING_DEFAULTS.bindRequestsPerWindow, bindWindowMs: BINDING_DEFAULTS.bindWindowMs });
      new Payments(db, { keyring: () => keyring, log, deadlines: { promptMs: PAYMENT_DEFAULTS.promptMs, taskMs: PAYMENT_DEFAULTS.taskMs }, maxConsecutiveAuto: PAYMENT_DEFAULTS.maxConsecutiveAuto, maxLivePerTerminal: PAYMENT_DEFAULTS.maxLivePerTerminal, maxPromptsPerPhone: PAYMENT_DEFAULTS.maxPromptsPerPhone }).register(inbox);
      const asked = new Map<string, { type: string; kind: "terminal" | "phone" }>();
      for (const [type, body] of Object.entries(BODIES)) {
        for (const d of devices) {
          const id = `${type}.${d.kind}`;
          asked.set(id, { type, kind: d.kind });
          inbox.submit(d.id, sealEnvelope({ v: 1, type, id, from: d.id, to: BROKER_ID, ts: nowMs, body }, (b) => d.signer.sign(b)).bytes);
        }
      }
      await inbox.idle();
      const refused = new Map<string, Set<"terminal" | "phone">>(Object.keys(BODIES).map((t) => [t, new Set()]));
      const answered = new Set<string>();
      for (const bytes of sent) {
        const parsed = parseEnvelope(bytes);
        if (!parsed.ok || parsed.msg.payload.re === undefined) continue;
        const q = asked.get(parsed.msg.payload.re);
        if (q === undefined) continue;
        answered.add(parsed.msg.payload.re);
        const body = parsed.msg.payload.body as { code?: string };
        if (parsed.msg.payload.type === "error") expect(body.code, `${parsed.msg.payload.re} is answered, not failed`).not.toBe("invalid_body");
        if (parsed.msg.payload.type === "error" && body.code === "wrong_device_kind") refused.get(q.type)!.add(q.kind);
      }
      expect([...asked.keys()].filter((id) => !answered.has(id))).toEqual([]);
      return refused;
    } finally {
      db.close();
    }
  }

  it("lists in the wrong_device_kind row exactly the types one kind may not send, and which kind may", async () => {
    const refused = await refusals();
    const row = tableAfter(section("Errors"), "| code | answers |").find((r) => r[0] === "`wrong_device_kind`")!;
    const restricted = [...refused].filter(([, kinds]) => kinds.size > 0).map(([type]) => type);
    expect(ticked(row[1]!).sort()).toEqual(restricted.sort());
    const [forTerminals, forPhones] = row[2]!.split("are for terminals");
    expect(ticked(forTerminals!).sort()).toEqual(restricted.filter((t) => refused.get(t)!.has("phone")).sort());
    expect(ticked(forPhones!.split("are for phones")[0]!).sort()).toEqual(restricted.filter((t) => refused.get(t)!.has("terminal")).sort());
    for (const [type, kinds] of refused) expect({ type, both: kinds.size === 2 }).toEqual({ type, both: false });
  });

  it("names in §Payments the sender and the answer of each payment message as the handlers have them", async () => {
    const refused = await refusals();
    const rows = tableAfter(section("Messages"), "| message | sent by | answered with |");
    const paymentTypes = Object.keys(upBodies).filter((t) => /^(pay_|payment_|prompt_)/.test(t));
    expect(rows.map((r) => ticked(r[0]!)[0]).sort()).toEqual(paymentTypes.sort());
    for (const r of rows) {
      const type = ticked(r[0]!)[0]!;
      const allowed = (["terminal", "phone"] as const).filter((k) => !refused.get(type)!.has(k));
      expect({ type, sentBy: r[1] }).toEqual({ type, sentBy: allowed.join(" or ") });
      expect(Object.keys(downBodies)).toContain(ticked(r[2]!)[0]);
    }
  });
});

/**
 * The broker's handlers (binding and payments, no MQTT) running the auto-confirmed and the
 * prompted flow of §Payments, then a decline, a cancel and a status query. Returns the answer
 * type of each payment message, each flow as diagram lines, and the payment messages seen.
 */
async function runPaymentFlows() {
  const nowMs = 1_767_225_600_000;
  const db = openDatabase(":memory:");
  try {
    const keyring = new Keyring(new Map([[1, new Uint8Array(32).fill(7)]]), 1);
    const log = pino({ level: "silent" });
    const [terminal, phone] = (["terminal", "phone"] as const).map((kind, i) => {
      const pair = keyPairFromSeed(new Uint8Array(32).fill(i + 1));
      const res = registerDevice(db, keyring, { kind, name: kind, publicKey: toBase64(pair.publicKey), ...(kind === "phone" ? { userId: "alice" } : {}) }, nowMs);
      if (!res.ok) throw new Error(res.error);
      return { id: res.device.id, label: kind === "terminal" ? "T" : "P", signer: new Signer(pair) };
    }) as [{ id: string; label: string; signer: Signer }, { id: string; label: string; signer: Signer }];
    expect(addMerchant(db, { id: "coffee-corner", name: "Coffee Corner" }, nowMs)).toEqual({ ok: true });
    expect(creditWallet(db, keyring, { userId: "alice", amountMinor: 1_000_000, currency: "CNY" }, nowMs).ok).toBe(true);

    const sent: Uint8Array[] = [];
    const inbox = new Inbox({ db, signer: new Signer(keyPairFromSeed(new Uint8Array(32).fill(9))), log, freshnessMs: FRESHNESS_MS, clock: () => nowMs, publish: (_to, bytes) => sent.push(bytes) });
    const payments = new Payments(db, { keyring: () => keyring, log, deadlines: { promptMs: PAYMENT_DEFAULTS.promptMs, taskMs: PAYMENT_DEFAULTS.taskMs }, maxConsecutiveAuto: PAYMENT_DEFAULTS.maxConsecutiveAuto, maxLivePerTerminal: PAYMENT_DEFAULTS.maxLivePerTerminal, maxPromptsPerPhone: PAYMENT_DEFAULTS.maxPromptsPerPhone });
    registerBinding(inbox, db, { keyring: () => keyring, log, pairingTtlMs: BINDING_DEFAULTS.pairingTtlMs, bindRequestsPerWindow: BINDING_DEFAULTS.bindRequestsPerWindow, bindWindowMs: BINDING_DEFAULTS.bindWindowMs, onUnbound: (ctx, id) => payments.endForAgreement(ctx, id) });
    payments.register(inbox);

    const label = (to: string) => (to === terminal.id ? "T" : "P");
    /** A broker message as a diagram line: `B->T payment_update seq 3 step prompt_delivered re`. */
    const line = (p: Payload) => {
      const b = p.body as { seq?: unknown; step?: unknown };
      return [`B->${label(p.to)} ${p.type}`, typeof b.seq === "number" ? `seq ${b.seq}` : "", typeof b.step === "string" ? `step ${b.step}` : "", p.re !== undefined ? "re" : ""].filter((x) => x !== "").join(" ");
    };
    const drain = async (): Promise<Payload[]> => {
      await inbox.idle();
      return sent.splice(0).map((bytes) => {
        const parsed = parseEnvelope(bytes);
        if (!parsed.ok) throw new Error(parsed.detail);
        return parsed.msg.payload;
      });
    };
    const answers = new Map<string, Set<string>>();
    const seen: Payload[] = [];
    let n = 0;
    let flow: string[] = [];
    const send = async (d: typeof terminal, type: string, body: Record<string, unknown>) => {
      const id = `m${++n}`;
      inbox.submit(d.id, sealEnvelope({ v: 1, type, id, from: d.id, to: BROKER_ID, ts: nowMs, body }, (b) => d.signer.sign(b)).bytes);
      const out = await drain();
      const answer = out.filter((p) => p.re === id);
      expect(answer.map((p) => p.type), `${type} gets one answer`).toHaveLength(1);
      if (answer[0]!.type === "error") throw new Error(`${type}: ${JSON.stringify(answer[0]!.body)}`);
      if (/^(pay_|payment_|prompt_)/.test(type)) answers.set(type, (answers.get(type) ?? new Set()).add(answer[0]!.type));
      flow.push(`${d.label}->B ${type}`, ...out.map(line));
      seen.push(...out);
      return { answer: answer[0]!, out };
    };
    const pay = async (amountMinor: number) =>
      (await send(terminal, "pay_request", { login: "alice@tv", merchantId: "coffee-corner", amountMinor, currency: "CNY", orderRef: `order-${n}`, idempotencyKey: `key-${n}` })).answer.body.paymentId as string;
    const pushed = (type: string, paymentId: string) => seen.filter((p) => p.type === type && (p.body as { paymentId?: string }).paymentId === paymentId).at(-1)!.body as Record<string, unknown>;
    const echo = (b: Record<string, unknown>, keys: string[]) => Object.fromEntries(keys.map((k) => [k, b[k]]));

    const code = (await send(terminal, "bind_request", { login: "alice@tv", terminal: { model: "TV", serial: "SN1", displayName: "Living room TV" } })).answer.body.code;
    await send(phone, "bind_confirm", { code, limits: { currency: "CNY", autoConfirmMaxMinor: 2000, autoConfirmDailyMinor: 10_000, perPaymentMaxMinor: 100_000 } });

    flow = [];
    const autoId = await pay(1280);
    await send(phone, "payment_execute", echo(pushed("payment_task", autoId), ["paymentId", "amountMinor", "currency", "payee"]));
    const auto = flow;

    flow = [];
    const promptedId = await pay(12_800);
    inbox.delivered(phone.id, `${promptedId}.prompt`); // the phone's PUBACK of the prompt
    const afterPuback = await drain();
    flow.push(...afterPuback.map(line));
    seen.push(...afterPuback);
    const task = (await send(phone, "payment_approve", echo(pushed("payment_prompt", promptedId), ["paymentId", "amountMinor", "currency", "merchantName", "terminalName"]))).answer;
    await send(phone, "payment_execute", echo(task.body as Record<string, unknown>, ["paymentId", "amountMinor", "currency", "payee"]));
    const prompted = flow;
    flow = [];

    const declinedId = await pay(12_800);
    await send(phone, "prompt_received", { paymentId: declinedId });
    await send(phone, "payment_decline", { paymentId: declinedId });
    await send(terminal, "payment_cancel", { paymentId: await pay(1280) });
    await send(terminal, "payment_status", { paymentId: autoId });
    return { answers, flows: { "Auto-confirmed flow": auto, "Prompted flow": prompted }, seen };
  } finally {
    db.close();
  }
}

const PAYMENT_RUN = runPaymentFlows();

/** The messages of a flow diagram, as lines like those of runPaymentFlows (MQTT packets and notes left out). */
function diagramLines(title: string): string[] {
  const text = section("Messages");
  const start = text.indexOf("```mermaid\n", text.indexOf(`**${title}**`));
  const diagram = text.slice(start, text.indexOf("\n```\n", start));
  return diagram.split("\n").flatMap((l) => {
    const up = /^\s*([TP])->>B: ([a-z_]+)/.exec(l);
    if (up !== null) return [`${up[1]}->B ${up[2]}`];
    const down = /^\s*B-->>([TP]): ([a-z_]+)(.*)$/.exec(l);
    if (down === null) return [];
    const rest = down[3]!;
    const seq = /\bseq (\d+)/.exec(rest)?.[1];
    const step = /\bstep ([a-z_]+)/.exec(rest)?.[1];
    return [[`B->${down[1]} ${down[2]}`, seq !== undefined ? `seq ${seq}` : "", step !== undefined ? `step ${step}` : "", /\bre = /.test(rest) ? "re" : ""].filter((x) => x !== "").join(" ")];
  });
}

describe("docs/protocol.md §Payments: answers and flows, against a real run of the handlers", () => {
  it("names as the answer of each payment message the type the broker answers it with", async () => {
    const { answers } = await PAYMENT_RUN;
    const rows = tableAfter(section("Messages"), "| message | sent by | answered with |");
    expect(rows.map((r) => ticked(r[0]!)[0]).sort()).toEqual([...answers.keys()].sort());
    for (const r of rows) {
      const type = ticked(r[0]!)[0]!;
      const actual = [...answers.get(type)!];
      expect({ type, answers: actual }).toEqual({ type, answers: [ticked(r[2]!)[0]] });
      expect(messageSection(type).replace(/\s+/g, " "), `§${type} says what answers it`).toContain(`Answered with \`${actual[0]}\``);
    }
  });

  it.each(["Auto-confirmed flow", "Prompted flow"])("draws the %s with the messages, seq numbers, steps and answers the broker sends, in its order", async (title) => {
    const { flows } = await PAYMENT_RUN;
    expect(diagramLines(title)).toEqual(flows[title as keyof typeof flows]);
  });
});

describe("docs/protocol.md §Errors: the answers column", () => {
  it("names only message types the protocol has", () => {
    const rows = tableAfter(section("Errors"), "| code | answers |");
    expect(rows.map((r) => r[0])).toEqual(Object.keys(ERROR_CODES).map((c) => `\`${c}\``));
    for (const r of rows) for (const type of ticked(r[1]!)) expect(Object.keys(upBodies), `${r[0]} answers ${type}`).toContain(type);
  });
});

describe("docs/protocol.md §Connecting", () => {
  it("gives every CONNECT refusal with the CONNACK return code the broker sends", () => {
    const rows = [...section("Connecting").matchAll(/^\| `([a-z_]+)` \| `(\d)` /gm)].map((m) => [m[1]!, Number(m[2])] as const);
    expect(rows.map(([reason]) => reason).sort()).toEqual(Object.keys(CONNECT_REFUSALS).sort());
    for (const [reason, code] of rows) expect({ reason, code }).toEqual({ reason, code: CONNECT_REFUSALS[reason as keyof typeof CONNECT_REFUSALS].returnCode });
  });

  it("shows the token example of the test vectors", () => {
    expect(section("Connecting")).toContain(vec("token.password"));
  });
});

describe("docs/protocol.md §Limits", () => {
  const rows = [...section("Limits").matchAll(/^\| [^|]+ \| `([^`]+)`[^|]*\| `--([a-z-]+)` \/ `([A-Z_]+)` \|/gm)].map((m) => ({ def: m[1]!, flag: m[2]!, env: m[3]! }));

  it("states each option's default and environment variable as the broker has them", () => {
    for (const row of rows) {
      const option = BROKER_OPTIONS.find((o) => o.flag === row.flag);
      expect(option, `--${row.flag} is not a broker option`).toBeDefined();
      expect(row).toEqual({ def: option!.def, flag: option!.flag, env: option!.env });
    }
  });

  it("covers every broker option except the ones only an operator sees", () => {
    const operatorOnly = ["host", "port", "tls-port", "ws-port", "wss-port", "tls-cert", "tls-key", "ws-origin", "metrics-host", "metrics-port", "data-dir", "database", "cluster", "node-id", "log-level", "purge-every-ms", "audit-head-every-ms"];
    const deviceFacing = BROKER_OPTIONS.map((o) => o.flag).filter((f) => !operatorOnly.includes(f));
    expect(rows.map((r) => r.flag).sort()).toEqual(deviceFacing.sort());
  });

  it("states the delivery window and the SUBSCRIBE limit the broker has", () => {
    const text = section("Limits");
    expect(text).toContain(`| broker messages awaiting your receipt (the delivery window) | ${DELIVERY_WINDOW} per connection | fixed |`);
    expect(text).toContain(`| SUBSCRIBE and UNSUBSCRIBE packets | ${MAX_SUBSCRIBES_PER_CONNECTION} per connection | fixed | the connection is closed |`);
    expect(section("Delivery")).toContain(`At most ${DELIVERY_WINDOW} outbox messages are on their way to one connection`);
  });

  it("states the fixed binding limits the code has", () => {
    const text = section("Limits");
    expect(text).toContain(`| pairing codes per terminal | ${BINDING_DEFAULTS.bindRequestsPerWindow} in any ${BINDING_DEFAULTS.bindWindowMs / 60_000} minutes |`);
    expect(text).toContain(`| wrong tries per pairing code | ${MAX_WRONG_TRIES}, `);
  });
});

describe("docs/protocol.md wire rules", () => {
  it("quotes the code's patterns for message ids, nonces and device ids", () => {
    for (const re of [MESSAGE_ID_RE, NONCE_RE, DEVICE_ID_RE]) expect(DOC).toContain(re.source);
  });

  it("names the topics the code uses", () => {
    expect(upTopic("{id}")).toBe(`${TOPIC_ROOT}/{id}/up`);
    expect(section("Topics and ACL")).toContain("`hp/v1/{id}/up`");
    expect(section("Topics and ACL")).toContain("`hp/v1/{id}/down`");
    expect(downTopic("{id}")).toBe("hp/v1/{id}/down");
  });

  it("documents a type pattern that accepts exactly what the envelope schema accepts", () => {
    const documented = /^\| `type` \| string \| `([^`]+)` \|/m.exec(section("Envelope"))?.[1];
    expect(documented).toBeDefined();
    const re = new RegExp(documented!);
    const base: Payload = { v: 1, type: "ping", id: "x", from: "d", to: BROKER_ID, ts: 0, body: {} };
    for (const type of ["a", "ping", "pay_request2", "a".repeat(32), "a".repeat(33), "", "Ping", "1a", "a-b", "_a", "a b"]) {
      expect({ type, documented: re.test(type) }).toEqual({ type, documented: payloadSchema.safeParse({ ...base, type }).success });
    }
  });
});

describe("docs/protocol.md §Test vectors", () => {
  const seed = fromHex(vec("device.seed.hex"));
  const pair = keyPairFromSeed(seed);
  const signer = new Signer(pair);
  const deviceId = vec("device.id");
  const brokerPair = keyPairFromSeed(fromHex(vec("broker.seed.hex")));

  it("holds exactly what scripts/vectors.ts computes with the real code", () => {
    expect(DOC_VECTORS).toEqual(computeVectors());
  });

  it("derives the public key and the device id from the seed", () => {
    expect(seed).toHaveLength(32);
    expect(hex(pair.publicKey)).toBe(vec("device.public-key.hex"));
    expect(toBase64(pair.publicKey)).toBe(vec("device.public-key.base64"));
    const digest = new Uint8Array(createHash("sha256").update(pair.publicKey).digest());
    expect(hex(digest)).toBe(vec("device.public-key.sha256.hex"));
    expect(toBase32(digest)).toBe(vec("device.public-key.sha256.base32"));
    expect(deviceIdFor(pair.publicKey)).toBe(deviceId);
    expect("d" + vec("device.public-key.sha256.base32").slice(0, 19)).toBe(deviceId);
    expect(deviceId).toMatch(DEVICE_ID_RE);
  });

  it("repeats the same values in the worked example of §Device identity", () => {
    const example = section("Device identity");
    for (const label of ["device.public-key.hex", "device.public-key.sha256.hex", "device.public-key.sha256.base32", "device.id"]) expect(example).toContain(vec(label));
  });

  it("gives a connect token whose signed bytes and signature are the code's", () => {
    const ts = Number(vec("token.ts"));
    const nonce = vec("token.nonce");
    const signed = tokenSignedBytes(deviceId, ts, nonce);
    expect(hex(signed)).toBe(vec("token.signed-hex"));
    expect(hex(utf8.encode(vec("token.signed-text")))).toBe(vec("token.signed-hex"));
    expect(toBase64(signer.sign(signed))).toBe(vec("token.signature.base64"));
    expect(verify(pair.publicKey, signed, fromBase64(vec("token.signature.base64"))!)).toBe(true);
    expect(vec("token.password")).toBe(`hp1.${deviceId}.${ts}.${nonce}.${vec("token.signature.base64")}`);
    const parsed = parseToken(vec("token.password"));
    expect(parsed).not.toBeNull();
    expect({ deviceId: parsed!.deviceId, tsMs: parsed!.tsMs, nonce: parsed!.nonce }).toEqual({ deviceId, tsMs: ts, nonce });
    expect(hex(parsed!.signedBytes)).toBe(vec("token.signed-hex"));
  });

  it("gives a ping whose signature and envelope are what Signer and sealEnvelope produce", () => {
    const payloadText = vec("ping.payload");
    const signature = signer.sign(utf8.encode(payloadText));
    expect(toBase64(signature)).toBe(vec("ping.signature.base64"));
    expect(verify(pair.publicKey, utf8.encode(payloadText), fromBase64(vec("ping.signature.base64"))!)).toBe(true);

    const parsed = parseEnvelope(utf8.encode(vec("ping.envelope")));
    if (!parsed.ok) throw new Error(`the ping vector does not parse: ${parsed.code} ${parsed.detail}`);
    expect(new TextDecoder().decode(parsed.msg.payloadBytes)).toBe(payloadText);
    expect(toBase64(parsed.msg.signature)).toBe(vec("ping.signature.base64"));
    expect(parsed.msg.payload).toMatchObject({ v: 1, type: "ping", from: deviceId, to: BROKER_ID, ts: Number(vec("token.ts")) });
    expect(upBodies.ping.safeParse(parsed.msg.payload.body).success).toBe(true);

    const sealed = sealEnvelope(payloadSchema.parse(JSON.parse(payloadText)), (b) => signer.sign(b));
    expect(sealed.text).toBe(vec("ping.envelope"));
  });

  it("gives a pong that the broker's signedDown produces byte for byte", () => {
    expect(toBase64(brokerPair.publicKey)).toBe(vec("broker.public-key.base64"));
    const parsed = parseEnvelope(utf8.encode(vec("pong.envelope")));
    if (!parsed.ok) throw new Error(`the pong vector does not parse: ${parsed.code} ${parsed.detail}`);
    expect(new TextDecoder().decode(parsed.msg.payloadBytes)).toBe(vec("pong.payload"));
    expect(toBase64(parsed.msg.signature)).toBe(vec("pong.signature.base64"));
    expect(verify(fromBase64(vec("broker.public-key.base64"))!, parsed.msg.payloadBytes, parsed.msg.signature)).toBe(true);
    expect(verify(pair.publicKey, parsed.msg.payloadBytes, parsed.msg.signature)).toBe(false);

    const p = parsed.msg.payload;
    expect(p).toMatchObject({ type: "pong", from: BROKER_ID, to: deviceId, re: "ping-0001" });
    const body = downBodies.pong.parse(p.body);
    const again = signedDown(new Signer(brokerPair), deviceId, "pong", body, p.re!, p.ts, p.id);
    expect(new TextDecoder().decode(again.bytes)).toBe(vec("pong.envelope"));
  });

  it("gives a correctly signed ping with two ids that the envelope parser refuses as malformed, tied to no id", () => {
    const payloadText = vec("duplicate-id.payload");
    expect(toBase64(signer.sign(utf8.encode(payloadText)))).toBe(vec("duplicate-id.signature.base64"));
    expect(vec("duplicate-id.envelope")).toBe(JSON.stringify({ payload: payloadText, sig: vec("duplicate-id.signature.base64") }));
    // Two ids, and apart from them the documented ping: JSON.parse keeps the second id.
    expect([...payloadText.matchAll(/"id":"([^"]+)"/g)].map((m) => m[1])).toEqual(["dup-0001", "dup-0002"]);
    expect(JSON.parse(payloadText)).toEqual({ ...(JSON.parse(vec("ping.payload")) as Payload), id: "dup-0002" });
    const parsed = parseEnvelope(utf8.encode(vec("duplicate-id.envelope")));
    expect(parsed).toEqual({ ok: false, code: "malformed", detail: expect.any(String), id: null });
    const body = JSON.parse(vec("duplicate-id.error-body")) as unknown;
    expect(downBodies.error.parse(body)).toEqual({ code: "malformed", detail: expect.stringContaining('"id"'), inReplyTo: null });
  });

  it("has a token and a ping that the broker's own checks accept, once each, and a ping with two ids it refuses", async () => {
    const ts = Number(vec("token.ts"));
    const nowMs = ts + 42;
    const db = openDatabase(":memory:");
    try {
      new DeviceRepo(db).insert({ id: deviceId, kind: "terminal", name: "test vector device", publicKey: pair.publicKey, userIndex: null, userSealed: null, createdMs: 0 });

      const auth = new ConnectAuthenticator(db, FRESHNESS_MS);
      const password = Buffer.from(vec("token.password"));
      expect(auth.authenticate(deviceId, deviceId, password, nowMs)).toMatchObject({ ok: true });
      expect(auth.authenticate(deviceId, deviceId, password, nowMs)).toEqual({ ok: false, reason: "reused_token" });

      const sent: { to: string; bytes: Uint8Array }[] = [];
      const inbox = new Inbox({ db, signer: new Signer(brokerPair), log: pino({ level: "silent" }), freshnessMs: FRESHNESS_MS, clock: () => nowMs, publish: (to, bytes) => sent.push({ to, bytes }) });
      inbox.submit(deviceId, utf8.encode(vec("ping.envelope")));
      await inbox.idle();
      expect(sent).toHaveLength(1);
      const reply = parseEnvelope(sent[0]!.bytes);
      if (!reply.ok) throw new Error(`the broker's reply does not parse: ${reply.detail}`);
      expect(verify(brokerPair.publicKey, reply.msg.payloadBytes, reply.msg.signature)).toBe(true);
      // The broker picks a random message id; everything else is the documented pong.
      const documented = JSON.parse(vec("pong.payload")) as Payload;
      expect(reply.msg.payload).toEqual({ ...documented, id: reply.msg.payload.id });

      // A retry of the same bytes is a duplicate: it gets the stored pong again, byte for byte.
      inbox.submit(deviceId, utf8.encode(vec("ping.envelope")));
      await inbox.idle();
      expect(sent).toHaveLength(2);
      expect(Buffer.from(sent[1]!.bytes).equals(Buffer.from(sent[0]!.bytes))).toBe(true);

      // The signed ping with two ids: answered with the documented error body, and not handled.
      inbox.submit(deviceId, utf8.encode(vec("duplicate-id.envelope")));
      await inbox.idle();
      expect(sent).toHaveLength(3);
      const refusal = parseEnvelope(sent[2]!.bytes);
      if (!refusal.ok) throw new Error(`the broker's refusal does not parse: ${refusal.detail}`);
      expect(verify(brokerPair.publicKey, refusal.msg.payloadBytes, refusal.msg.signature)).toBe(true);
      expect(refusal.msg.payload).toMatchObject({ type: "error", from: BROKER_ID, to: deviceId });
      expect(refusal.msg.payload.re).toBeUndefined();
      expect(JSON.stringify(refusal.msg.payload.body)).toBe(vec("duplicate-id.error-body"));
    } finally {
      db.close();
    }
  });
});

const HAS_PYTHON_CRYPTOGRAPHY = spawnSync("python3", ["-c", "import cryptography"], { stdio: "ignore" }).status === 0;

/** Loads the document's Python sketch as a module and computes the vectors with it. */
const HARNESS = `
import base64, importlib.util, json, sys, time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
spec = importlib.util.spec_from_file_location("device", sys.argv[1])
d = importlib.util.module_from_spec(spec)
spec.loader.exec_module(d)
v = json.load(sys.stdin)
key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["device.seed.hex"]))
broker_priv = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["broker.seed.hex"]))
broker = broker_priv.public_key()
pub = d.public_key_bytes(key)
me = d.device_id(pub)
down = "hp/v1/" + me + "/down"
pong = v["pong.envelope"].encode("utf-8")
pong_payload = json.loads(v["pong.payload"])

def envelope(payload, extra=None, cut=64):
    """A broker envelope signed with the broker key; cut shortens the signature."""
    text = json.dumps(payload, separators=(",", ":"))
    outer = {"payload": text, "sig": base64.b64encode(broker_priv.sign(text.encode("utf-8"))[:cut]).decode("ascii")}
    outer.update(extra or {})
    return json.dumps(outer).encode("utf-8")

def opened(payload, **kw):
    return d.open_broker_message(broker, me, down, envelope(payload, **kw))

# A stale error for a ping of ours, five minutes ahead of our clock, then for its resend.
pending = {}
ping = d.message(me, "ping", {"echo": "late"})
pending[ping["id"]] = ("ping", ping["body"], False)
local_ms = time.time_ns() // 1_000_000
def stale(msg_id):
    return opened({"v": 1, "type": "error", "id": "err-" + msg_id, "from": "broker", "to": me, "ts": local_ms + 300000, "re": msg_id, "body": {"code": "stale", "detail": "late", "inReplyTo": msg_id}})
not_stale = opened({"v": 1, "type": "error", "id": "err-other", "from": "broker", "to": me, "ts": local_ms, "re": ping["id"], "body": {"code": "invalid_body", "detail": "no", "inReplyTo": ping["id"]}})
unrelated = d.resend_if_stale(me, pending, not_stale)
again = d.resend_if_stale(me, pending, stale(ping["id"]))
offset = d.clock_offset_ms
twice = d.resend_if_stale(me, pending, stale(again["id"]))

class ReasonCode:  # paho 2.x hands on_connect one of these for an MQTT 3.1.1 CONNACK
    def __init__(self, name):
        self.name = name
    def getName(self):
        return self.name

print(json.dumps({
    "device.public-key.hex": pub.hex(),
    "device.id": me,
    "token.password": d.connect_token(key, me, int(v["token.ts"]), v["token.nonce"]),
    "ping.envelope": d.seal(key, json.loads(v["ping.payload"])).decode("utf-8"),
    "pong": d.open_broker_message(broker, me, down, pong),
    "refused": {
        "tampered": d.open_broker_message(broker, me, down, pong.replace(b"hello", b"hellO")),
        "to another device": d.open_broker_message(broker, "d" + "a" * 19, "hp/v1/d" + "a" * 19 + "/down", pong),
        "on the up topic": d.open_broker_message(broker, me, "hp/v1/" + me + "/up", pong),
        "on another device's down topic": d.open_broker_message(broker, me, "hp/v1/d" + "a" * 19 + "/down", pong),
        "an extra envelope member": opened(pong_payload, extra={"note": "x"}),
        "a 63-byte sig": opened(pong_payload, cut=63),
        "v true": opened(dict(pong_payload, v=True)),
        "v 1.0": opened(dict(pong_payload, v=1.0)),
        "v '1'": opened(dict(pong_payload, v="1")),
        "no id": opened({k: x for k, x in pong_payload.items() if k != "id"}),
        "from a device": opened(dict(pong_payload, **{"from": me})),
        "body not an object": opened(dict(pong_payload, body=[])),
        "not JSON": d.open_broker_message(broker, me, down, b"{"),
    },
    "re-signed pong": opened(pong_payload),
    "stale": {"unrelated": unrelated, "again": again, "offset": offset, "local": local_ms, "twice": twice, "pending": sorted(pending)},
    "retry": {str(c): [d.retry_delay_s(c, n) for n in (1, 5, 20)] for c in (None, 0, 1, 2, 3, 4, 5)},
    "connack": [d.connack_code(c) for c in (0, 3, ReasonCode("Success"), ReasonCode("Server unavailable"), ReasonCode("Bad user name or password"), ReasonCode("Not authorized"), ReasonCode("Client identifier not valid"))],
    "payments": {name: (d.answer_prompt(me, m["body"], name == "approve") if m["type"] == "payment_prompt" else d.next_payment_message(me, m)) for name, m in v["samples"].items()},
}))
`;

describe("docs/protocol.md §A device in Python", () => {
  it.skipIf(!HAS_PYTHON_CRYPTOGRAPHY)("reproduces the test vectors, drops broker messages that break a rule of §Envelope, resends after stale with a corrected clock, backs off on CONNACK 3 only, and answers payment messages, with the document's Python code", async () => {
    const sketch = /```python\n([\s\S]*?)\n```/.exec(section("A device in Python"))?.[1];
    expect(sketch).toBeDefined();
    expect(sketch, "the PUBACK is the prompt's receipt").not.toContain('"prompt_received"');
    // Payment messages of the real run, addressed to the vector device: a task and a result
    // come both ways, pushed (no `re`) and as the answer to the phone's own message.
    const { seen } = await PAYMENT_RUN;
    const pick = (type: string, answer: boolean) => ({ ...seen.find((p) => p.type === type && (p.re !== undefined) === answer)!, to: vec("device.id") });
    const samples = { approve: pick("payment_prompt", false), decline: pick("payment_prompt", false), "task, pushed": pick("payment_task", false), "task, as the answer": pick("payment_task", true), "result, pushed": pick("payment_result", false), "result, as the answer": pick("payment_result", true) };
    const dir = mkdtempSync(join(tmpdir(), "hp-protocol-doc-"));
    try {
      writeFileSync(join(dir, "device.py"), sketch!);
      const run = spawnSync("python3", ["-c", HARNESS, join(dir, "device.py")], { input: JSON.stringify({ ...Object.fromEntries(VECTORS), samples }), encoding: "utf8", timeout: 30_000 });
      expect(run.stderr).toBe("");
      const out = JSON.parse(run.stdout) as Record<string, unknown> & { payments: Record<string, Payload | null> };
      const pays = out.payments;
      delete (out as Record<string, unknown>).payments;
      const link = (p: Payload, keys: string[]) => Object.fromEntries(keys.map((k) => [k, (p.body as Record<string, unknown>)[k]]));
      const execution = (task: Payload) => ({ type: "payment_execute", body: link(task, ["paymentId", "amountMinor", "currency", "payee"]) });
      expect(Object.fromEntries(Object.entries(pays).map(([name, m]) => [name, m === null ? null : { type: m.type, body: m.body }]))).toEqual({
        approve: { type: "payment_approve", body: link(samples.approve, ["paymentId", "amountMinor", "currency", "merchantName", "terminalName"]) },
        decline: { type: "payment_decline", body: { paymentId: samples.decline.body.paymentId } },
        "task, pushed": execution(samples["task, pushed"]),
        "task, as the answer": execution(samples["task, as the answer"]),
        "result, pushed": null,
        "result, as the answer": null,
      });
      for (const m of Object.values(pays)) {
        if (m === null) continue;
        expect(payloadSchema.safeParse(m).success, JSON.stringify(m)).toBe(true);
        expect({ from: m.from, to: m.to, body: upBodies[m.type as keyof typeof upBodies].safeParse(m.body).success }).toEqual({ from: vec("device.id"), to: BROKER_ID, body: true });
      }
      const { stale, retry, connack, ...rest } = out as unknown as {
        stale: { unrelated: null; again: Payload; offset: number; local: number; twice: null; pending: string[] };
        retry: Record<string, (number | null)[]>;
        connack: number[];
      } & Record<string, unknown>;
      expect(rest).toEqual({
        "device.public-key.hex": vec("device.public-key.hex"),
        "device.id": vec("device.id"),
        "token.password": vec("token.password"),
        "ping.envelope": vec("ping.envelope"),
        pong: JSON.parse(vec("pong.payload")),
        // §Envelope, how a device checks a message from the broker: each broken rule drops it.
        refused: Object.fromEntries(Object.keys(rest.refused as object).map((k) => [k, null])),
        "re-signed pong": JSON.parse(vec("pong.payload")),
      });
      expect(Object.keys(rest.refused as object)).toHaveLength(13);
      // §error: after `stale`, the clock follows the error's signed ts and the message goes again, once.
      const skewMs = stale.offset - 300_000;
      expect({ unrelated: stale.unrelated, twice: stale.twice, skewWithinAMinute: Math.abs(skewMs) < 60_000 }).toEqual({ unrelated: null, twice: null, skewWithinAMinute: true });
      expect({ type: stale.again.type, body: stale.again.body, to: stale.again.to }).toEqual({ type: "ping", body: { echo: "late" }, to: BROKER_ID });
      expect(Math.abs(stale.again.ts - (stale.local + 300_000))).toBeLessThan(60_000);
      expect(payloadSchema.safeParse(stale.again).success).toBe(true);
      expect(stale.pending).toEqual([]);
      // §Connecting, refusals: 3 (and a lost or failed connection) backs off up to a minute; 1, 2, 4 and 5 stop.
      for (const code of ["1", "2", "4", "5"]) expect({ code, delays: retry[code] }).toEqual({ code, delays: [null, null, null] });
      for (const code of ["3", "None", "0"]) {
        // 2^failures seconds, at most 60, times a jitter of 0.5 to 1.
        const [first, fifth, twentieth] = retry[code]!;
        expect({ code, first: first! >= 1 && first! <= 2, fifth: fifth! >= 16 && fifth! <= 32, capped: twentieth! >= 30 && twentieth! <= 60 }).toEqual({ code, first: true, fifth: true, capped: true });
      }
      expect(connack).toEqual([0, 3, 0, 3, 4, 5, 2]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/**
 * RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 written again from the RFC's recursive definitions, with
 * node:crypto: a second implementation to hold the vectors and src/core/merkle.ts against.
 */
const rfc = {
  sha256: (...parts: Uint8Array[]) => new Uint8Array(createHash("sha256").update(Buffer.concat(parts)).digest()),
  leaf: (entry: Uint8Array) => rfc.sha256(Uint8Array.of(0), entry),
  node: (l: Uint8Array, r: Uint8Array) => rfc.sha256(Uint8Array.of(1), l, r),
  split: (n: number) => 2 ** Math.ceil(Math.log2(n) - 1),
  /** MTH(D[n]) over leaf hashes. */
  mth(d: Uint8Array[]): Uint8Array {
    if (d.length === 0) return rfc.sha256();
    if (d.length === 1) return d[0]!;
    const k = rfc.split(d.length);
    return rfc.node(rfc.mth(d.slice(0, k)), rfc.mth(d.slice(k)));
  },
  /** PATH(m, D[n]). */
  path(m: number, d: Uint8Array[]): Uint8Array[] {
    if (d.length <= 1) return [];
    const k = rfc.split(d.length);
    return m < k ? [...rfc.path(m, d.slice(0, k)), rfc.mth(d.slice(k))] : [...rfc.path(m - k, d.slice(k)), rfc.mth(d.slice(0, k))];
  },
  /** SUBPROOF(m, D[n], b). */
  subproof(m: number, d: Uint8Array[], b: boolean): Uint8Array[] {
    if (m === d.length) return b ? [] : [rfc.mth(d)];
    const k = rfc.split(d.length);
    return m <= k ? [...rfc.subproof(m, d.slice(0, k), b), rfc.mth(d.slice(k))] : [...rfc.subproof(m - k, d.slice(k), false), rfc.mth(d.slice(0, k))];
  },
};

const lines = (label: string) => vec(label).split("\n");
const b64s = (label: string) => lines(label).map((l) => fromBase64(l)!);

interface Head {
  treeSize: number;
  rootHash: string;
  timestampMs: number;
  signature: string;
}
interface ReceiptFile {
  format: string;
  envelope: { payload: string; sig: string };
  inclusion: { index: number; treeSize: number; entry: string; head: Head; path: string[] };
}

describe("docs/protocol.md §Audit log and receipts", () => {
  it("lists the entry kinds of src/store/audit.ts, in its order", () => {
    const rows = tableAfter(section("Audit log and receipts"), "| kind | what happened |");
    expect(rows.map((r) => ticked(r[0]!)[0])).toEqual([...AUDIT_KINDS]);
  });

  it("gives the signed head format that headSignedBytes produces", () => {
    const text = section("Audit log and receipts");
    expect(text).toContain("```\nhp-audit-head-v1\n<treeSize>\n<rootHash>\n<timestampMs>\n```");
    const root = rfc.sha256(utf8.encode("a root"));
    expect(new TextDecoder().decode(headSignedBytes(12, root, 345))).toBe(`hp-audit-head-v1\n12\n${toBase64(root)}\n345`);
  });
});

describe("docs/protocol.md §Test vectors: the audit log and a receipt", () => {
  const entries = lines("audit.entries");
  const leaves = entries.map((e) => rfc.leaf(utf8.encode(e)));
  const brokerKey = fromBase64(vec("broker.public-key.base64"))!;

  it("gives five entries whose leaf hashes are SHA-256(0x00 ‖ entry), numbered by their line", () => {
    expect(entries).toHaveLength(5);
    entries.forEach((e, i) => {
      const parsed = JSON.parse(e) as { v: number; index: number; kind: string };
      expect({ v: parsed.v, index: parsed.index, known: (AUDIT_KINDS as readonly string[]).includes(parsed.kind) }).toEqual({ v: 1, index: i, known: true });
      expect(JSON.stringify(parsed), "the entry is compact JSON text").toBe(e);
    });
    expect(leaves.map(toBase64)).toEqual(lines("audit.leaf-hashes.base64"));
    expect(entries.map((e) => toBase64(leafHash(utf8.encode(e))))).toEqual(lines("audit.leaf-hashes.base64"));
    expect(hex(leaves[2]!)).toBe(vec("audit.entry.2.leaf-hash.hex"));
  });

  it("gives the empty root and the roots of 3 and 5 entries as the RFC and rootOf compute them", () => {
    expect(hex(rfc.mth([]))).toBe(vec("audit.empty-root.hex"));
    expect(hex(EMPTY_ROOT)).toBe(vec("audit.empty-root.hex"));
    for (const n of [3, 5]) {
      expect(toBase64(rfc.mth(leaves.slice(0, n)))).toBe(vec(`audit.root.${n}.base64`));
      expect(toBase64(rootOf(leaves.slice(0, n)))).toBe(vec(`audit.root.${n}.base64`));
    }
    expect(rfc.mth(leaves)).toEqual(rfc.node(rfc.mth(leaves.slice(0, 4)), leaves[4]!));
  });

  it("gives the RFC's inclusion path of entry 2 and consistency proof from 3 to 5, which the broker's code verifies", () => {
    const root5 = fromBase64(vec("audit.root.5.base64"))!;
    const root3 = fromBase64(vec("audit.root.3.base64"))!;
    const path = b64s("audit.inclusion.2-in-5.path");
    expect(path).toEqual(rfc.path(2, leaves));
    expect(path).toEqual(inclusionPath(2, 5, (start, size) => rfc.mth(leaves.slice(start, start + size))));
    expect(verifyInclusion(leaves[2]!, 2, 5, path, root5)).toBe(true);
    expect(verifyInclusion(leaves[3]!, 2, 5, path, root5)).toBe(false);
    const proof = b64s("audit.consistency.3-to-5.path");
    expect(proof).toEqual(rfc.subproof(3, leaves, true));
    expect(proof).toEqual(consistencyProof(3, 5, (start, size) => rfc.mth(leaves.slice(start, start + size))));
    expect(verifyConsistency(3, 5, root3, root5, proof)).toBe(true);
    expect(verifyConsistency(3, 5, root5, root3, proof)).toBe(false);
  });

  it("gives a tree head of the five entries, signed by the broker over the documented bytes", () => {
    const head = JSON.parse(vec("audit.head.json")) as Head;
    expect(Object.keys(head)).toEqual(["treeSize", "rootHash", "timestampMs", "signature"]);
    expect(head).toMatchObject({ treeSize: 5, rootHash: vec("audit.root.5.base64"), signature: vec("audit.head.signature.base64") });
    const signed = utf8.encode(vec("audit.head.signed-text"));
    expect(vec("audit.head.signed-text")).toBe(`hp-audit-head-v1\n${head.treeSize}\n${head.rootHash}\n${head.timestampMs}`);
    expect(signed).toEqual(headSignedBytes(head.treeSize, fromBase64(head.rootHash)!, head.timestampMs));
    expect(verify(brokerKey, signed, fromBase64(head.signature)!)).toBe(true);
    expect(verify(brokerKey, utf8.encode(vec("audit.head.signed-text").replace("\n5\n", "\n4\n")), fromBase64(head.signature)!)).toBe(false);
  });

  it("gives a receipt file whose signed payment_result, entry, path and head all agree, as the six documented checks ask", () => {
    const receipt = JSON.parse(vec("receipt.file")) as ReceiptFile;
    expect(receipt.format).toBe("handoff-pay-receipt/1");
    // 1, 2: a payment_result the broker signed, to the vector device.
    const parsed = parseEnvelope(utf8.encode(JSON.stringify(receipt.envelope)));
    if (!parsed.ok) throw new Error(`the receipt's envelope does not parse: ${parsed.detail}`);
    expect(receipt.envelope.payload).toBe(vec("receipt.payload"));
    expect(verify(brokerKey, parsed.msg.payloadBytes, parsed.msg.signature)).toBe(true);
    expect(parsed.msg.payload).toMatchObject({ type: "payment_result", from: BROKER_ID, to: vec("device.id") });
    const body = parsed.msg.payload.body as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual([...new Set([...Object.keys(downBodies.payment_result.shape), "auditIndex", "atMs"])].sort());
    // 3, 4: entry 2 of the vectors, recording this result.
    const { inclusion } = receipt;
    expect({ index: inclusion.index, treeSize: inclusion.treeSize, entry: inclusion.entry, head: inclusion.head, path: inclusion.path }).toEqual({
      index: body.auditIndex,
      treeSize: 5,
      entry: lines("audit.entries")[2],
      head: JSON.parse(vec("audit.head.json")),
      path: lines("audit.inclusion.2-in-5.path"),
    });
    const entry = JSON.parse(inclusion.entry) as Record<string, unknown>;
    expect({ kind: entry.kind, subject: entry.subject, index: entry.index }).toEqual({ kind: "payment.event", subject: body.paymentId, index: body.auditIndex });
    for (const name of ["status", "amountMinor", "currency", "transferId", "atMs"]) expect({ name, value: entry[name] }).toEqual({ name, value: body[name] });
    // 5, 6: the path leads to the root of the head the broker signed.
    expect(verifyInclusion(rfc.leaf(utf8.encode(inclusion.entry)), inclusion.index, inclusion.head.treeSize, inclusion.path.map((p) => fromBase64(p)!), fromBase64(inclusion.head.rootHash)!)).toBe(true);
    expect(verify(brokerKey, headSignedBytes(inclusion.head.treeSize, fromBase64(inclusion.head.rootHash)!, inclusion.head.timestampMs), fromBase64(inclusion.head.signature)!)).toBe(true);
  });
});

/** The first python3 that has PyNaCl, or null. */
const PY_NACL = ["/usr/bin/python3", "python3"].find((exe) => spawnSync(exe, ["-c", "import nacl.signing"], { stdio: "ignore" }).status === 0) ?? null;

/**
 * Loads the document's receipt verifier as a module and runs it: on the vectors, on tampered
 * copies of the receipt (each must raise, and the reason is reported), and on every proof given.
 */
const RECEIPT_HARNESS = `
import base64, copy, json, sys, importlib.util
spec = importlib.util.spec_from_file_location("verifier", sys.argv[1])
r = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r)
v = json.load(sys.stdin)
b = lambda s: base64.b64decode(s)
key = v["broker.public-key.base64"]
receipt = json.loads(v["receipt.file"])
entries = v["audit.entries"].split("\\n")

def tampered(change):
    t = copy.deepcopy(receipt)
    change(t)
    try:
        r.verify_receipt(json.dumps(t), key)
        return None
    except r.ReceiptError as e:
        return str(e)

def set_in(obj, name, value):
    obj[name] = value

def envelope_body(t, name, value):
    p = json.loads(t["envelope"]["payload"])
    p["body"][name] = value
    t["envelope"]["payload"] = json.dumps(p, separators=(",", ":"))

def entry_member(t, name, value):
    e = json.loads(t["inclusion"]["entry"])
    e[name] = value
    t["inclusion"]["entry"] = json.dumps(e, separators=(",", ":"))

def flip(s):
    raw = bytearray(b(s))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()

other = dict(receipt["inclusion"], index=3, entry=entries[3])
cases = {
    "another format": lambda t: set_in(t, "format", "handoff-pay-receipt/2"),
    "the amount changed in the payload": lambda t: set_in(t["envelope"], "payload", t["envelope"]["payload"].replace('"amountMinor":1280', '"amountMinor":1281')),
    "another signature": lambda t: set_in(t["envelope"], "sig", flip(t["envelope"]["sig"])),
    "no inclusion": lambda t: t.pop("inclusion"),
    "the proof of another entry": lambda t: set_in(t, "inclusion", dict(other)),
    "the amount changed in the entry": lambda t: entry_member(t, "amountMinor", 1281),
    "the status changed in the entry": lambda t: entry_member(t, "status", "failed"),
    "the transfer changed in the entry": lambda t: entry_member(t, "transferId", None),
    "the time changed in the entry": lambda t: entry_member(t, "atMs", receipt["inclusion"]["head"]["timestampMs"]),
    "another payment's entry": lambda t: entry_member(t, "subject", "pay_r7tz2xw4kq5mbn3dvh6c"),
    "the merchant changed in the entry": lambda t: entry_member(t, "merchantId", "tea-house"),
    "a path hash changed": lambda t: set_in(t["inclusion"]["path"], 1, flip(t["inclusion"]["path"][1])),
    "a path hash missing": lambda t: t["inclusion"]["path"].pop(),
    "a smaller tree size": lambda t: set_in(t["inclusion"], "treeSize", 4),
    "the head's time changed": lambda t: set_in(t["inclusion"]["head"], "timestampMs", t["inclusion"]["head"]["timestampMs"] + 1),
    "the head's signature changed": lambda t: set_in(t["inclusion"]["head"], "signature", flip(t["inclusion"]["head"]["signature"])),
    "no path": lambda t: t["inclusion"].pop("path"),
}
out = {"refused": {name: tampered(change) for name, change in cases.items()}}
try:
    r.verify_receipt(v["receipt.file"], v["device.public-key.base64"])
except r.ReceiptError as e:
    out["refused"]["the device's key instead of the broker's"] = str(e)
out["body"] = r.verify_receipt(v["receipt.file"], key)
out["leaves"] = [base64.b64encode(r.leaf_hash(e.encode("utf-8"))).decode() for e in entries]
path = [b(p) for p in v["audit.inclusion.2-in-5.path"].split("\\n")]
proof = [b(p) for p in v["audit.consistency.3-to-5.path"].split("\\n")]
root3, root5 = b(v["audit.root.3.base64"]), b(v["audit.root.5.base64"])
out["inclusion"] = [r.verify_inclusion(r.leaf_hash(entries[2].encode()), 2, 5, path, root5), r.verify_inclusion(r.leaf_hash(entries[2].encode()), 3, 5, path, root5)]
out["consistency"] = [r.verify_consistency(3, 5, root3, root5, proof), r.verify_consistency(3, 5, root3, root5, proof[:-1])]
out["head"] = base64.b64encode(r.verify_head(json.loads(v["audit.head.json"]), r.VerifyKey(b(key)))).decode()
out["proofs"] = [r.verify_inclusion(b(p["leaf"]), p["index"], p["size"], [b(x) for x in p["path"]], b(p["root"])) for p in v["inclusions"]]
out["proofs"] += [r.verify_consistency(p["from"], p["to"], b(p["root1"]), b(p["root2"]), [b(x) for x in p["path"]]) for p in v["consistencies"]]
print(json.dumps(out))
`;

describe("docs/protocol.md §Verifying a receipt in Python", () => {
  /**
   * Proofs of the broker's code for every pair of sizes up to 40, each genuine and with one thing
   * wrong (a hash flipped, the wrong index or size, a hash missing), and whether the broker's
   * verifier accepts each: the Python verifier must agree case by case.
   */
  function proofCases() {
    const leaves = Array.from({ length: 40 }, (_, i) => leafHash(utf8.encode(`entry ${i}`)));
    const subtree = (start: number, size: number) => rootOf(leaves.slice(start, start + size));
    const roots = Array.from({ length: 41 }, (_, n) => rootOf(leaves.slice(0, n)));
    const flip = (h: Uint8Array) => Uint8Array.from(h, (x, i) => (i === 0 ? x ^ 1 : x));
    const inclusions: { leaf: Uint8Array; index: number; size: number; path: Uint8Array[]; root: Uint8Array }[] = [];
    const consistencies: { from: number; to: number; root1: Uint8Array; root2: Uint8Array; path: Uint8Array[] }[] = [];
    for (let size = 1; size <= 40; size++) {
      for (let index = 0; index < size; index++) {
        const path = inclusionPath(index, size, subtree);
        const base = { leaf: leaves[index]!, index, size, path, root: roots[size]! };
        inclusions.push(base, { ...base, index: (index + 1) % size }, { ...base, size: size + 1 }, { ...base, leaf: flip(base.leaf) });
        if (path.length > 0) inclusions.push({ ...base, path: path.slice(0, -1) }, { ...base, path: [...path.slice(0, -1), flip(path.at(-1)!)] });
      }
      for (let from = 1; from <= size; from++) {
        const path = consistencyProof(from, size, subtree);
        const base = { from, to: size, root1: roots[from]!, root2: roots[size]!, path };
        consistencies.push(base, { ...base, root1: flip(base.root1) }, { ...base, root2: flip(base.root2) });
        if (path.length > 0) consistencies.push({ ...base, path: path.slice(1) }, { ...base, path: [flip(path[0]!), ...path.slice(1)] });
        if (from < size) consistencies.push({ ...base, from: from + 1 });
      }
    }
    const expected = [...inclusions.map((p) => verifyInclusion(p.leaf, p.index, p.size, p.path, p.root)), ...consistencies.map((p) => verifyConsistency(p.from, p.to, p.root1, p.root2, p.path))];
    const wire = {
      inclusions: inclusions.map((p) => ({ ...p, leaf: toBase64(p.leaf), root: toBase64(p.root), path: p.path.map(toBase64) })),
      consistencies: consistencies.map((p) => ({ ...p, root1: toBase64(p.root1), root2: toBase64(p.root2), path: p.path.map(toBase64) })),
    };
    return { wire, expected };
  }

  it.skipIf(PY_NACL === null)(
    PY_NACL === null ? "verifies the vector receipt and refuses each tampered copy (skipped: no python3 with PyNaCl; apt-get install python3-nacl)" : "verifies the vector receipt, refuses each tampered copy at its own check, and agrees with the broker's code on every proof up to size 40",
    () => {
      const verifier = /```python\n([\s\S]*?)\n```/.exec(section("Verifying a receipt in Python"))?.[1];
      expect(verifier).toBeDefined();
      expect(verifier!.match(/^(?:from|import) (\S+)/gm)!.map((l) => l.split(" ")[1])).toEqual(["__future__", "base64", "hashlib", "json", "nacl.exceptions", "nacl.signing"]);
      const { wire, expected } = proofCases();
      const dir = mkdtempSync(join(tmpdir(), "hp-receipt-doc-"));
      try {
        writeFileSync(join(dir, "verifier.py"), verifier!);
        const run = spawnSync(PY_NACL!, ["-c", RECEIPT_HARNESS, join(dir, "verifier.py")], { input: JSON.stringify({ ...Object.fromEntries(VECTORS), ...wire }), encoding: "utf8", timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
        expect(run.stderr).toBe("");
        const out = JSON.parse(run.stdout) as { refused: Record<string, string | null>; body: unknown; leaves: string[]; inclusion: boolean[]; consistency: boolean[]; head: string; proofs: boolean[] };
        expect(out.body).toEqual((JSON.parse(vec("receipt.payload")) as Payload).body);
        expect(out.leaves).toEqual(lines("audit.leaf-hashes.base64"));
        expect({ inclusion: out.inclusion, consistency: out.consistency, head: out.head }).toEqual({ inclusion: [true, false], consistency: [true, false], head: vec("audit.root.5.base64") });
        // Each tampered receipt fails, at the check that its change breaks.
        expect(out.refused).toEqual({
          "another format": "not a handoff-pay-receipt/1 file",
          "the amount changed in the payload": "the envelope is not signed by the broker",
          "another signature": "the envelope is not signed by the broker",
          "no inclusion": "no inclusion proof: ask the broker with audit_inclusion_request",
          "the proof of another entry": "the proof is not for the receipt's audit entry",
          "the amount changed in the entry": "the audit entry's amountMinor is not the receipt's",
          "the status changed in the entry": "the audit entry's status is not the receipt's",
          "the transfer changed in the entry": "the audit entry's transferId is not the receipt's",
          "the time changed in the entry": "the audit entry's atMs is not the receipt's",
          "another payment's entry": "the audit entry is not about this payment",
          "the merchant changed in the entry": "the inclusion path does not lead to the tree head's root",
          "a path hash changed": "the inclusion path does not lead to the tree head's root",
          "a path hash missing": "the inclusion path does not lead to the tree head's root",
          "a smaller tree size": "the inclusion path does not lead to the tree head's root",
          "the head's time changed": "the tree head is not signed by the broker",
          "the head's signature changed": "the tree head is not signed by the broker",
          "no path": expect.stringMatching(/^the receipt is malformed: KeyError\('path'\)$/),
          "the device's key instead of the broker's": "the envelope is not signed by the broker",
        });
        // Every proof: the Python verifier accepts exactly what the broker's verifier accepts.
        expect(out.proofs).toHaveLength(expected.length);
        const disagreements = expected.flatMap((want, i) => (out.proofs[i] === want ? [] : [i]));
        expect(disagreements).toEqual([]);
        expect(expected.filter(Boolean).length).toBeGreaterThan(1500);
        expect(expected.filter((x) => !x).length).toBeGreaterThan(3000);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
