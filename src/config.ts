/**
 * Broker configuration: the only module that reads process.env.
 *
 * Every option has a flag, an environment variable and an explicit default; the result is
 * validated once and frozen. Precedence: flag, then environment, then default.
 */
import { parseArgs } from "node:util";
import { z } from "zod";

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
/** A listener's port: a number (0 picks a free one) or "off" for no listener. */
const listenerPort = z.union([z.literal("off"), int(0, 65535)]);
/** A file path, or "" for none. */
const optionalFile = z.string();
/** Allowed WebSocket Origins: repeatable flag, or a comma-separated environment variable; none means any. */
const origins = z.preprocess(
  (v) => (Array.isArray(v) ? v : String(v ?? "").split(",")).map((o) => String(o).trim()).filter((o) => o !== ""),
  z.array(z.string().regex(/^https?:\/\/[^/\s]+$/, "an origin such as https://shop.example.com (scheme, host and port; no path)")),
);

export const brokerConfigSchema = z.strictObject({
  host: z.string().min(1),
  port: listenerPort,
  tlsPort: listenerPort,
  wsPort: listenerPort,
  wssPort: listenerPort,
  tlsCert: optionalFile,
  tlsKey: optionalFile,
  wsOrigin: origins,
  metricsHost: z.string().min(1),
  metricsPort: listenerPort,
  dataDir: z.string().min(1),
  database: z.union([z.literal(""), z.string().regex(/^postgres(ql)?:\/\/\S+$/i, "a PostgreSQL URL, postgres://user@host:port/database (or empty for the data dir's SQLite file)")]),
  cluster: z.union([z.literal(""), z.string().regex(/^rediss?:\/\/\S+$/i, "a Redis URL, redis://host:port (or empty for a single node)")]),
  nodeId: z.union([z.literal(""), z.string().regex(/^[A-Za-z0-9_.-]{1,40}$/, "1-40 letters, digits, '_', '.' or '-'")]),
  logLevel: z.enum(LOG_LEVELS),
  maxPacketBytes: int(1024, 16 * 1024 * 1024),
  freshnessMs: int(1000, 3_600_000),
  keepaliveLimitS: int(10, 65535),
  connectTimeoutMs: int(100, 120_000),
  drainTimeoutMs: int(100, 600_000),
  maxTopicLevels: int(4, 100),
  deviceRatePerSec: int(1, 1_000_000),
  deviceBurst: int(1, 1_000_000),
  deviceBacklog: int(10, 1_000_000),
  busyAfterMs: int(0, 60_000),
  pairingTtlMs: int(1000, 3_600_000),
  promptTtlMs: int(100, 3_600_000),
  taskTtlMs: int(100, 3_600_000),
  maxConsecutiveAuto: int(0, 1000),
  purgeEveryMs: int(100, 86_400_000),
  auditHeadEveryMs: int(100, 86_400_000),
});

export type BrokerConfig = Readonly<z.infer<typeof brokerConfigSchema>>;

interface OptionSpec {
  readonly key: keyof BrokerConfig;
  readonly flag: string;
  readonly env: string;
  readonly def: string;
  readonly help: string;
  /** The flag may be given more than once. */
  readonly repeatable?: true;
}

/**
 * `--busy-after-ms auto`, by store (docs/operations.md §Load): on SQLite a message waits for its
 * batch alone; on PostgreSQL each of its ~60 statements is a round trip, so a node at ease
 * already keeps messages waiting tens of ms (at 100 ms a closed loop of 50 pairs was refused
 * 45% of its requests, at 300 none).
 */
export const BUSY_AFTER_MS = { sqlite: 40, postgres: 300 } as const;

export const BROKER_OPTIONS: readonly OptionSpec[] = [
  { key: "host", flag: "host", env: "HANDOFF_HOST", def: "127.0.0.1", help: "address to listen on (0.0.0.0 for all interfaces)" },
  { key: "port", flag: "port", env: "HANDOFF_PORT", def: "1883", help: "MQTT over plain TCP (development); 0 picks a free port, off turns it off" },
  { key: "tlsPort", flag: "tls-port", env: "HANDOFF_TLS_PORT", def: "8883", help: "MQTT over TLS; 0 picks a free port, off turns it off" },
  { key: "wsPort", flag: "ws-port", env: "HANDOFF_WS_PORT", def: "8080", help: "MQTT over WebSocket; 0 picks a free port, off turns it off" },
  { key: "wssPort", flag: "wss-port", env: "HANDOFF_WSS_PORT", def: "8443", help: "MQTT over WebSocket over TLS; 0 picks a free port, off turns it off" },
  { key: "tlsCert", flag: "tls-cert", env: "HANDOFF_TLS_CERT", def: "", help: "certificate (PEM) for TLS and WSS; none: a self-signed one in the data dir" },
  { key: "tlsKey", flag: "tls-key", env: "HANDOFF_TLS_KEY", def: "", help: "private key (PEM) of --tls-cert" },
  { key: "wsOrigin", flag: "ws-origin", env: "HANDOFF_WS_ORIGIN", def: "", help: "an Origin allowed to open a WebSocket (repeatable; env comma-separated); none: any", repeatable: true },
  { key: "metricsHost", flag: "metrics-host", env: "HANDOFF_METRICS_HOST", def: "127.0.0.1", help: "address of the operator endpoints (/healthz, /readyz, /metrics)" },
  { key: "metricsPort", flag: "metrics-port", env: "HANDOFF_METRICS_PORT", def: "9464", help: "port of the operator endpoints; 0 picks a free port, off turns them off" },
  { key: "dataDir", flag: "data-dir", env: "HANDOFF_DATA_DIR", def: "./data", help: "database, broker identity and master key file" },
  { key: "database", flag: "database", env: "HANDOFF_DATABASE_URL", def: "", help: "postgres://… to keep state in PostgreSQL (several nodes may share it); empty: SQLite in the data dir" },
  { key: "cluster", flag: "cluster", env: "HANDOFF_CLUSTER_URL", def: "", help: "redis://… to route messages between nodes sharing --database; empty: a single node" },
  { key: "nodeId", flag: "node-id", env: "HANDOFF_NODE_ID", def: "", help: "this node's name in a cluster (logs, metrics, pg_stat_activity); empty: host name and pid" },
  { key: "logLevel", flag: "log-level", env: "HANDOFF_LOG_LEVEL", def: "info", help: LOG_LEVELS.join(" | ") },
  { key: "maxPacketBytes", flag: "max-packet-bytes", env: "HANDOFF_MAX_PACKET_BYTES", def: "65536", help: "largest MQTT packet accepted; a larger one drops the connection" },
  { key: "freshnessMs", flag: "freshness-ms", env: "HANDOFF_FRESHNESS_MS", def: "120000", help: "accepted clock difference for messages and connect tokens" },
  { key: "keepaliveLimitS", flag: "keepalive-limit-s", env: "HANDOFF_KEEPALIVE_LIMIT_S", def: "300", help: "largest keepalive a client may ask for" },
  { key: "connectTimeoutMs", flag: "connect-timeout-ms", env: "HANDOFF_CONNECT_TIMEOUT_MS", def: "10000", help: "time a new connection has to send CONNECT" },
  { key: "drainTimeoutMs", flag: "drain-timeout-ms", env: "HANDOFF_DRAIN_TIMEOUT_MS", def: "10000", help: "a client that stops reading for this long is dropped" },
  { key: "maxTopicLevels", flag: "max-topic-levels", env: "HANDOFF_MAX_TOPIC_LEVELS", def: "8", help: "deepest topic or filter accepted" },
  { key: "deviceRatePerSec", flag: "device-rate", env: "HANDOFF_DEVICE_RATE", def: "50", help: "messages per second one device may send (sustained)" },
  { key: "deviceBurst", flag: "device-burst", env: "HANDOFF_DEVICE_BURST", def: "200", help: "messages one device may send in a burst" },
  { key: "deviceBacklog", flag: "device-backlog", env: "HANDOFF_DEVICE_BACKLOG", def: "1000", help: "undelivered messages a device may have before its new messages are refused (backlog_full)" },
  { key: "busyAfterMs", flag: "busy-after-ms", env: "HANDOFF_BUSY_AFTER_MS", def: "auto", help: `past capacity: when messages wait this long, new pay requests are refused with busy and a retry-after (0: never; auto: ${BUSY_AFTER_MS.sqlite} on SQLite, ${BUSY_AFTER_MS.postgres} with --database, whose round trips alone make messages wait)` },
  { key: "pairingTtlMs", flag: "pairing-ttl-ms", env: "HANDOFF_PAIRING_TTL_MS", def: "300000", help: "how long a pairing code lives" },
  { key: "promptTtlMs", flag: "prompt-ttl-ms", env: "HANDOFF_PROMPT_TTL_MS", def: "120000", help: "how long the phone has to approve or decline" },
  { key: "taskTtlMs", flag: "task-ttl-ms", env: "HANDOFF_TASK_TTL_MS", def: "60000", help: "how long the phone has to execute a confirmed payment" },
  { key: "maxConsecutiveAuto", flag: "max-consecutive-auto", env: "HANDOFF_MAX_CONSECUTIVE_AUTO", def: "5", help: "auto-confirmations in a row before the phone is asked again" },
  { key: "purgeEveryMs", flag: "purge-every-ms", env: "HANDOFF_PURGE_EVERY_MS", def: "60000", help: "how often expired replay memory, pairings and delivered messages are deleted" },
  { key: "auditHeadEveryMs", flag: "audit-head-every-ms", env: "HANDOFF_AUDIT_HEAD_EVERY_MS", def: "60000", help: "how often the broker signs a head of the audit log, when it has grown (and always when it stops)" },
];

/**
 * For tools and tests that start a broker on one free TCP port: every other listener off, so that
 * several brokers can run at once without taking each other's default ports.
 */
export const TCP_ONLY: Readonly<Pick<BrokerConfig, "tlsPort" | "wsPort" | "wssPort" | "metricsPort">> = Object.freeze({ tlsPort: "off", wsPort: "off", wssPort: "off", metricsPort: "off" });
export const TCP_ONLY_FLAGS: readonly string[] = ["--tls-port", "off", "--ws-port", "off", "--wss-port", "off", "--metrics-port", "off"];

export class ConfigError extends Error {}

export interface ParsedCli {
  readonly config: BrokerConfig;
  readonly help: boolean;
}

/** Parses broker flags and environment into a frozen config; throws ConfigError with a readable message. */
export function parseBrokerCli(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ParsedCli {
  let values: Record<string, string | boolean | undefined>;
  try {
    const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = { help: { type: "boolean", short: "h" } };
    for (const o of BROKER_OPTIONS) options[o.flag] = o.repeatable ? { type: "string", multiple: true } : { type: "string" };
    values = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values as Record<string, string | boolean | undefined>;
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}\nRun with --help to see the options.`);
  }
  return { config: brokerConfig(values, env), help: values.help === true };
}

/** Fills defaults (flag > env > default, `auto` by store), validates, freezes. */
export function brokerConfig(flags: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env, overrides: Partial<BrokerConfig> = {}): BrokerConfig {
  const raw: Record<string, unknown> = {};
  for (const o of BROKER_OPTIONS) raw[o.key] = flags[o.flag] ?? env[o.env] ?? o.def;
  Object.assign(raw, overrides);
  if (raw.busyAfterMs === "auto") raw.busyAfterMs = raw.database === "" ? BUSY_AFTER_MS.sqlite : BUSY_AFTER_MS.postgres;
  const parsed = brokerConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      const spec = BROKER_OPTIONS.find((o) => o.key === i.path[0]);
      return spec ? `--${spec.flag} (${spec.env}): ${i.message}` : i.message;
    });
    throw new ConfigError(`invalid configuration:\n  ${lines.join("\n  ")}`);
  }
  const c = parsed.data;
  if (c.port === "off" && c.tlsPort === "off" && c.wsPort === "off" && c.wssPort === "off") {
    throw new ConfigError("invalid configuration:\n  every MQTT listener is off (--port, --tls-port, --ws-port, --wss-port): turn one on");
  }
  if (c.cluster !== "" && c.database === "") {
    throw new ConfigError("invalid configuration:\n  --cluster needs --database postgres://…: the nodes of a cluster share one PostgreSQL database (SQLite is one node's own file)");
  }
  if ((c.tlsCert === "") !== (c.tlsKey === "")) {
    throw new ConfigError("invalid configuration:\n  --tls-cert and --tls-key go together: give both, or neither for a self-signed certificate in the data dir");
  }
  return Object.freeze(c);
}

/** The master key, when given by environment instead of the key file (base64, or "1:<b64>,2:<b64>"). */
export function masterKeyFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const value = env.HANDOFF_MASTER_KEY;
  return value === undefined || value.trim() === "" ? undefined : value;
}

export function brokerHelp(): string {
  const rows = BROKER_OPTIONS.map((o) => `  --${o.flag.padEnd(20)} ${o.help}\n  ${"".padEnd(22)} env ${o.env}, default ${o.def}`);
  return [
    "Usage: npm start -- [options]",
    "",
    "Starts the Handoff Pay broker: MQTT over TCP, TLS, WebSocket and WebSocket over TLS, data in an\nembedded SQLite database, or in PostgreSQL with --database, where several nodes routing through\nRedis (--cluster) may share it. Every listener it opens logs its URL; SIGHUP reloads the TLS\ncertificate.",
    "",
    "Options:",
    ...rows,
    "  -h, --help             show this help",
    "",
    "Environment only:",
    "  HANDOFF_MASTER_KEY     master key (base64 of 32 bytes, or 1:<b64>,2:<b64>); without it",
    "                         <data-dir>/master.key is used, created with mode 0600 on first start",
    "",
    "Examples:",
    "  npm start",
    "  npm start -- --port 18830 --data-dir /var/lib/handoff --log-level debug",
    "  HANDOFF_PORT=0 npm start            # a free port; the log line says which",
    "  npm start -- --port off --ws-port off --tls-cert /etc/handoff/tls.crt --tls-key /etc/handoff/tls.key",
    "                                      # production: TLS and WebSocket over TLS only",
    "  npm start -- --database postgres://handoff@db1/handoff --cluster redis://redis1:6379 --node-id node-1",
    "                                      # one node of several (docs/operations.md §Several nodes)",
    "  npm run cluster                     # PostgreSQL, Redis and two nodes on this machine, to try",
  ].join("\n");
}

/** Where tools (admin, simulator) find the data dir when no --data-dir is given. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.HANDOFF_DATA_DIR ?? "./data";
}

/** The broker URL tools use when no --url is given. */
export function defaultBrokerUrl(env: NodeJS.ProcessEnv = process.env): string {
  return env.HANDOFF_URL ?? `mqtt://${env.HANDOFF_HOST ?? "127.0.0.1"}:${env.HANDOFF_PORT ?? "1883"}`;
}

/** HANDOFF_DEBUG=1 makes the tools print stack traces. */
export function debugEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.HANDOFF_DEBUG === "1";
}
