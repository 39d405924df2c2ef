/**
 * The browser pages on the WebSocket listeners (broker/pages.ts), through a real broker: the two
 * shells with the broker's identity, their security headers, the bundles, what is refused, and
 * that MQTT over WebSocket still works on the same port.
 */
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { request as httpsRequest } from "node:https";
import { afterEach, describe, expect, it } from "vitest";
import { Device } from "../../device-sim/device.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

/** One HTTP(S) request with the path sent exactly as given (fetch would normalise "/../"). */
function send(url: string, path: string, o: { method?: string; ca?: string } = {}): Promise<Answer> {
  const u = new URL(url);
  const request = u.protocol === "wss:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method: o.method ?? "GET", ...(o.ca === undefined ? {} : { ca: o.ca }) }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

/** The JSON block a shell hands its page (web/common.ts pageConfig reads it). */
function pageConfig(html: string): { role: string; brokerPublicKey: string; tlsFingerprint: string | null } {
  const m = /<script id="hp-config" type="application\/json">([^<]*)<\/script>/.exec(html);
  expect(m, "hp-config block").not.toBeNull();
  return JSON.parse(m![1]!) as { role: string; brokerPublicKey: string; tlsFingerprint: string | null };
}

function expectSecurityHeaders(a: Answer): void {
  const csp = String(a.headers["content-security-policy"]);
  expect(csp).toContain("frame-ancestors 'none'");
  expect(csp).toContain("script-src 'self'");
  expect(csp).toContain("default-src 'none'");
  expect(csp).not.toContain("unsafe-inline");
  expect(a.headers["x-frame-options"]).toBe("DENY");
  expect(a.headers["x-content-type-options"]).toBe("nosniff");
}

let broker: TestBroker | null = null;
afterEach(async () => {
  await broker?.stop();
  broker = null;
});

describe("the pages on the ws listener", () => {
  it.each(["terminal", "phone"])("serves /%s as HTML carrying the broker's public key and the role, with no TLS fingerprint on plain ws", async (role) => {
    broker = await startTestBroker({ wsPort: 0 });
    const ws = broker.listeners.ws!.url;
    const a = await send(ws, `/${role}`);
    expect(a.status).toBe(200);
    expect(a.headers["content-type"]).toMatch(/^text\/html/);
    expectSecurityHeaders(a);
    expect(pageConfig(a.body)).toEqual({ role, brokerPublicKey: toBase64(broker.publicKey), tlsFingerprint: null });
    expect(a.body).toContain(`<script type="module" src="/assets/${role}.js"></script>`);
    // The page's own fragment or query (a pairing code in a link) does not change what is served.
    const withQuery = await send(ws, `/${role}?code=ABCD-EFGH`);
    expect(withQuery.status).toBe(200);
    expect(pageConfig(withQuery.body).role).toBe(role);
  });

  it("serves the bundles and the style sheet with their content types and the same headers", async () => {
    broker = await startTestBroker({ wsPort: 0 });
    const ws = broker.listeners.ws!.url;
    for (const [path, type] of [
      ["/assets/terminal.js", /^text\/javascript/],
      ["/assets/phone.js", /^text\/javascript/],
      ["/assets/pages.css", /^text\/css/],
    ] as const) {
      const a = await send(ws, path);
      expect(a.status, path).toBe(200);
      expect(a.headers["content-type"], path).toMatch(type);
      expect(a.body.length, path).toBeGreaterThan(0);
      expectSecurityHeaders(a);
    }
  });

  it("answers an unknown path 404 and any method but GET and HEAD 405", async () => {
    broker = await startTestBroker({ wsPort: 0 });
    const ws = broker.listeners.ws!.url;
    for (const path of ["/nothing", "/assets/", "/assets/other.js", "/terminal.js", "/terminalx"]) expect((await send(ws, path)).status, path).toBe(404);
    for (const method of ["POST", "PUT", "DELETE"]) {
      const a = await send(ws, "/terminal", { method });
      expect(a.status, method).toBe(405);
      expect(a.headers.allow).toBe("GET, HEAD");
    }
  });

  it("answers HEAD with the GET's headers and no body", async () => {
    broker = await startTestBroker({ wsPort: 0 });
    const ws = broker.listeners.ws!.url;
    const get = await send(ws, "/phone");
    const head = await send(ws, "/phone", { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.body).toBe("");
    expect(head.headers["content-type"]).toBe(get.headers["content-type"]);
    expect(head.headers["content-length"]).toBe(String(Buffer.byteLength(get.body)));
    expectSecurityHeaders(head);
  });

  it.each([
    "/assets/../../package.json",
    "/assets/../package.json",
    "/assets/%2e%2e/%2e%2e/package.json",
    "/assets/%2e%2e%2f%2e%2e%2fpackage.json",
    "/assets/..%2f..%2fpackage.json",
    "/assets/terminal.js/../../../package.json",
    "/assets/..\\..\\package.json",
    "/assets/%2fetc%2fpasswd",
  ])("answers the path traversal %s with 404, not a file", async (path) => {
    broker = await startTestBroker({ wsPort: 0 });
    const a = await send(broker.listeners.ws!.url, path);
    expect(a.status).toBe(404);
    expect(a.body).not.toContain("handoff-pay");
    expect(a.body).not.toContain("root:");
  });

  it("still takes MQTT over WebSocket on the same port: a registered device connects and pings", { timeout: 20_000 }, async () => {
    broker = await startTestBroker({ wsPort: 0 });
    const ws = broker.listeners.ws!.url;
    expect((await send(ws, "/terminal")).status).toBe(200);
    const key = broker.register("terminal");
    const device = new Device({ url: `${ws.replace(/\/$/, "")}/mqtt`, key, brokerPublicKey: broker.publicKey, reconnect: false });
    try {
      await device.connect();
      expect((await device.call("ping", {})).type).toBe("pong");
    } finally {
      await device.close();
    }
  });
});

describe("the pages on the wss listener", () => {
  it("gives the shell the fingerprint of the certificate the listener presents", { timeout: 20_000 }, async () => {
    broker = await startTestBroker({ wssPort: 0, tlsPort: "off" });
    expect(broker.listeners.tls).toBeUndefined();
    const cert = broker.certificate!;
    const wss = broker.listeners.wss!.url;
    const a = await send(wss, "/terminal", { ca: cert.pem });
    expect(a.status).toBe(200);
    expectSecurityHeaders(a);
    const config = pageConfig(a.body);
    expect(config.tlsFingerprint).toBe(cert.fingerprint256);
    expect(config.tlsFingerprint).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect(config.brokerPublicKey).toBe(toBase64(broker.publicKey));
  });
});
