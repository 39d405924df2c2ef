/**
 * What the bench's processes share: the JSON-lines protocol between the orchestrator
 * (bench/run.ts) and the load generator (bench/load.ts), bench key files, percentiles, and
 * the /proc readers that measure another process's CPU time and memory.
 *
 * Nothing here touches the broker's code paths: the bench drives the broker only over MQTT,
 * and writes its database only for setup, before the broker starts.
 */
import { execFileSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { deviceIdFor } from "../src/crypto/ids.ts";
import type { DeviceKey } from "../device-sim/keyfile.ts";

// ── Keys ────────────────────────────────────────────────────────────────────────────────────

/** One device of the bench, as written to the keys file the load generator reads. */
export interface BenchKey {
  readonly id: string;
  readonly kind: "terminal" | "phone";
  /** base64 of the 32-byte Ed25519 seed and public key. */
  readonly seed: string;
  readonly pub: string;
}

/** A terminal/phone pair: the user, the terminal's login and both keys. */
export interface BenchPair {
  readonly userId: string;
  readonly login: string;
  readonly terminal: BenchKey;
  readonly phone: BenchKey;
}

export interface KeysFile {
  readonly pairs: readonly BenchPair[];
  /** Connection mode: idle devices that only connect. */
  readonly idle: readonly BenchKey[];
}

/**
 * A fresh Ed25519 key pair through node:crypto (OpenSSL): ~30 µs, against ~1 ms for
 * tweetnacl's keyPair, which matters for 10,000 devices. The raw seed and public key are the
 * last 32 bytes of the PKCS#8 and SPKI encodings (RFC 8410), the same bytes tweetnacl uses.
 *
 * Encoded by the key generation itself, not by KeyObject.export({ format: "jwk" }): on Node
 * 20.20 that export can deadlock the process for good. It holds the key's mutex while it
 * allocates the JWK's strings; a garbage collection then may finalize the key generation job,
 * whose destructor takes the same mutex (seen with gdb: ExportJWKEdKey → GC →
 * ~KeyGenJob → uv_mutex_lock). The bench hung at setup in about one run in ten.
 */
export function benchKey(kind: "terminal" | "phone"): BenchKey {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519", {
    privateKeyEncoding: { type: "pkcs8", format: "der" },
    publicKeyEncoding: { type: "spki", format: "der" },
  });
  const seed = privateKey.subarray(-32);
  const pub = publicKey.subarray(-32);
  return { id: deviceIdFor(pub), kind, seed: seed.toString("base64"), pub: pub.toString("base64") };
}

export function deviceKey(k: BenchKey): DeviceKey {
  return { deviceId: k.id, kind: k.kind, pair: { publicKey: new Uint8Array(Buffer.from(k.pub, "base64")), seed: new Uint8Array(Buffer.from(k.seed, "base64")) } };
}

/**
 * What the bench's agreements allow: a payment up to autoConfirmMaxMinor is auto-confirmed
 * (the daily limit is as large as the protocol allows), a larger one prompts the phone.
 */
export const BENCH_LIMITS = { currency: "CNY", autoConfirmMaxMinor: 5_000, autoConfirmDailyMinor: 1_000_000_000_000_000, perPaymentMaxMinor: 1_000_000 } as const;
export const BENCH_MERCHANT = { id: "bench-shop", name: "Bench Shop" } as const;

// ── Orchestrator ⇄ load generator ───────────────────────────────────────────────────────────

/** The load generator's start-up file (its only argument). */
export interface LoadConfig {
  /**
   * The broker nodes' MQTT URLs. Pair i's terminal connects to urls[i mod N] and its phone to
   * urls[(i + 1) mod N]: with two or more nodes every payment crosses nodes. Idle devices use urls[0].
   */
  readonly urls: readonly string[];
  readonly brokerPublicKey: string;
  readonly keysFile: string;
}

export type PhaseKind = "mixed" | "auto";

export interface PhaseCommand {
  readonly cmd: "phase";
  readonly name: string;
  readonly kind: PhaseKind;
  /** closed: every pair runs one flow after another, at full speed; open: `rate` flows/s in total. */
  readonly loop: "closed" | "open";
  /** Closed loop: flows to complete (all pairs together). */
  readonly flows: number;
  /** Open loop: flows per second and for how long. */
  readonly rate: number;
  readonly seconds: number;
  /** No new flow starts after this many seconds; in-flight ones finish. */
  readonly maxSeconds: number;
  /** Open loop: how long to wait for flows still in flight once the last one started. */
  readonly drainSeconds: number;
}

export type Command =
  | { readonly cmd: "setup" }
  | PhaseCommand
  | { readonly cmd: "connect"; readonly from: number; readonly to: number; readonly concurrency: number }
  | { readonly cmd: "roundtrip"; readonly url: string; readonly clients: number; readonly seconds: number; readonly payloadBytes: number }
  | { readonly cmd: "exit" };

export interface Percentiles {
  readonly n: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
}

export interface ModeStats {
  readonly completed: number;
  /** Request sent (open loop: the flow's scheduled start) to result received, ms. */
  readonly latencyMs: Percentiles;
  /** The same, to each step the terminal saw: accepted, prompt_delivered and executing (prompted), result. */
  readonly stepsMs: Record<string, Percentiles>;
}

export interface NodeStats {
  readonly completed: number;
  readonly errors: number;
  readonly flowsPerSec: number;
  readonly latencyMs: Percentiles;
}

export interface PhaseResult {
  readonly name: string;
  readonly kind: PhaseKind;
  readonly loop: "closed" | "open";
  readonly targetRate: number | null;
  readonly started: number;
  readonly completed: number;
  readonly errors: number;
  readonly errorCounts: Record<string, number>;
  readonly seconds: number;
  readonly flowsPerSec: number;
  readonly capped: boolean;
  /** Open loop: flows still unanswered when the drain time ran out (also counted as errors). */
  readonly unfinished: number;
  /** Pay requests the broker refused `busy` (past capacity): not errors, and not retried here. */
  readonly refused: number;
  /** From each refused flow's start to its `busy` answer. */
  readonly refusedMs: Percentiles;
  /**
   * Open loop: how late the load generator started each flow after its scheduled start (its own
   * queue, part of every latency counted from the schedule, which the broker never sees).
   */
  readonly startLagMs: Percentiles;
  /**
   * From each broker message's signed `ts` (the broker's clock when it began the batch that made
   * it) to the load generator's handling of it: the broker's batch, commit and sync, the
   * sockets, and the load generator's own receive queue. Same machine, same clock.
   */
  readonly downLagMs: Percentiles;
  /**
   * From each device message's sending to the signed `ts` of the broker's first answer to it
   * (the time its batch began): the sockets and the broker's own queue up to the batch that
   * handled it, which is what the broker's admission bounds. Its handling, commit and sync come
   * after (downLagMs holds them). `busy` refusals are not in it: busyAnsweredMs has them.
   */
  readonly answeredMs: Percentiles;
  /** The same for the requests refused `busy`: how soon the broker turned them away. */
  readonly busyAnsweredMs: Percentiles;
  readonly all: Percentiles;
  readonly byMode: Partial<Record<"auto" | "prompt", ModeStats>>;
  /** The flows whose terminal is on each node (index into LoadConfig.urls), when there are several. */
  readonly byNode: readonly NodeStats[] | null;
  /** Messages the devices signed and sent up (each one verify for the broker), by type. */
  readonly up: Record<string, number>;
  /** Distinct broker messages the devices received (each one sign for the broker), by type. */
  readonly down: Record<string, number>;
}

export type LoadEvent =
  /** Sent once at start-up: the process runs and reads commands. */
  | { readonly event: "hello"; readonly pid: number }
  | { readonly event: "ready"; readonly devices: number; readonly connectMs: number; readonly bindMs: number }
  | { readonly event: "progress"; readonly label: string; readonly done: number; readonly target: number; readonly errors: number; readonly elapsedMs: number }
  | { readonly event: "phase_done"; readonly result: PhaseResult }
  | { readonly event: "connected"; readonly connected: number; readonly failed: number; readonly errorCounts: Record<string, number>; readonly ms: number }
  /** Round trips: counting starts or stops now (the orchestrator samples the bare broker's CPU). */
  | { readonly event: "mark"; readonly label: "start" | "stop" }
  | { readonly event: "roundtrip_done"; readonly clients: number; readonly roundTrips: number; readonly seconds: number; readonly latencyMs: Percentiles }
  | { readonly event: "fatal"; readonly message: string };

// ── Numbers ─────────────────────────────────────────────────────────────────────────────────

/** Nearest-rank percentiles of a sample (sorted in place). */
export function percentiles(xs: number[]): Percentiles {
  if (xs.length === 0) return { n: 0, p50: NaN, p95: NaN, p99: NaN, max: NaN };
  xs.sort((a, b) => a - b);
  const at = (q: number) => xs[Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1))]!;
  return { n: xs.length, p50: round(at(0.5)), p95: round(at(0.95)), p99: round(at(0.99)), max: round(xs[xs.length - 1]!) };
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// ── /proc ───────────────────────────────────────────────────────────────────────────────────

let clockTicks: number | null = null;

/** Clock ticks per second, the unit of utime and stime in /proc/<pid>/stat. */
function ticksPerSecond(): number {
  if (clockTicks === null) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** CPU seconds (user + system) a process has used so far; null off Linux or once it is gone. */
export function cpuSeconds(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count from the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
  } catch {
    return null;
  }
}

/**
 * Bytes a process has caused to be written to storage so far (/proc/<pid>/io write_bytes: the
 * WAL, checkpoints into the database file, temporary files), or null when unreadable.
 */
export function writeBytes(pid: number): number | null {
  try {
    const m = /^write_bytes:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, "utf8"));
    return m === null ? null : Number(m[1]);
  } catch {
    return null;
  }
}

/** A kB figure from /proc/<pid>/status: VmRSS (now) or VmHWM (peak). */
export function statusKB(pid: number, key: "VmRSS" | "VmHWM"): number | null {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m === null ? null : Number(m[1]);
  } catch {
    return null;
  }
}

/** The soft and hard open-file limits of a process. */
export function fileLimits(pid: number | "self" = "self"): { soft: number; hard: number } | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"));
    if (m === null) return null;
    const n = (s: string) => (s === "unlimited" ? Infinity : Number(s));
    return { soft: n(m[1]!), hard: n(m[2]!) };
  } catch {
    return null;
  }
}
