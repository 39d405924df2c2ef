/** The interactive simulator driven through stdin, as a person would use it. */
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { PhoneAgent } from "../../device-sim/agents.ts";
import type { Device } from "../../device-sim/device.ts";
import { writeKeyFile, type DeviceKey } from "../../device-sim/keyfile.ts";
import { addMerchant, creditWallet } from "../../src/service/ledger.ts";
import { spawnProgram, startTestBroker, tempDir, type TestBroker } from "../helpers.ts";

const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 };

let broker: TestBroker;
const children: ChildProcessWithoutNullStreams[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
  await broker?.stop();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A simulator process whose output can be awaited line by line. */
function sim(args: string[]) {
  const child = spawnProgram("device-sim/cli", [...args, "--url", broker.url, "--data-dir", broker.dataDir]);
  children.push(child);
  let output = "";
  const waiters: { text: string; resolve: () => void }[] = [];
  const onData = (d: Buffer) => {
    output += d.toString();
    for (const w of [...waiters]) {
      if (!output.includes(w.text)) continue;
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  return {
    type: (line: string) => child.stdin.write(line + "\n"),
    output: () => output,
    waitFor: (text: string, timeoutMs = 15_000) =>
      new Promise<void>((resolve, reject) => {
        if (output.includes(text)) return resolve();
        const timer = setTimeout(() => reject(new Error(`no "${text}" within ${timeoutMs} ms; output so far:\n${output}`)), timeoutMs);
        waiters.push({ text, resolve: () => (clearTimeout(timer), resolve()) });
      }),
  };
}

async function bound(overrides: Parameters<typeof startTestBroker>[0] = {}) {
  broker = await startTestBroker(overrides);
  addMerchant(broker.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now());
  creditWallet(broker.db, broker.keyring, { userId: "alice", amountMinor: 50_000, currency: "CNY" }, Date.now());
  const dir = tempDir();
  dirs.push(dir);
  const files = { terminal: join(dir, "tv.key"), phone: join(dir, "phone.key") };
  const keys: Record<"terminal" | "phone", DeviceKey> = { terminal: broker.register("terminal", { name: "Living room TV" }), phone: broker.register("phone", { userId: "alice" }) };
  writeKeyFile(files.terminal, keys.terminal);
  writeKeyFile(files.phone, keys.phone);
  const terminal = await broker.device(keys.terminal);
  const phone = await broker.device(keys.phone);
  const code = (await terminal.call("bind_request", { login: "alice", terminal: { model: "TV", serial: "SN", displayName: "Living room TV" } })).body.code;
  await phone.call("bind_confirm", { code, limits: LIMITS });
  return { files, terminal, phone };
}

const payFrom = (terminal: Device, amountMinor: number) =>
  terminal.call("pay_request", { login: "alice", merchantId: "coffee-corner", amountMinor, currency: "CNY", orderRef: "o", idempotencyKey: `k-${Math.random()}` });

describe("phone simulator", () => {
  it.each([
    ["y", "completed"],
    ["n", "declined"],
  ])("asks the person, and answering %s ends the payment %s", async (answer, status) => {
    const { files, terminal, phone } = await bound();
    await phone.close();
    const p = sim(["phone", "--key", files.phone]);
    await p.waitFor("bound to Living room TV");
    const result = terminal.next("payment_result", 15_000);
    await payFrom(terminal, 12_800);
    await p.waitFor("Approve ¥128.00 to Coffee Corner, from Living room TV? [y/N] (");
    p.type(answer);
    expect((await result).body.status).toBe(status);
    await p.waitFor(status.toUpperCase());
  });

  it("says so when nobody answers before the deadline", async () => {
    const { files, terminal, phone } = await bound({ promptTtlMs: 1500 });
    await phone.close();
    const p = sim(["phone", "--key", files.phone]);
    await p.waitFor("connected");
    const result = terminal.next("payment_result", 15_000);
    await payFrom(terminal, 12_800);
    await p.waitFor("[y/N]");
    expect((await result).body).toMatchObject({ status: "expired", reason: "prompt_expired" });
    await p.waitFor("EXPIRED (prompt_expired)");
  });
});

describe("terminal simulator", () => {
  /** What the simulator printed since `mark`, one entry a line, without the time stamps. */
  const printedSince = (output: string, mark: number) =>
    output
      .slice(mark)
      .trim()
      .split("\n")
      .map((l) => l.replace(/^\d\d:\d\d:\d\d\.\d{3} {2}/, ""));

  it("pays from a typed command and shows every step it hears up to the result", async () => {
    const { files, terminal, phone } = await bound();
    await terminal.close();
    new PhoneAgent(phone, () => "approve");
    const t = sim(["terminal", "--key", files.terminal, "--login", "alice", "--merchant", "coffee-corner"]);
    await t.waitFor("type help for commands");

    // Auto-confirmed: the answer says so, and the result is the only message after it.
    let mark = t.output().length;
    t.type("pay 12.80 CNY");
    await t.waitFor("COMPLETED: ¥12.80 to Coffee Corner");
    expect(printedSince(t.output(), mark)).toEqual([
      expect.stringMatching(/^accepted \S+: auto-confirmed within the limits: the phone is paying…$/),
      expect.stringMatching(/^COMPLETED: ¥12\.80 to Coffee Corner, transfer \S+ — \d+ ms$/),
    ]);

    // Prompted: the answer says the prompt was sent; the phone's receipt and its approval follow.
    mark = t.output().length;
    t.type('pay 128 CNY --description "Two flat whites"');
    await t.waitFor("COMPLETED: ¥128.00 to Coffee Corner");
    expect(printedSince(t.output(), mark)).toEqual([
      expect.stringMatching(/^accepted \S+: prompt sent to the phone, waiting for its answer$/),
      "the phone shows the prompt",
      "confirmed on the phone: the phone is paying…",
      expect.stringMatching(/^COMPLETED: ¥128\.00 to Coffee Corner, transfer \S+ — \d+ ms$/),
    ]);

    t.type("pay 2000 CNY");
    await t.waitFor("over_limit");
    t.type("help");
    await t.waitFor("cancel PAYMENT_ID");
  });

  it("cancels a payment the phone has not answered: the cancel is answered by the result", async () => {
    const { files, terminal } = await bound();
    await terminal.close();
    // The phone is connected (its PUBACK is the receipt) but nobody answers the prompt.
    const t = sim(["terminal", "--key", files.terminal, "--login", "alice", "--merchant", "coffee-corner"]);
    await t.waitFor("type help for commands");
    t.type("pay 128 CNY");
    await t.waitFor("the phone shows the prompt");
    const paymentId = /accepted (\S+): prompt sent/.exec(t.output())![1]!;
    t.type(`cancel ${paymentId}`);
    await t.waitFor(`${paymentId}: cancelled, ¥128.00 to Coffee Corner`);
    await t.waitFor("CANCELLED: ¥128.00 to Coffee Corner");
  });
});
