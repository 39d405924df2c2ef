/**
 * What the broker counts and times, as an interface: the service and store layers call it, and
 * the broker program implements it with prom-client (broker/metrics.ts). So src/ depends on no
 * metrics library, and a part that is given none counts nothing (NO_METRICS).
 *
 * Every call is cheap and synchronous; none may throw. Durations are in milliseconds here (the
 * implementation converts to the seconds Prometheus expects).
 */

/** Why a CONNECT was refused: a key of CONNECT_REFUSALS (src/service/connect.ts). */
export type RefusalReason = string;

export interface Metrics {
  /** A message a device published, by its envelope type ("malformed" when it has none). */
  messageIn(type: string): void;
  /** A message the broker handed to a device's connection, by type. */
  messageOut(type: string): void;
  /** An `error` answer, by its code. */
  errorAnswer(code: string): void;
  /** A group commit: how many messages, jobs and receipts it held, and how long its transaction took. */
  batch(size: number, commitMs: number): void;
  /** One fsync of the WAL (src/store/wal-sync.ts). */
  diskSync(ms: number): void;
  /** A payment was created (committed), in this mode. */
  paymentStarted(mode: "auto" | "prompt"): void;
  /** A payment became final (committed): its status, and the time from its pay_request. */
  paymentEnded(outcome: string, latencyMs: number): void;
  /** A CONNECT was accepted. */
  connectAccepted(): void;
  /** A CONNECT was refused, by reason. */
  connectRefused(reason: RefusalReason): void;
}

/** Counts nothing: the default of every part that takes metrics. */
export const NO_METRICS: Metrics = Object.freeze({
  messageIn() {},
  messageOut() {},
  errorAnswer() {},
  batch() {},
  diskSync() {},
  paymentStarted() {},
  paymentEnded() {},
  connectAccepted() {},
  connectRefused() {},
});
