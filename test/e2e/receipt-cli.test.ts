/**
 * Receipts as a person gets them: the simulator saves each payment result the broker signed
 * (--receipts DIR), adds the broker's inclusion proof on request (receipt FILE), and the admin
 * tool checks the file offline with the broker's public key alone, refusing a changed one.
 */
import { readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { PhoneAgent } from "../../device-sim/agents.ts";
import { writeKeyFile } from "../../device-sim/keyfile.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { addMerchant, creditWallet } from "../../src/service/ledger.ts";
import { runProgram, startTestBroker, tempDir, type TestBroker } from "../helpers.ts";

const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 };

let broker: TestBroker | null = null;
const dirs: string[] = [];
afterEach(async () => {
  await broker?.stop();
  broker = null;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("receipts from the simulator", () => {
  it("saves the signed result of a payment, adds its inclusion proof, and admin receipt verify accepts it with the broker key alone and refuses it once changed", { timeout: 90_000 }, async () => {
    const b = (broker = await startTestBroker());
    addMerchant(b.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now());
    creditWallet(b.db, b.keyring, { userId: "alice", amountMinor: 50_000, currency: "CNY" }, Date.now());
    const dir = tempDir();
    dirs.push(dir);
    const tv = b.register("terminal", { name: "Living room TV" });
    const phoneKey = b.register("phone", { userId: "alice" });
    writeKeyFile(join(dir, "tv.key"), tv);
    const terminal = await b.device(tv);
    const phone = await b.device(phoneKey);
    const code = (await terminal.call("bind_request", { login: "alice", terminal: { model: "TV", serial: "SN", displayName: "Living room TV" } })).body.code;
    await phone.call("bind_confirm", { code, limits: LIMITS });
    await terminal.close();
    new PhoneAgent(phone, () => "approve");

    const receipts = join(dir, "receipts");
    const device = ["--key", join(dir, "tv.key"), "--url", b.url, "--data-dir", b.dataDir];
    // 88.00 is above the auto limit: prompted, approved by the phone agent, executed.
    const paid = await runProgram("device-sim/cli", ["terminal", ...device, "pay", "88.00", "CNY", "--login", "alice", "--merchant", "coffee-corner", "--receipts", receipts]);
    expect(paid.output).toContain("COMPLETED");
    expect(paid.code).toBe(0);
    const [name] = readdirSync(receipts);
    expect(name).toMatch(/^pay_[a-z2-7]{20}\.terminal\.json$/);
    const file = join(receipts, name!);

    const proved = await runProgram("device-sim/cli", ["terminal", ...device, "receipt", file]);
    expect(proved.code, proved.output).toBe(0);
    const receipt = JSON.parse(readFileSync(file, "utf8")) as { envelope: { payload: string }; inclusion?: { index: number } };
    const body = (JSON.parse(receipt.envelope.payload) as { body: { status: string; amountMinor: number; auditIndex: number } }).body;
    expect(body).toMatchObject({ status: "completed", amountMinor: 8800 });
    expect(receipt.inclusion?.index).toBe(body.auditIndex);

    // Offline: no data dir, only the broker's public key.
    const key = toBase64(b.publicKey);
    const ok = await runProgram("broker/admin", ["receipt", "verify", file, "--broker-key", key, "--data-dir", join(dir, "nowhere")]);
    expect(ok.output).toContain("completed");
    expect(ok.code, ok.output).toBe(0);

    writeFileSync(file, readFileSync(file, "utf8").replace(/\\"amountMinor\\":8800/, '\\"amountMinor\\":880'));
    const changed = await runProgram("broker/admin", ["receipt", "verify", file, "--broker-key", key, "--data-dir", join(dir, "nowhere")]);
    expect(changed.code).toBe(1);
    expect(changed.output).toMatch(/does not verify/);
  });
});
