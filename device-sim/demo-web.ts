/**
 * `npm run demo -- --web`: the same handoff, played by a person in two browser pages instead of
 * by the scenario runner.
 *
 * It starts a broker in this process with a WebSocket listener (which also serves the pages,
 * broker/pages.ts), registers a terminal and a phone (user alice) whose keys it makes itself,
 * adds the merchant coffee-corner and credits alice ¥500.00, then prints a link to each page. A
 * link carries its device's 32-byte Ed25519 seed in the URL fragment (`#key=<base64url>`), which
 * the browser never sends to a server; the page stores it in IndexedDB and takes it out of the
 * address bar (web/common.ts). It runs until Ctrl-C, then closes the broker and removes the
 * temporary data dir.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pino from "pino";
import { startBroker, type BrokerHandle } from "../broker/server.ts";
import { brokerConfig, masterKeyFromEnv } from "../src/config.ts";
import { formatAmount } from "../src/core/money.ts";
import { generateKeyPair, type KeyPair } from "../src/crypto/ed25519.ts";
import { toBase64 } from "../src/crypto/encoding.ts";
import { registerDevice } from "../src/service/devices.ts";
import { addMerchant, creditWallet } from "../src/service/ledger.ts";
import { LedgerRepo } from "../src/store/ledger.ts";

export interface WebDemoOptions {
  /** The WebSocket listener's port; 0 picks a free one. */
  readonly wsPort: number;
  /** Keep the broker's data here instead of in a temporary dir. */
  readonly dataDir?: string;
  readonly logLevel: string;
}

export interface WebDemoIo {
  out(line: string): void;
  err(line: string): void;
  /** Resolves when the demo should stop (the program: on Ctrl-C or SIGTERM). */
  readonly stopped: Promise<unknown>;
}

export const WEB_TERMINAL = { name: "Living room TV" } as const;
export const WEB_PHONE = { name: "Alice's phone", user: "alice" } as const;
export const WEB_MERCHANT = { id: "coffee-corner", name: "Coffee Corner" } as const;
export const WEB_CREDIT = { amountMinor: 50_000, currency: "CNY", reference: "demo-web-credit" } as const;

/** A fragment value as encodeURIComponent makes it, plus the characters it leaves (a shell or chat cuts links at '). */
function fragmentValue(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** The link that makes a page this device: base64url of the 32-byte seed, as web/common.ts deviceKey() reads it. */
export function pageLink(base: string, role: "terminal" | "phone", pair: KeyPair, name: string): string {
  return `${base}/${role}#key=${Buffer.from(pair.seed).toString("base64url")}&name=${fragmentValue(name)}`;
}

/** Runs the browser demo; returns the exit status (0 after a clean stop). */
export async function runWebDemo(o: WebDemoOptions, io: WebDemoIo): Promise<number> {
  const kept = o.dataDir !== undefined;
  const dataDir = kept ? resolve(o.dataDir!) : mkdtempSync(join(tmpdir(), "hp-demo-web-"));
  let broker: BrokerHandle | null = null;
  const cleanup = async () => {
    if (broker !== null) await broker.close().catch((err: Error) => io.err(`closing the broker: ${err.message}`));
    if (!kept) rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    // Plain TCP stays on (a simulator can join); TLS is off: a browser would refuse the
    // self-signed certificate until someone trusts it, which a throw-away demo should not ask.
    const config = brokerConfig({}, {}, { host: "127.0.0.1", port: 0, tlsPort: "off", wsPort: o.wsPort, wssPort: "off", metricsPort: "off", dataDir, logLevel: o.logLevel as "silent" });
    const log = o.logLevel === "silent" ? pino({ level: "silent" }) : pino({ level: o.logLevel }, pino.destination(2));
    broker = await startBroker(config, { log, masterKeyEnv: masterKeyFromEnv() });
    const ws = broker.listeners.ws!;
    const terminal = generateKeyPair();
    const phone = generateKeyPair();
    const now = Date.now();
    const registered = [
      registerDevice(broker.db, broker.keyring, { kind: "terminal", name: WEB_TERMINAL.name, publicKey: toBase64(terminal.publicKey) }, now),
      registerDevice(broker.db, broker.keyring, { kind: "phone", name: WEB_PHONE.name, publicKey: toBase64(phone.publicKey), userId: WEB_PHONE.user }, now),
    ];
    for (const r of registered) if (!r.ok) throw new Error(`registering a demo device: ${r.error}`);
    if (new LedgerRepo(broker.db).merchant(WEB_MERCHANT.id) === null) {
      const m = addMerchant(broker.db, WEB_MERCHANT, now);
      if (!m.ok) throw new Error(`adding the merchant: ${m.error}`);
    }
    // A reference makes the credit once per data dir: a kept --data-dir is not credited again.
    const credit = creditWallet(broker.db, broker.keyring, { userId: WEB_PHONE.user, ...WEB_CREDIT }, now);
    if (!credit.ok) throw new Error(`crediting ${WEB_PHONE.user}: ${credit.error}`);

    const base = `http://${config.host}:${ws.port}`;
    const [t, p] = registered.map((r) => (r.ok ? r.device.id : ""));
    const lines = [
      "Handoff Pay browser demo",
      "",
      `broker   started in this process: pages and MQTT over WebSocket on ${base} (ws://${config.host}:${ws.port}/mqtt),`,
      `         plain MQTT on ${broker.url}; data dir ${dataDir}${kept ? " (kept)" : " (temporary: removed when you stop)"}`,
      `devices  terminal "${WEB_TERMINAL.name}" ${t}; phone "${WEB_PHONE.name}" ${p} for user ${WEB_PHONE.user}`,
      `money    merchant ${WEB_MERCHANT.name} (${WEB_MERCHANT.id}); wallet of ${WEB_PHONE.user}: ${formatAmount(credit.balanceMinor, WEB_CREDIT.currency)} ${WEB_CREDIT.currency}${credit.repeated ? " (credited on an earlier run)" : ""}`,
      "",
      "Open each link in a browser tab (the same browser is fine: each page keeps its own key):",
      "",
      `  Terminal  ${pageLink(base, "terminal", terminal, WEB_TERMINAL.name)}`,
      "",
      `  Phone     ${pageLink(base, "phone", phone, WEB_PHONE.name)}`,
      "",
      "These links carry the demo devices' private keys (in the part after #, which the browser does",
      "not send to the broker). They are for this throw-away demo broker only: do not share them, and",
      "never make links like these for a real device.",
      "",
      "Then:",
      `  1. On the terminal, press Bind (the login "${WEB_PHONE.user}" is filled in): it shows a pairing code and a QR code.`,
      "  2. On the phone, type the code (any case, with or without the dash) and press Pair.",
      `  3. On the terminal, pay ${WEB_MERCHANT.id}: a small amount is confirmed by itself; above the`,
      "     phone's auto-confirm limit the phone asks, and you approve or decline it there.",
      "",
      "Press Ctrl-C to stop: the broker closes" + (kept ? "; the data dir is kept." : " and the temporary data dir is removed."),
    ];
    for (const line of lines) io.out(line);
    await io.stopped;
    io.out("");
    io.out(kept ? `Stopping: closing the broker; data kept in ${dataDir}.` : "Stopping: closing the broker and removing the temporary data dir.");
    await cleanup();
    broker = null;
    io.out("Stopped.");
    return 0;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = e.code === "EADDRINUSE" ? ` (port ${o.wsPort} is in use: --ws-port 0 picks a free one)` : "";
    io.err(`demo: ${e.message}${hint}`);
    await cleanup();
    return 1;
  }
}
