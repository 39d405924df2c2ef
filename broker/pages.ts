/**
 * The browser pages on the WebSocket listeners' HTTP side: /terminal and /phone, each a small
 * HTML shell plus the page's bundle from dist/web/ (built by scripts/build.mjs from web/), so a
 * browser on a machine without internet gets everything from the broker.
 *
 *   GET /               links to both pages
 *   GET /terminal       the browser terminal (web/terminal.ts)
 *   GET /phone          the browser phone (web/phone.ts)
 *   GET /assets/<file>  terminal.js, phone.js, pages.css and their source maps
 *
 * The shell carries the broker's identity (its Ed25519 public key and, on wss, its TLS
 * certificate's fingerprint) in a JSON block; the page pins the key on first use
 * (src/device/browser-store.ts). Every answer forbids framing (no click-jacking an Approve
 * button) and limits the page to its own origin (Content-Security-Policy). Anything else is 404;
 * any method but GET and HEAD is 405.
 */
import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import type { HttpHandler } from "./listener.ts";

/** Where the build puts the pages' bundles (scripts/build.mjs PAGES_DIR). */
export const PAGES_DIR = fileURLToPath(new URL("../dist/web/", import.meta.url));

export const PAGE_ROLES = ["terminal", "phone"] as const;
export type PageRole = (typeof PAGE_ROLES)[number];

const ASSETS: Readonly<Record<string, string>> = {
  "terminal.js": "text/javascript; charset=utf-8",
  "phone.js": "text/javascript; charset=utf-8",
  "pages.css": "text/css; charset=utf-8",
  "terminal.js.map": "application/json",
  "phone.js.map": "application/json",
};

/** What a page learns from the shell it is served in (web/common.ts reads it). */
export interface PageConfig {
  readonly role: PageRole;
  /** The broker's Ed25519 public key, base64. */
  readonly brokerPublicKey: string;
  /** The SHA-256 fingerprint of the TLS certificate the wss listener presents; null without TLS. */
  readonly tlsFingerprint: string | null;
}

export interface PagesOptions {
  readonly brokerPublicKey: string;
  /** The current certificate's fingerprint (it changes on a SIGHUP reload), or null. */
  readonly tlsFingerprint: () => string | null;
  readonly log: Logger;
  /** Where the bundles are (tests may point elsewhere). */
  readonly dir?: string;
}

const TITLES: Record<PageRole, string> = { terminal: "Handoff Pay — terminal", phone: "Handoff Pay — phone" };

/** JSON that is safe inside a <script> element: no "</script>", no "<!--". */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, "\\u003c");
}

export function pageHtml(config: PageConfig): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${TITLES[config.role]}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/pages.css">
<script id="hp-config" type="application/json">${scriptJson(config)}</script>
<script type="module" src="/assets/${config.role}.js"></script>
</head>
<body class="role-${config.role}">
<main id="app"><p class="loading">Loading the ${config.role}…</p><noscript>This page needs JavaScript: it is the device.</noscript></main>
</body>
</html>
`;
}

const INDEX_HTML = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Handoff Pay</title><link rel="icon" href="data:,"><link rel="stylesheet" href="/assets/pages.css"></head>
<body><main id="app"><h1>Handoff Pay</h1><p>This broker serves two device pages:</p>
<ul><li><a href="/terminal">Terminal</a>: the smart TV, kiosk or car that asks for payments</li><li><a href="/phone">Phone</a>: confirms and executes them</li></ul>
<p>Both can be open in the same browser: each page keeps its own device key (in IndexedDB).</p></main></body>
</html>
`;

function headers(host: string | undefined, contentType: string, extra: Record<string, string> = {}): Record<string, string> {
  // The page talks to the broker on its own origin; 'self' covers ws/wss there in current
  // browsers, the explicit ws:/wss: sources the ones that predate CSP level 3.
  const sockets = host === undefined ? "" : ` ws://${host} wss://${host}`;
  return {
    "content-type": contentType,
    "content-security-policy": `default-src 'none'; script-src 'self'; worker-src 'self' blob:; style-src 'self'; img-src 'self' data:; connect-src 'self'${sockets}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    ...extra,
  };
}

function plain(res: ServerResponse, status: number, text: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff", ...extra });
  res.end(`${text}\n`);
}

/** The HTTP handler for the ws and wss listeners. */
export function pagesHandler(o: PagesOptions): HttpHandler {
  const dir = o.dir ?? PAGES_DIR;
  return (req: IncomingMessage, res: ServerResponse) => {
    void serve(req, res).catch((err: unknown) => {
      o.log.error({ err: (err as Error).message, path: req.url }, "page request failed");
      if (!res.headersSent) plain(res, 500, "internal error");
      else res.destroy();
    });
  };

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== "GET" && req.method !== "HEAD") return plain(res, 405, "only GET and HEAD", { allow: "GET, HEAD" });
    // Only the path matters; a query (a pairing code in a QR link) is the page's to read.
    const path = (req.url ?? "/").split(/[?#]/, 1)[0]!;
    const host = req.headers.host;
    const send = (status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}) => {
      res.writeHead(status, headers(host, type, { "content-length": String(Buffer.byteLength(body)), ...extra }));
      res.end(req.method === "HEAD" ? undefined : body);
    };
    if (path === "/") return send(200, "text/html; charset=utf-8", INDEX_HTML, { "cache-control": "no-store" });
    const role = PAGE_ROLES.find((r) => path === `/${r}` || path === `/${r}/`);
    if (role !== undefined) {
      const html = pageHtml({ role, brokerPublicKey: o.brokerPublicKey, tlsFingerprint: o.tlsFingerprint() });
      return send(200, "text/html; charset=utf-8", html, { "cache-control": "no-store" });
    }
    const asset = path.startsWith("/assets/") ? path.slice("/assets/".length) : null;
    const type = asset === null ? undefined : ASSETS[asset];
    if (asset === null || type === undefined) return plain(res, 404, "not found: this port serves /terminal, /phone and MQTT over WebSocket (sub-protocol mqtt)");
    let body: Buffer;
    try {
      body = await readFile(`${dir}/${asset}`);
    } catch {
      return plain(res, 503, `the pages are not built (${asset} is missing from ${dir}): run npm run build`);
    }
    // Bundles change with every build: revalidate, never serve yesterday's page code.
    return send(200, type, body, { "cache-control": "no-cache" });
  }
}
