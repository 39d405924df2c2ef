/**
 * The operator endpoints, on their own HTTP listener (--metrics-host, --metrics-port), apart from
 * the devices' MQTT listeners (docs/operations.md §Monitoring):
 *
 *   GET /healthz   200 "ok" while the process serves HTTP at all (a liveness probe)
 *   GET /readyz    200 "ready", or 503 with every reason it is not (a load balancer's check)
 *   GET /metrics   Prometheus' text exposition format
 *
 * Anything else is 404; another method on a known path is 405. Nothing here reads a secret.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import type { Registry } from "prom-client";

export interface OperatorOptions {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  readonly log: Logger;
  readonly registry: Registry;
  /** Why the broker cannot serve devices now (empty: it can): the database, the disk, a listener. */
  readonly notReady: () => readonly string[];
}

export interface OperatorServer {
  readonly port: number;
  readonly url: string;
  close(): Promise<void>;
}

const ROUTES = new Set(["/healthz", "/readyz", "/metrics"]);

export async function startOperatorHttp(o: OperatorOptions): Promise<OperatorServer> {
  const server: Server = createServer((req, res) => {
    handle(o, req, res).catch((err: unknown) => {
      o.log.error({ err: err instanceof Error ? err.message : String(err), path: req.url }, "operator endpoint failed");
      if (!res.headersSent) send(res, 500, "text/plain; charset=utf-8", "internal error\n");
      else res.destroy();
    });
  });
  // Scrapers and probes keep connections open; close() must not wait for them.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ port: o.port, host: o.host }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;
  o.log.info({ url }, `operator endpoints on ${url} (/healthz, /readyz, /metrics)`);
  return {
    port: address.port,
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function handle(o: OperatorOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? "/").split("?")[0]!;
  if (!ROUTES.has(path)) return send(res, 404, "text/plain; charset=utf-8", "not found: try /healthz, /readyz or /metrics\n");
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.setHeader("Allow", "GET, HEAD");
    return send(res, 405, "text/plain; charset=utf-8", "method not allowed\n");
  }
  if (path === "/healthz") return send(res, 200, "text/plain; charset=utf-8", "ok\n");
  if (path === "/readyz") {
    const reasons = o.notReady();
    if (reasons.length === 0) return send(res, 200, "application/json", JSON.stringify({ ready: true }) + "\n");
    return send(res, 503, "application/json", JSON.stringify({ ready: false, reasons }) + "\n");
  }
  send(res, 200, o.registry.contentType, await o.registry.metrics());
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { "Content-Type": contentType, "Cache-Control": "no-store" });
  res.end(res.req.method === "HEAD" ? undefined : body);
}
