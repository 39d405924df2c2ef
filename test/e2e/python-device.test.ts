/**
 * The Python device of docs/protocol.md §A device in Python, run as written against a real
 * broker: a stranger's phone in another language. It connects with a connect token, pings,
 * is thrown off by a second connection of its own id and reconnects by hand with a new token
 * (a reused one would get CONNACK 4 and stop it), then executes an auto-confirmed payment and
 * a prompted one that the test approves on its console. It needs a Python with paho-mqtt (1.x,
 * as Debian ships, or 2.x) and cryptography; without one it is skipped, saying so.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { Device, Received } from "../../device-sim/device.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { addMerchant, creditWallet, walletBalance } from "../../src/service/ledger.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { connectAs } from "../wire.ts";

/** The first python3 that has paho-mqtt and cryptography, with paho's version; null if none. */
function findPython(): { exe: string; paho: string } | null {
  for (const exe of ["/usr/bin/python3", "python3"]) {
    const r = spawnSync(exe, ["-c", "import cryptography, paho.mqtt; print(paho.mqtt.__version__)"], { encoding: "utf8" });
    if (r.status === 0) return { exe, paho: r.stdout.trim() };
  }
  return null;
}

const PY = findPython();
const DOC = readFileSync(new URL("../../docs/protocol.md", import.meta.url), "utf8");
const SECTION = DOC.slice(DOC.indexOf("\n## A device in Python\n"), DOC.indexOf("\n## Not in version 1 yet\n"));
const SKETCH = /```python\n([\s\S]*?)\n```/.exec(SECTION)?.[1];
const LIMITS = { currency: "CNY", autoConfirmMaxMinor: 1000, autoConfirmDailyMinor: 5000, perPaymentMaxMinor: 100_000 };

/** A running Python device: its output so far, and a wait for a pattern to appear in it n times. */
class PythonDevice {
  stdout = "";
  stderr = "";
  readonly #waiters: (() => void)[] = [];

  constructor(readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding("utf8").on("data", (s: string) => {
      this.stdout += s;
      for (const w of this.#waiters.splice(0)) w();
    });
    child.stderr.setEncoding("utf8").on("data", (s: string) => (this.stderr += s));
  }

  count(re: RegExp): number {
    return [...this.stdout.matchAll(new RegExp(re.source, "gm"))].length;
  }

  async waitFor(re: RegExp, times = 1, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.count(re) < times) {
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(`python device: ${re} seen ${this.count(re)} of ${times} times; exit ${this.child.exitCode}\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`);
      }
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  }
}

let broker: TestBroker | undefined;
let py: PythonDevice | undefined;
let dir: string | undefined;
afterEach(async () => {
  py?.child.kill();
  await broker?.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

const title = "the document's Python phone connects, reconnects with a new token, and pays an auto-confirmed and a prompted payment";

describe("docs/protocol.md §A device in Python, against a real broker", () => {
  it.skipIf(PY === null).each(["plain TCP", "TLS"] as const)(PY === null ? `${title}, over %s (skipped: no python3 with paho-mqtt and cryptography; apt-get install python3-paho-mqtt python3-cryptography)` : `${title}, over %s (paho-mqtt ${PY.paho})`, async (transport) => {
    expect(SKETCH).toBeDefined();
    broker = await startTestBroker(transport === "TLS" ? { tlsPort: 0 } : {});
    const userId = "alice";
    expect(addMerchant(broker.db, { id: "coffee-corner", name: "Coffee Corner" }, Date.now())).toEqual({ ok: true });
    expect(creditWallet(broker.db, broker.keyring, { userId, amountMinor: 50_000, currency: "CNY" }, Date.now()).ok).toBe(true);
    const terminal = await broker.device(broker.register("terminal", { name: "Living room TV" }));
    const phoneKey = broker.register("phone", { userId });
    // Binding is not in the sketch: bind the phone's key from TypeScript, then hand it to Python.
    const bindingPhone = await broker.device(phoneKey);
    const code = (await terminal.call("bind_request", { login: "alice@tv", terminal: { model: "TV", serial: "SN1", displayName: "Living room TV" } })).body.code;
    await bindingPhone.call("bind_confirm", { code, limits: LIMITS });
    await bindingPhone.close();

    dir = mkdtempSync(join(tmpdir(), "hp-python-device-"));
    writeFileSync(join(dir, "device.py"), SKETCH!);
    // Over TLS the sketch trusts the broker's self-signed certificate, given as a CA file.
    const tls = transport === "TLS" ? { port: String(broker.listeners.tls!.port), cafile: join(dir, "broker.crt") } : null;
    if (tls !== null) writeFileSync(tls.cafile, broker.certificate!.pem);
    const port = tls?.port ?? new URL(broker.url).port;
    py = new PythonDevice(spawn(PY!.exe, ["-u", join(dir, "device.py"), Buffer.from(phoneKey.pair.seed).toString("hex"), toBase64(broker.publicKey), "127.0.0.1", port, ...(tls === null ? [] : [tls.cafile])]));
    await py.waitFor(/^pong re \S+ \{'echo': 'hello'/);

    // A second connection with the phone's id closes the first (one connection per device).
    // The sketch connects again with a new token, which closes this one in turn, and pings.
    const intruder = await connectAs(broker.url, phoneKey);
    await py.waitFor(/^pong re \S+ \{'echo': 'hello'/, 2);
    await intruder.endAsync(true);

    const pay = async (amountMinor: number, orderRef: string): Promise<Received> =>
      terminal.call("pay_request", { login: "alice@tv", merchantId: "coffee-corner", amountMinor, currency: "CNY", orderRef, idempotencyKey: orderRef });
    const resultOf = (t: Device, paymentId: unknown) => t.next("payment_result", 20_000, (m) => m.body.paymentId === paymentId);

    const auto = await pay(500, "order-1");
    expect(auto.body).toMatchObject({ mode: "auto", status: "executing" });
    expect((await resultOf(terminal, auto.body.paymentId)).body).toMatchObject({ status: "completed", amountMinor: 500 });

    const prompted = await pay(6000, "order-2");
    expect(prompted.body).toMatchObject({ mode: "prompt", status: "awaiting_confirmation" });
    const result = resultOf(terminal, prompted.body.paymentId);
    await py.waitFor(/Pay 6000 minor units of CNY to Coffee Corner\? \[y\/N\]/);
    py.child.stdin.write("y\n");
    expect((await result).body).toMatchObject({ status: "completed", amountMinor: 6000 });

    expect(walletBalance(broker.db, broker.keyring, userId, "CNY")).toBe(50_000 - 500 - 6000);
    expect(py.stdout).not.toMatch(/refused|connection failed/);
    expect(py.stderr).toBe("");
  });
});
