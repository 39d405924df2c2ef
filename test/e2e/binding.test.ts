/**
 * Binding over real MQTT: pairing codes, agreements, managing them, key rotation, tampering,
 * and that no login, user id or terminal serial is ever stored in clear.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { saveKeyring } from "../../broker/data-dir.ts";
import type { Device, Received } from "../../device-sim/device.ts";
import { CODE_ALPHABET } from "../../src/core/pairing.ts";
import { keyUsage, removalProblem, reseal } from "../../src/service/keys.ts";
import { DeviceRepo } from "../../src/store/devices.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";

const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 };

let broker: TestBroker;
afterEach(async () => {
  await broker?.stop();
});

interface Setup {
  terminal: Device;
  phone: Device;
  login: string;
  serial: string;
  userId: string;
}

async function setup(overrides: Parameters<typeof startTestBroker>[0] = {}, deps: Parameters<typeof startTestBroker>[3] = {}): Promise<Setup> {
  broker = await startTestBroker(overrides, undefined, undefined, deps);
  const userId = `user-${Math.random().toString(36).slice(2, 10)}`;
  const terminal = await broker.device(broker.register("terminal", { name: "Living room TV" }));
  const phone = await broker.device(broker.register("phone", { userId }));
  return { terminal, phone, login: `login-${Math.random().toString(36).slice(2, 10)}`, serial: `SN-${Math.random().toString(36).slice(2, 10)}`, userId };
}

const bindRequest = (s: Setup, terminal: Device = s.terminal) =>
  terminal.call("bind_request", { login: s.login, terminal: { model: "TV-9000", serial: s.serial, displayName: "Living room TV" } });

function errorCode(m: Received): string {
  expect(m.type).toBe("error");
  return (m.body as { code: string }).code;
}

/** Pairs terminal and phone; returns the agreement id. */
async function pair(s: Setup, phone: Device = s.phone, terminal: Device = s.terminal): Promise<string> {
  const code = (await bindRequest(s, terminal)).body.code as string;
  const terminalBound = terminal.next("bound");
  const bound = await phone.call("bind_confirm", { code, limits: LIMITS });
  expect((await terminalBound).body.agreementId).toBe(bound.body.agreementId);
  return bound.body.agreementId as string;
}

/** Any other code of the same selector with a wrong verifier. */
function wrongVerifier(code: string): string {
  const last = code.at(-1)!;
  const other = CODE_ALPHABET[(CODE_ALPHABET.indexOf(last) + 1) % CODE_ALPHABET.length]!;
  return code.slice(0, -1) + other;
}

describe("pairing", () => {
  it("gives the terminal an 8-letter code shown as XXXX-XXXX, and binds both devices when the phone confirms it", async () => {
    const s = await setup();
    const reply = await bindRequest(s);
    expect(reply.type).toBe("bind_code");
    expect(reply.body.code).toMatch(new RegExp(`^[${CODE_ALPHABET}]{4}-[${CODE_ALPHABET}]{4}$`));
    expect(reply.body.expiresAtMs).toBeGreaterThan(Date.now() + 4 * 60_000);
    expect(reply.body.display).toContain(reply.body.code);

    const terminalBound = s.terminal.next("bound");
    // People type codes loosely: lower case and no hyphen still match.
    const bound = await s.phone.call("bind_confirm", { code: (reply.body.code as string).replace("-", " ").toLowerCase(), limits: LIMITS });
    expect(bound.type).toBe("bound");
    expect(bound.body).toMatchObject({ terminalId: s.terminal.id, phoneId: s.phone.id, terminalName: "Living room TV", limits: LIMITS });
    expect((await terminalBound).body).toEqual(bound.body);
  });

  it("refuses a wrong code, an expired code and a used code, each with its own error", async () => {
    // Expiry is judged by the broker's clock when it handles the message: the test moves that
    // clock past the code's lifetime instead of sleeping through it.
    let offsetMs = 0;
    const s = await setup({ pairingTtlMs: 1500 }, { clock: () => Date.now() + offsetMs });
    expect(errorCode(await s.phone.request("bind_confirm", { code: "BBBB-BBBB", limits: LIMITS }))).toBe("pairing_code_invalid");
    expect(errorCode(await s.phone.request("bind_confirm", { code: "not a code", limits: LIMITS }))).toBe("pairing_code_invalid");

    const expiring = await bindRequest(s);
    offsetMs = 5000; // past the code's 1.5 s lifetime
    expect(Date.now() + offsetMs).toBeGreaterThan(expiring.body.expiresAtMs as number);
    // The phone signs with the moved clock's time (5 s off real time is well within ±120 s anyway).
    expect(errorCode(await s.phone.request("bind_confirm", { code: expiring.body.code, limits: LIMITS }, 5000, { ts: Date.now() + offsetMs }))).toBe("pairing_code_expired");

    const code = (await bindRequest(s)).body.code as string;
    expect((await s.phone.call("bind_confirm", { code, limits: LIMITS })).type).toBe("bound");
    expect(errorCode(await s.phone.request("bind_confirm", { code, limits: LIMITS }))).toBe("pairing_code_used");
  });

  it("voids a code on the fifth wrong try, after which even the right code is refused", async () => {
    const s = await setup();
    const code = (await bindRequest(s)).body.code as string;
    const wrong = wrongVerifier(code);
    for (let i = 1; i <= 4; i++) expect(errorCode(await s.phone.request("bind_confirm", { code: wrong, limits: LIMITS }))).toBe("pairing_code_invalid");
    expect(errorCode(await s.phone.request("bind_confirm", { code: wrong, limits: LIMITS }))).toBe("pairing_code_void");
    expect(errorCode(await s.phone.request("bind_confirm", { code, limits: LIMITS }))).toBe("pairing_code_void");
  });

  it("keeps one live code per terminal: a new request makes the old code stale", async () => {
    const s = await setup();
    const first = (await bindRequest(s)).body.code as string;
    const second = (await bindRequest(s)).body.code as string;
    expect(errorCode(await s.phone.request("bind_confirm", { code: first, limits: LIMITS }))).toBe("pairing_code_expired");
    expect((await s.phone.call("bind_confirm", { code: second, limits: LIMITS })).type).toBe("bound");
  });

  it("rate-limits bind requests per terminal", async () => {
    const s = await setup();
    for (let i = 0; i < 5; i++) expect((await bindRequest(s)).type).toBe("bind_code");
    expect(errorCode(await s.terminal.request("bind_request", { login: s.login, terminal: { model: "m", serial: "s", displayName: "d" } }))).toBe("rate_limited");
  });

  it.each([
    ["a phone asking for a code", "phone", "bind_request", { login: "x", terminal: { model: "m", serial: "s", displayName: "d" } }],
    ["a terminal confirming a code", "terminal", "bind_confirm", { code: "BBBB-BBBB", limits: LIMITS }],
    ["a terminal listing agreements", "terminal", "agreements_list", {}],
  ] as const)("refuses %s with wrong_device_kind", async (_name, who, type, body) => {
    const s = await setup();
    const device = who === "phone" ? s.phone : s.terminal;
    expect(errorCode(await device.request(type, body))).toBe("wrong_device_kind");
  });

  it.each([
    [{ ...LIMITS, currency: "XXX" }],
    [{ ...LIMITS, autoConfirmMaxMinor: 200000 }],
    [{ ...LIMITS, perPaymentMaxMinor: 0, autoConfirmMaxMinor: 0 }],
    [{ ...LIMITS, autoConfirmDailyMinor: 100 }],
  ])("refuses limits that do not make sense: %j", async (limits) => {
    const s = await setup();
    const code = (await bindRequest(s)).body.code as string;
    expect(errorCode(await s.phone.request("bind_confirm", { code, limits }))).toBe("invalid_limits");
  });

  it("answers limits that are not integers of minor units as invalid_body", async () => {
    const s = await setup();
    const code = (await bindRequest(s)).body.code as string;
    expect(errorCode(await s.phone.request("bind_confirm", { code, limits: { ...LIMITS, perPaymentMaxMinor: 12.5 } }))).toBe("invalid_body");
  });
});

describe("managing agreements", () => {
  it("lists the phone's agreements with limits and usage, and changes limits, telling the terminal", async () => {
    const s = await setup();
    const id = await pair(s);
    const list = await s.phone.call("agreements_list", {});
    expect(list.body.items).toEqual([expect.objectContaining({ agreementId: id, terminalName: "Living room TV", limits: LIMITS, usage: expect.objectContaining({ paymentCount: 0 }) })]);
    const newLimits = { ...LIMITS, autoConfirmMaxMinor: 1000 };
    const terminalTold = s.terminal.next("limits_updated");
    expect((await s.phone.call("set_limits", { agreementId: id, limits: newLimits })).body.limits).toEqual(newLimits);
    expect((await terminalTold).body.limits).toEqual(newLimits);
  });

  it.each(["phone", "terminal"] as const)("unbinds from the %s side: both devices are told and the agreement is gone", async (side) => {
    const s = await setup();
    const id = await pair(s);
    const [actor, other] = side === "phone" ? [s.phone, s.terminal] : [s.terminal, s.phone];
    const otherTold = other.next("unbound");
    expect((await actor.call("unbind", { agreementId: id })).body).toMatchObject({ agreementId: id, by: side });
    expect((await otherTold).body).toMatchObject({ agreementId: id, by: side });
    expect((await s.phone.call("agreements_list", {})).body.items).toEqual([]);
    expect(errorCode(await actor.request("unbind", { agreementId: id }))).toBe("agreement_not_found");
    const row = broker.db.prepare("SELECT sealed, lookup, status FROM agreements WHERE id = ?").get(id);
    expect(row).toEqual({ sealed: null, lookup: null, status: "unbound" });
  });

  it("lets no other device touch an agreement", async () => {
    const s = await setup();
    const id = await pair(s);
    const stranger = await broker.device(broker.register("phone"));
    expect(errorCode(await stranger.request("unbind", { agreementId: id }))).toBe("agreement_not_found");
    expect(errorCode(await stranger.request("set_limits", { agreementId: id, limits: LIMITS }))).toBe("agreement_not_found");
  });

  it("replaces the phone of a terminal + login only when the new phone confirms, and tells the old one", async () => {
    const s = await setup();
    const oldId = await pair(s);
    const newPhone = await broker.device(broker.register("phone", { userId: s.userId }));
    await bindRequest(s); // a pending code alone changes nothing
    expect((await s.phone.call("agreements_list", {})).body.items).toHaveLength(1);
    const oldTold = s.phone.next("unbound");
    const newId = await pair(s, newPhone);
    expect((await oldTold).body).toMatchObject({ agreementId: oldId, by: "replaced" });
    expect((await s.phone.call("agreements_list", {})).body.items).toEqual([]);
    expect((await newPhone.call("agreements_list", {})).body.items).toEqual([expect.objectContaining({ agreementId: newId })]);
  });

  it("binds one phone to many terminals", async () => {
    const s = await setup();
    const second = await broker.device(broker.register("terminal", { name: "Kitchen kiosk" }));
    await pair(s);
    await pair(s, s.phone, second);
    expect((await s.phone.call("agreements_list", {})).body.items).toHaveLength(2);
  });
});

describe("at rest", () => {
  function databaseBytes(): Buffer[] {
    return ["handoff.db", "handoff.db-wal"].map((f) => join(broker.dataDir, f)).filter(existsSync).map((f) => readFileSync(f));
  }

  it("never stores the login, the user id or the terminal serial in clear, before or after unbind", async () => {
    const s = await setup();
    const id = await pair(s);
    await s.phone.call("agreements_list", {});
    const secrets = [s.login, s.userId, s.serial];
    for (const bytes of databaseBytes()) for (const secret of secrets) expect(bytes.includes(secret), secret).toBe(false);
    await s.phone.call("unbind", { agreementId: id });
    broker.db.pragma("wal_checkpoint(TRUNCATE)");
    for (const bytes of databaseBytes()) for (const secret of secrets) expect(bytes.includes(secret), secret).toBe(false);
  });

  it("rotates the master key, reseals old agreements and only then lets the old version go", async () => {
    const s = await setup();
    const first = await pair(s);
    // Rotate twice, as the admin tool does: write the key file, tell the broker.
    saveKeyring(broker.dataDir, broker.keyring.rotated());
    new DeviceRepo(broker.db).notify("keys_changed", Date.now());
    await expect.poll(() => broker.keyring.current, { timeout: 5000 }).toBe(2);
    const second = await pair(s, s.phone, await broker.device(broker.register("terminal")));
    expect(keyUsage(broker.db, broker.keyring).map((u) => [u.version, u.agreements])).toEqual([[1, 1], [2, 1]]);
    saveKeyring(broker.dataDir, broker.keyring.rotated());
    new DeviceRepo(broker.db).notify("keys_changed", Date.now());
    await expect.poll(() => broker.keyring.current, { timeout: 5000 }).toBe(3);

    expect(removalProblem(broker.db, broker.keyring, 2)).toContain("still seals 1 agreements");
    const progress: number[] = [];
    const report = reseal(broker.db, broker.keyring, 1, (done) => progress.push(done));
    expect(report).toMatchObject({ resealed: 2, unreadable: [] });
    expect(progress).toEqual([1, 2]);
    expect(keyUsage(broker.db, broker.keyring).find((u) => u.version === 3)?.agreements).toBe(2);
    expect(removalProblem(broker.db, broker.keyring, 2)).toBeNull();
    expect(removalProblem(broker.db, broker.keyring, 1)).toContain("blind indexes");
    expect(removalProblem(broker.db, broker.keyring, 3)).toContain("current");
    // Both agreements still open, under the new key.
    const ids = ((await s.phone.call("agreements_list", {})).body.items as { agreementId: string }[]).map((i) => i.agreementId).sort();
    expect(ids).toEqual([first, second].sort());
  });
});

describe("tampering", () => {
  async function twoAgreements() {
    const s = await setup();
    const a = await pair(s);
    const b = await pair(s, s.phone, await broker.device(broker.register("terminal")));
    const sealedOf = (id: string) => (broker.db.prepare("SELECT sealed FROM agreements WHERE id = ?").get(id) as { sealed: Buffer }).sealed;
    const setSealed = (id: string, bytes: Buffer) => broker.db.prepare("UPDATE agreements SET sealed = ? WHERE id = ?").run(bytes, id);
    return { s, a, b, sealedOf, setSealed };
  }

  async function expectBroken(s: Setup, broken: string, healthy: string, code: string) {
    expect(errorCode(await s.phone.request("set_limits", { agreementId: broken, limits: LIMITS }))).toBe(code);
    const items = (await s.phone.call("agreements_list", {})).body.items as { agreementId: string; unreadable?: string }[];
    expect(items.find((i) => i.agreementId === broken)).toMatchObject({ unreadable: code });
    expect(items.find((i) => i.agreementId === healthy)).not.toHaveProperty("unreadable");
    expect((await s.phone.call("set_limits", { agreementId: healthy, limits: LIMITS })).type).toBe("limits_updated");
  }

  it("detects a flipped byte", async () => {
    const { s, a, b, sealedOf, setSealed } = await twoAgreements();
    const bytes = Buffer.from(sealedOf(a));
    bytes[bytes.length - 5]! ^= 0x01;
    setSealed(a, bytes);
    await expectBroken(s, a, b, "agreement_tampered");
  });

  it("detects two sealed blobs swapped between rows", async () => {
    const { s, a, b, sealedOf, setSealed } = await twoAgreements();
    const [sa, sb] = [sealedOf(a), sealedOf(b)];
    setSealed(a, sb);
    setSealed(b, sa);
    expect(errorCode(await s.phone.request("set_limits", { agreementId: a, limits: LIMITS }))).toBe("agreement_tampered");
    expect(errorCode(await s.phone.request("set_limits", { agreementId: b, limits: LIMITS }))).toBe("agreement_tampered");
  });

  it("detects an unknown key version", async () => {
    const { s, a, b, sealedOf, setSealed } = await twoAgreements();
    const bytes = Buffer.from(sealedOf(a));
    bytes.writeUInt32BE(99, 1);
    setSealed(a, bytes);
    await expectBroken(s, a, b, "agreement_key_unavailable");
  });

  it("detects a missing key: sealed under a version the broker no longer has", async () => {
    const { s, a, b, sealedOf, setSealed } = await twoAgreements();
    // Seal agreement a's plaintext under a version 2 the broker never had.
    const foreign = broker.keyring.rotated();
    const opened = broker.keyring.open(sealedOf(a));
    expect(opened.ok).toBe(true);
    if (opened.ok) setSealed(a, Buffer.from(foreign.seal(opened.plaintext)));
    await expectBroken(s, a, b, "agreement_key_unavailable");
  });

  it("still lets a device unbind a tampered agreement, destroying it", async () => {
    const { s, a, sealedOf, setSealed } = await twoAgreements();
    const bytes = Buffer.from(sealedOf(a));
    bytes[30]! ^= 0xff;
    setSealed(a, bytes);
    const payRequest = () =>
      s.terminal.request("pay_request", { login: s.login, merchantId: "any-merchant", amountMinor: 100, currency: "CNY", orderRef: "o-1", idempotencyKey: `idem-${Math.random()}` });
    // Before: the terminal's login still finds the (broken) agreement.
    expect(errorCode(await payRequest())).toBe("agreement_tampered");
    const terminalTold = s.terminal.next("unbound");
    expect((await s.phone.call("unbind", { agreementId: a })).body).toMatchObject({ agreementId: a, by: "phone" });
    expect((await terminalTold).body).toMatchObject({ agreementId: a, by: "phone" });
    // Shredded like any unbound agreement: sealed blob, blind index and key version gone.
    const row = broker.db.prepare("SELECT status, sealed, lookup, key_version, unbound_by FROM agreements WHERE id = ?").get(a);
    expect(row).toEqual({ status: "unbound", sealed: null, lookup: null, key_version: null, unbound_by: "phone" });
    // Nothing finds it any more: the login is not bound to this terminal.
    expect(errorCode(await payRequest())).toBe("not_bound");
  });
});
