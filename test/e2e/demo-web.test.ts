/**
 * `npm run demo -- --web`: a broker set up for a person to try the browser pages with. The
 * links it prints make working devices (their keys are registered, the pages are served on the
 * link's port), it funds alice once per data dir, and Ctrl-C stops it cleanly.
 */
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { loadKeyring, openDataDb } from "../../broker/data-dir.ts";
import { Device } from "../../device-sim/device.ts";
import { runDemo } from "../../device-sim/demo.ts";
import { keyPairFromSeed } from "../../src/crypto/ed25519.ts";
import { fromBase64 } from "../../src/crypto/encoding.ts";
import { deviceIdFor } from "../../src/crypto/ids.ts";
import { walletBalance } from "../../src/service/ledger.ts";
import { LedgerRepo } from "../../src/store/ledger.ts";
import { spawnProgram, tempDir } from "../helpers.ts";

const READY = "Press Ctrl-C to stop";

interface Link {
  readonly url: URL;
  readonly seed: Uint8Array;
  readonly name: string;
}

/** A printed page link, read as web/common.ts reads it: base64url seed and name from the fragment. */
function link(out: string, label: "Terminal" | "Phone"): Link {
  const m = new RegExp(`^  ${label}\\s+(http://\\S+)$`, "m").exec(out);
  expect(m, `${label} link in:\n${out}`).not.toBeNull();
  const url = new URL(m![1]!);
  const params = new URLSearchParams(url.hash.slice(1));
  const key = params.get("key")!;
  expect(key).toMatch(/^[A-Za-z0-9_-]{43}$/);
  const seed = fromBase64(key.replace(/-/g, "+").replace(/_/g, "/") + "=")!;
  return { url, seed, name: params.get("name")! };
}

function pageConfig(html: string): { role: string; brokerPublicKey: string } {
  return JSON.parse(/<script id="hp-config" type="application\/json">([^<]*)<\/script>/.exec(html)![1]!) as { role: string; brokerPublicKey: string };
}

let child: ChildProcessWithoutNullStreams | null = null;
const devices: Device[] = [];
afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close()));
  if (child !== null && child.exitCode === null) child.kill("SIGKILL");
  child = null;
});

describe("npm run demo -- --web", () => {
  it("prints links whose keys are registered devices on the link's port, serves the pages there, and ends with exit 0 on Ctrl-C, its data dir removed", { timeout: 60_000 }, async () => {
    const proc = spawnProgram("device-sim/demo", ["--web"]);
    child = proc;
    let stdout = "";
    let stderr = "";
    proc.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => proc.on("close", (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      proc.stdout.on("data", (b: Buffer) => {
        stdout += b.toString();
        if (stdout.includes(READY)) resolve();
      });
      void exited.then((code) => reject(new Error(`demo exited ${code} before it was ready:\n${stdout}\n${stderr}`)));
    });

    const terminal = link(stdout, "Terminal");
    const phone = link(stdout, "Phone");
    expect([terminal.url.pathname, phone.url.pathname]).toEqual(["/terminal", "/phone"]);
    expect(terminal.url.port).toBe(phone.url.port);
    expect([terminal.name, phone.name]).toEqual(["Living room TV", "Alice's phone"]);
    expect(stdout).toContain("name=Alice%27s%20phone");
    expect(stdout).toMatch(/private keys/);
    expect(stdout).toMatch(/throw-away demo broker only/);
    const dataDir = /data dir (\S+) \(temporary/.exec(stdout)?.[1];
    expect(dataDir).toBeDefined();
    expect(existsSync(dataDir!)).toBe(true);

    const page = await fetch(new URL("/terminal", terminal.url));
    expect(page.status).toBe(200);
    const config = pageConfig(await page.text());
    expect(config.role).toBe("terminal");
    const brokerPublicKey = fromBase64(config.brokerPublicKey)!;

    // The seeds make the devices the demo registered: the broker accepts their tokens on the printed port.
    const ws = `ws://${terminal.url.host}/mqtt`;
    for (const [l, kind] of [
      [terminal, "terminal"],
      [phone, "phone"],
    ] as const) {
      const pair = keyPairFromSeed(l.seed);
      const key = { deviceId: deviceIdFor(pair.publicKey), kind, pair };
      expect(stdout).toContain(key.deviceId);
      const device = new Device({ url: ws, key, brokerPublicKey, reconnect: false });
      devices.push(device);
      await device.connect();
      expect((await device.call("ping", {})).type).toBe("pong");
    }
    await Promise.all(devices.splice(0).map((d) => d.close()));

    proc.kill("SIGINT");
    expect(await exited, stderr).toBe(0);
    expect(stdout).toContain("Stopped.");
    expect(existsSync(dataDir!)).toBe(false);
  });

  it("adds coffee-corner and credits alice ¥500.00 once per data dir, however often it runs there", { timeout: 30_000 }, async () => {
    const dir = tempDir("hp-demo-web-test-");
    try {
      for (let run = 0; run < 2; run++) {
        const stop = new AbortController();
        const lines: string[] = [];
        const code = await runDemo(["--web", "--data-dir", dir], {
          out: (l) => {
            lines.push(l);
            if (l.startsWith(READY)) stop.abort();
          },
          err: (l) => lines.push(l),
          stop: stop.signal,
        });
        expect(code, lines.join("\n")).toBe(0);
        expect(lines.join("\n")).toContain(run === 0 ? "wallet of alice: ¥500.00" : "(credited on an earlier run)");
      }
      expect(existsSync(dir)).toBe(true);
      const db = openDataDb(dir);
      try {
        const { keyring } = loadKeyring(dir, undefined);
        expect(walletBalance(db, keyring, "alice", "CNY")).toBe(50_000);
        expect(new LedgerRepo(db).merchant("coffee-corner")?.name).toBe("Coffee Corner");
      } finally {
        db.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each([
    [["--web", "--json"], "--json is for playing a scenario"],
    [["--web", "--url", "mqtt://127.0.0.1:1"], "--url is for playing a scenario"],
    [["--web", "--ws-port", "http"], "--ws-port must be a port number"],
    [["--web", "--ws-port", "70000"], "--ws-port must be a port number"],
    [["--ws-port", "18080"], "--ws-port is for --web"],
  ])("refuses %j with exit status 2 and says why", async (argv, message) => {
    const errors: string[] = [];
    const code = await runDemo(argv, { out: () => undefined, err: (l) => errors.push(l) });
    expect(code).toBe(2);
    expect(errors.join("\n")).toContain(message);
  });

  it("--help documents --web and --ws-port", async () => {
    const lines: string[] = [];
    expect(await runDemo(["--help"], { out: (l) => lines.push(l), err: () => undefined })).toBe(0);
    const help = lines.join("\n");
    expect(help).toMatch(/--web\s+instead of playing a scenario/);
    expect(help).toMatch(/--ws-port PORT\s+with --web/);
    expect(help).toContain("npm run demo -- --web");
  });
});
