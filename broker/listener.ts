/**
 * The MQTT listeners: plain TCP (development), TLS, WebSocket and WebSocket over TLS.
 *
 * Every connection, whatever it arrived on, gets the same treatment before Aedes sees it:
 * Nagle off, the frame guard on the stream Aedes will read (broker/frame-guard.ts), then
 * aedes.handle(stream). Authentication, the topic rules and the connect timeout are Aedes'
 * hooks and timers, so they apply to every stream it handles.
 *
 *   tcp  net.Server            the accepted socket
 *   tls  tls.Server            the TLSSocket after its handshake (its push() gets the plain text)
 *   ws   http.Server + ws      a Duplex over the WebSocket (ws.createWebSocketStream): each
 *   wss  https.Server + ws     binary message is push()ed into it, so the guard sees every byte
 *
 * A WebSocket upgrade is refused with HTTP 403 before it happens when its Origin is not allowed,
 * and with 400 when it does not offer the sub-protocol `mqtt` [MQTT-6.0.0-3].
 */
import type { Aedes } from "aedes";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse, type Server as HttpServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createNetServer, type AddressInfo, type Server, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { createServer as createTlsServer, type SecureContextOptions, type Server as TlsServer, type TLSSocket } from "node:tls";
import type { Logger } from "pino";
import { WebSocketServer, createWebSocketStream, type WebSocket } from "ws";
import { guardFrames } from "./frame-guard.ts";

/** Connections the kernel may hold for the broker to accept. */
export const LISTEN_BACKLOG = 4096;

export type ListenerKind = "tcp" | "tls" | "ws" | "wss";
export const LISTENER_KINDS: readonly ListenerKind[] = ["tcp", "tls", "ws", "wss"];
const SCHEME: Record<ListenerKind, string> = { tcp: "mqtt", tls: "mqtts", ws: "ws", wss: "wss" };

/** The MQTT-over-WebSocket sub-protocol name [MQTT-6.0.0-4]. */
export const WS_SUBPROTOCOL = "mqtt";

/** A listener's port a device connects to, and its URL (mqtt://, mqtts://, ws://, wss://). */
export interface ListenerAddress {
  readonly port: number;
  readonly url: string;
}

/** Answers plain HTTP requests on the WebSocket listeners (browser pages plug in here). */
export type HttpHandler = (req: IncomingMessage, res: ServerResponse) => void;

export const notFound: HttpHandler = (_req, res) => {
  res.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
  res.end("not found: this port speaks MQTT over WebSocket (sub-protocol mqtt)\n");
};

export interface ListenersOptions {
  readonly host: string;
  /** Each listener's port: 0 picks a free one, "off" opens none. */
  readonly ports: Readonly<Record<ListenerKind, number | "off">>;
  readonly maxPacketBytes: number;
  /** A TLS handshake or a WebSocket upgrade must be done within this, as CONNECT must after it. */
  readonly connectTimeoutMs: number;
  /** Origins allowed to open a WebSocket ("https://shop.example.com"); empty: any. */
  readonly wsOrigins: readonly string[];
  /** Certificate and key for tls and wss; required when either is on. */
  readonly tls: { readonly certPem: string; readonly keyPem: string } | null;
  readonly httpHandler?: HttpHandler;
}

interface Open {
  readonly kind: ListenerKind;
  readonly server: Server;
  readonly address: ListenerAddress;
}

/** The open listeners; close() stops them all. */
export class Listeners {
  readonly #open: readonly Open[];

  constructor(open: readonly Open[]) {
    this.#open = open;
  }

  /** Each open listener's port and URL, in the order tcp, tls, ws, wss. */
  get addresses(): Partial<Record<ListenerKind, ListenerAddress>> {
    return Object.fromEntries(this.#open.map((o) => [o.kind, o.address]));
  }

  /** The TLS servers (tls, wss) use this certificate for every handshake from now on; open connections keep theirs. */
  setCertificate(c: { readonly certPem: string; readonly keyPem: string }): void {
    for (const o of this.#open) if (o.kind === "tls" || o.kind === "wss") (o.server as TlsServer).setSecureContext(secureContext(c));
  }

  /** The listeners that are not accepting connections (for /readyz). */
  notListening(): ListenerKind[] {
    return this.#open.filter((o) => !o.server.listening).map((o) => o.kind);
  }

  /** Stops accepting; resolves once every connection they accepted has closed. */
  close(): Promise<void> {
    return Promise.all(this.#open.map((o) => new Promise<void>((resolve) => o.server.close(() => resolve())))).then(() => undefined);
  }
}

/** TLS 1.2 at least; Node negotiates 1.3 whenever the client offers it. */
function secureContext(c: { readonly certPem: string; readonly keyPem: string }): SecureContextOptions {
  return { cert: c.certPem, key: c.keyPem, minVersion: "TLSv1.2" };
}

/** Opens every listener that is not "off"; if one cannot listen, closes those already open and throws. */
export async function openListeners(aedes: Aedes, o: ListenersOptions, log: Logger): Promise<Listeners> {
  const open: Open[] = [];
  const handle = handler(aedes, o, log);
  try {
    for (const kind of LISTENER_KINDS) {
      const port = o.ports[kind];
      if (port === "off") continue;
      const server = createListener(kind, o, handle, log);
      const address = await listen(server, o.host, port);
      const url = `${SCHEME[kind]}://${address.address.includes(":") ? `[${address.address}]` : address.address}:${address.port}`;
      open.push({ kind, server, address: { port: address.port, url } });
    }
  } catch (err) {
    await new Listeners(open).close();
    throw err;
  }
  return new Listeners(open);
}

/** What every listener does with a connection: the same tuning and guard, then Aedes. */
function handler(aedes: Aedes, o: ListenersOptions, log: Logger) {
  return (stream: Duplex, socket: Socket, kind: ListenerKind) => {
    // Nagle + delayed ACK cost ~40 ms per QoS 1 round trip on loopback (measured: 1,100 vs 10,000/s).
    socket.setNoDelay(true);
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    // Aedes reads the stream itself; the guard sees every chunk first. It only replaces the
    // stream's push() (Readable's, shared by Socket, TLSSocket and the WebSocket Duplex).
    guardFrames(stream as Socket, o.maxPacketBytes, (err, s) => {
      const device = (s as Socket & { client?: { id?: string | null } }).client?.id ?? undefined;
      log.warn({ device, remote, listener: kind, err: err.message }, "connection dropped: packet too large, malformed or refused");
    });
    // Metrics count open connections per listener by this name (broker/metrics.ts).
    (stream as Duplex & { listenerName?: ListenerKind }).listenerName = kind;
    aedes.handle(stream);
  };
}

type Handle = ReturnType<typeof handler>;

function createListener(kind: ListenerKind, o: ListenersOptions, handle: Handle, log: Logger): Server {
  if (kind === "tcp") return createNetServer((socket) => handle(socket, socket, kind));
  // Plain ws needs no certificate (a page on localhost, a proxy that ends TLS in front).
  if (o.tls === null && kind !== "ws") throw new Error(`the ${kind} listener needs a certificate`);
  const tlsOptions = o.tls === null ? { handshakeTimeout: o.connectTimeoutMs } : { ...secureContext(o.tls), handshakeTimeout: o.connectTimeoutMs };
  if (kind === "tls") {
    const server = createTlsServer(tlsOptions, (socket: TLSSocket) => handle(socket, socket, kind));
    server.on("tlsClientError", (err, socket) => log.debug({ listener: kind, remote: `${socket.remoteAddress}:${socket.remotePort}`, err: err.message }, "TLS handshake failed"));
    return server;
  }
  const httpOptions = { headersTimeout: o.connectTimeoutMs, requestTimeout: o.connectTimeoutMs, connectionsCheckingInterval: Math.min(1000, o.connectTimeoutMs) };
  const onRequest = o.httpHandler ?? notFound;
  const server: HttpServer = kind === "ws" ? createHttpServer(httpOptions, onRequest) : createHttpsServer({ ...tlsOptions, ...httpOptions }, onRequest);
  if (kind === "wss") server.on("tlsClientError", (err: Error, socket: TLSSocket) => log.debug({ listener: kind, remote: `${socket.remoteAddress}:${socket.remotePort}`, err: err.message }, "TLS handshake failed"));
  const wss = new WebSocketServer({
    noServer: true,
    // One WebSocket message larger than an MQTT packet may be is refused from its frame header.
    maxPayload: o.maxPacketBytes,
    handleProtocols: (offered) => (offered.has(WS_SUBPROTOCOL) ? WS_SUBPROTOCOL : false),
  });
  server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const refusal = upgradeRefusal(req, o.wsOrigins);
    if (refusal !== null) {
      log.info({ listener: kind, remote: `${socket.remoteAddress}:${socket.remotePort}`, origin: req.headers.origin, reason: refusal.reason }, "WebSocket upgrade refused");
      socket.end(`HTTP/1.1 ${refusal.status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(refusal.reason) + 1}\r\n\r\n${refusal.reason}\n`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      ws.on("error", (err: Error & { code?: string }) => {
        if (err.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") log.warn({ listener: kind, remote: `${socket.remoteAddress}:${socket.remotePort}`, err: err.message }, "connection dropped: packet too large, malformed or refused");
      });
      handle(createWebSocketStream(ws), socket, kind);
    });
  });
  return server;
}

/** Why an upgrade request is refused (HTTP status line and reason), or null to accept it. */
export function upgradeRefusal(req: IncomingMessage, allowedOrigins: readonly string[]): { status: string; reason: string } | null {
  // Browsers always send Origin; other clients (devices, tools) usually do not, and prove who they are by their token.
  const origin = req.headers.origin;
  if (origin !== undefined && allowedOrigins.length > 0 && !allowedOrigins.some((a) => a.toLowerCase() === origin.toLowerCase())) {
    return { status: "403 Forbidden", reason: `origin ${origin} is not allowed` };
  }
  const offered = String(req.headers["sec-websocket-protocol"] ?? "")
    .split(",")
    .map((p) => p.trim());
  if (!offered.includes(WS_SUBPROTOCOL)) return { status: "400 Bad Request", reason: `offer the WebSocket sub-protocol ${WS_SUBPROTOCOL}` };
  return null;
}

async function listen(server: Server, host: string, port: number): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    // Node's default backlog (511) overflowed under 2,000 simultaneous connects: the kernel caps
    // this at net.core.somaxconn (docs/operations.md §Running in production).
    server.listen({ port, host, backlog: LISTEN_BACKLOG }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return server.address() as AddressInfo;
}
