/**
 * The inbox: every message a device publishes comes through here.
 *
 * Checks that need no database write (shape, sender, address, signature, freshness) run first;
 * a message that fails one is answered directly and leaves no trace in the database, so
 * unauthenticated bytes can never change stored state or fill the disk. The messages that pass
 * are handled in group commits: all messages that arrive in one event-loop turn share one
 * SQLite transaction, each inside its own savepoint, so one message's failure rolls back only
 * its own writes. Replies are written to the outbox in that transaction and published only after
 * it commits (docs/protocol.md §Delivery). Receipts (PUBACKs) join the next such transaction,
 * waiting at most `receiptDelayMs` for one: alone, each would be a commit of its own.
 */
import { createHash } from "node:crypto";
import type { Logger } from "pino";
import { verify, type Signer } from "../crypto/ed25519.ts";
import { BROKER_ID, parseEnvelope, type Parsed, type Payload } from "../protocol/envelope.ts";
import { ERROR_CODES, type ErrorCode } from "../protocol/errors.ts";
import { EPHEMERAL_DOWN_TYPES, isUpType, upBodies, type DownBody, type DownType } from "../protocol/messages.ts";
import type { Db } from "../store/db.ts";
import { isPgStorageFault } from "../store/pg.ts";
import { DeviceCache, type DeviceRow } from "../store/devices.ts";
import { OutboxRepo, type OutboxRow } from "../store/outbox.ts";
import { ReplayRepo } from "../store/replay.ts";
import { NO_METRICS, type Metrics } from "./metrics.ts";
import { signedDown, type Outgoing } from "./outgoing.ts";
import type { RateLimiter } from "./rate-limit.ts";
import type { Admission } from "./admission.ts";

export interface InboxOptions {
  readonly db: Db;
  readonly signer: Signer;
  readonly log: Logger;
  /** Accept messages whose timestamp is within this many ms of the broker clock. */
  readonly freshnessMs: number;
  readonly clock: () => number;
  /**
   * Hands a signed message to the transport (QoS 1 on the device's down topic). `row` is its
   * outbox row, or null for a direct answer that is not stored: the transport reports the
   * device's PUBACK for a stored one through `delivered()`.
   */
  readonly publish: (deviceId: string, bytes: Uint8Array, row: OutboxRow | null) => void;
  /** Hears of each receipt (PUBACK or `ack`) once its transaction is on disk. */
  readonly onReceipt?: (deviceId: string, msgId: string) => void;
  /** Most messages handled in one transaction; the rest wait for the next turn. */
  readonly maxBatch?: number;
  /**
   * About how long one batch may take, in ms: a batch takes as many messages as recent batches
   * handled in that time (at least MIN_BATCH), so that the broker goes back to its sockets that
   * often. 0 or absent: no budget, only maxBatch.
   */
  readonly batchBudgetMs?: number;
  /**
   * How long a receipt may wait for messages to share their transaction (default
   * RECEIPT_DELAY_MS; 0: a transaction of its own at once). Receipts change nothing a device is
   * waiting on (the delivery window frees at the PUBACK itself), so below capacity they ride along
   * with the next batch of messages instead of each costing a commit of its own.
   */
  readonly receiptDelayMs?: number;
  /** Per-device message rate limit; none when absent. */
  readonly rateLimiter?: RateLimiter;
  /**
   * Undelivered messages one device may have before its new messages are refused with
   * `backlog_full` (receipts are always taken); none when absent.
   */
  readonly maxBacklog?: number;
  /**
   * When commits are not synced by SQLite itself (src/store/wal-sync.ts): everything a batch
   * causes outside the database — answers, PUBACKs, CONNACKs — waits until its commit is on
   * disk. Absent: the commit is durable when it returns (synchronous = FULL).
   */
  readonly durable?: Durability;
  /** Counts messages in, error answers and group commits (src/service/metrics.ts); none when absent. */
  readonly metrics?: Metrics;
  /** Refuses new payments with `busy` past capacity (src/service/admission.ts); none when absent. */
  readonly admission?: Admission;
}

/** See InboxOptions.durable. */
export interface Durability {
  committed(): void;
  afterDurable(fn: () => void): void;
  /**
   * Syncs now, on this thread, releasing what waits (WalSync.syncNow); false when it did not
   * (nothing to sync, or a slow disk). Called after a small batch with nothing queued behind it.
   */
  syncNow?(): boolean;
}

/** What any work inside a batch transaction may do: write, and send messages via the outbox. */
export interface TxContext {
  readonly nowMs: number;
  readonly db: Db;
  /** `msgId` names the message when the sender must find it again (e.g. to withdraw it). */
  send<T extends DownType>(to: string, type: T, body: DownBody<T>, msgId?: string): void;
  /** Withdraws a message not yet delivered: it will not be sent again. */
  withdraw(to: string, msgId: string): void;
  /**
   * Runs `fn` once this work's writes are committed and on disk; never if they are rolled back
   * (a refusal, a failed handler, a failed batch). For what must count only what happened: metrics.
   */
  afterCommit(fn: () => void): void;
}

/** What a handler may do inside the message's transaction. */
export interface HandlerContext extends TxContext {
  readonly device: DeviceRow;
  readonly msg: Payload;
  /**
   * SHA-256 (base64) of the message's exact signed payload bytes: with `msg.id`, how the audit
   * log names the message that caused a change (docs/protocol.md §Audit log).
   */
  readonly digest: string;
  /**
   * The answer to this message (it carries `re`). `msgId` names it when it must be found again,
   * as `send` does: a task that answers the approval is withdrawn like a pushed one.
   */
  reply<T extends DownType>(type: T, body: DownBody<T>, msgId?: string): void;
  /** Whether this handler has already answered. */
  readonly replied: boolean;
}

/** Runs when a device's PUBACK (or `ack`) marked one of its outbox messages delivered, in the same transaction. */
export type DeliveryHook = (ctx: TxContext, deviceId: string, msgId: string) => void;

/** Work the broker starts itself (a deadline firing), run in the next batch like a message. */
interface Job {
  readonly label: string;
  readonly run: (ctx: TxContext) => void;
  /** Called once the batch is over: true if the job's writes committed, false if they did not. */
  readonly after?: ((committed: boolean) => void) | undefined;
  /** Set while the batch runs: the job's own savepoint succeeded. */
  ran?: boolean;
}

/** A device's PUBACK for an outbox message. */
interface Receipt {
  readonly deviceId: string;
  readonly msgId: string;
}

export type Handler = (ctx: HandlerContext, body: unknown) => void;

interface Pending {
  readonly deviceId: string;
  readonly bytes: Uint8Array;
  readonly done: () => void;
  /** Screened on arrival (the broker was behind and looked for a pay request to turn away): not again. */
  screened?: Screened;
}

/** What the checks that need neither the sender's key nor a write made of a message (Inbox.#screen). */
type Screened = { refusal: Outgoing; now?: true } | { drop: true } | { msg: Parsed };

interface Verified {
  readonly msg: Parsed;
  readonly device: DeviceRow;
  readonly done: () => void;
}

/** A handler's expected refusal: rolls back the message's savepoint and answers with the code. */
export class Refusal extends Error {
  constructor(
    readonly code: ErrorCode,
    detail: string,
  ) {
    super(detail);
  }
}

/** How long a device's counted backlog is trusted before it is counted again. */
const BACKLOG_RECOUNT_MS = 1000;

/** The fewest messages a batch takes while more wait, whatever they cost. */
export const MIN_BATCH = 16;

/**
 * A batch of at most this many messages and jobs, with none queued behind it, syncs its commit
 * on the event loop (Durability.syncNow): the load is light. At 200 payments/s batches hold 1-2
 * messages; at saturation ~10, and the sync overlaps the next batch instead.
 */
export const INLINE_SYNC_MAX_BATCH = 2;

/** See InboxOptions.receiptDelayMs (docs/performance.md §Receipts ride along). */
export const RECEIPT_DELAY_MS = 10;

export class Inbox {
  readonly #o: InboxOptions;
  readonly #devices: DeviceCache;
  readonly #replay: ReplayRepo;
  readonly #outbox: OutboxRepo;
  readonly #handlers = new Map<string, Handler>();
  readonly #deliveryHooks: { readonly matches: (msgId: string) => boolean; readonly run: DeliveryHook }[] = [];
  #queue: Pending[] = [];
  #jobs: Job[] = [];
  #receipts: Receipt[] = [];
  /** Receipts written by the batch being handled: the transport hears of them after its commit. */
  #receipted: Receipt[] = [];
  #scheduled = false;
  /** Set while receipts wait for messages to share their transaction (receiptDelayMs). */
  #receiptTimer: NodeJS.Timeout | null = null;
  #inFlight = 0;
  /** Runs a function in a savepoint (a transaction when none is open); made once, used per message. */
  readonly #savepoint: <T>(fn: () => T) => T;
  #idleWaiters: (() => void)[] = [];
  #abandoned = false;
  readonly #metrics: Metrics;
  /** afterCommit callbacks of the work in the batch being handled whose savepoints succeeded. */
  #afterCommit: (() => void)[] = [];
  /** The code of each error answer built, by its bytes: counted when it is sent, after its commit. */
  readonly #errorCodes = new WeakMap<Uint8Array, ErrorCode>();
  /**
   * Each device's backlog as last counted, plus what was stored for it since: counted again
   * after BACKLOG_RECOUNT_MS, so a device at its bound costs one count a second, not one a message.
   */
  readonly #backlogs = new Map<string, { n: number; atMs: number }>();
  /** What a message has cost lately, in ms of a batch (#batchSize). */
  #msPerMessage = 0.1;

  constructor(options: InboxOptions) {
    this.#o = options;
    this.#devices = new DeviceCache(options.db);
    this.#replay = new ReplayRepo(options.db);
    this.#outbox = new OutboxRepo(options.db);
    this.#metrics = options.metrics ?? NO_METRICS;
    const sp = options.db.transaction((fn: () => unknown) => fn());
    this.#savepoint = <T>(fn: () => T): T => sp(fn) as T;
    this.on("ping", (ctx, body) => {
      const b = body as { echo?: string };
      ctx.reply("pong", { ...(b.echo === undefined ? {} : { echo: b.echo }), brokerTs: ctx.nowMs });
    });
  }

  /** Registers the handler of an up message type (its body is already schema-checked). */
  on(type: string, handler: Handler): void {
    this.#handlers.set(type, handler);
  }

  /**
   * Registers work to do when a message is confirmed delivered (the first receipt only): it
   * runs in the receipt's transaction, in its own savepoint, and may send via the outbox.
   */
  onDelivered(matches: (msgId: string) => boolean, run: DeliveryHook): void {
    this.#deliveryHooks.push({ matches, run });
  }

  /**
   * A receipt (PUBACK or `ack`): marks the message delivered and, the first time only, runs the
   * delivery hooks that want it, each as a job in the current transaction.
   */
  #receipt(deviceId: string, msgId: string, nowMs: number): OutboxRow[] {
    const rows: OutboxRow[] = [];
    this.#receipted.push({ deviceId, msgId });
    if (!this.#outbox.markDelivered(deviceId, msgId, nowMs)) return rows;
    this.#counted(deviceId, -1);
    for (const hook of this.#deliveryHooks) {
      if (hook.matches(msgId)) rows.push(...this.#runJob({ label: "delivered", run: (ctx) => hook.run(ctx, deviceId, msgId) }, nowMs));
    }
    return rows;
  }

  /** Queues a message from an authenticated connection; `done` runs once it is answered. */
  submit(deviceId: string, bytes: Uint8Array, done: () => void = () => {}): void {
    const p: Pending = { deviceId, bytes, done };
    if (this.#turnedAway(p)) return;
    this.#queue.push(p);
    this.#inFlight++;
    this.#schedule();
  }

  /**
   * Queues broker-initiated work for the next batch transaction (in its own savepoint).
   * `after` hears, once that transaction is over, whether the job's writes were committed.
   */
  internal(label: string, run: (ctx: TxContext) => void, after?: (committed: boolean) => void): void {
    this.#jobs.push({ label, run, after });
    this.#inFlight++;
    this.#schedule();
  }

  /**
   * The device's PUBACK for an outbox message: it is delivered and will not be sent again.
   * Receipts are written in the next batch transaction, with its messages; with none coming,
   * after at most `receiptDelayMs`.
   */
  delivered(deviceId: string, msgId: string): void {
    this.#receipts.push({ deviceId, msgId });
    this.#inFlight++;
    const delayMs = this.#o.receiptDelayMs ?? RECEIPT_DELAY_MS;
    if (delayMs <= 0) this.#schedule();
    else if (this.#receiptTimer === null && !this.#scheduled) {
      this.#receiptTimer = setTimeout(() => {
        this.#receiptTimer = null;
        this.#schedule();
      }, delayMs);
    }
  }

  #afterDurable(fn: () => void): void {
    if (this.#o.durable === undefined) fn();
    else this.#o.durable.afterDurable(fn);
  }

  /** Resolves when every submitted message has been answered. */
  idle(): Promise<void> {
    if (this.#inFlight === 0 || this.#abandoned) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * The disk failed to sync (see `durable`): what waits for it will never be answered, and the
   * broker is stopping. `idle()` resolves from now on, so the stop does not wait for it.
   */
  abandon(): void {
    this.#abandoned = true;
    for (const w of this.#idleWaiters.splice(0)) w();
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    const flushStarted = performance.now();
    const max = this.#batchSize();
    const batch = this.#queue.splice(0, max);
    const jobs = this.#jobs.splice(0, max);
    const receipts = this.#receipts.splice(0);
    this.#receipted = [];
    if (this.#receiptTimer !== null) {
      clearTimeout(this.#receiptTimer);
      this.#receiptTimer = null;
    }
    if (this.#queue.length > 0 || this.#jobs.length > 0) this.#schedule();
    const nowMs = this.#o.clock();
    // Device rows are cached; a revocation since the last batch empties the cache first.
    if (batch.length > 0 && this.#o.db.open) this.#devices.refresh();

    const direct: Outgoing[] = [];
    const verified: Verified[] = [];
    const finished: (() => void)[] = [];
    for (const p of batch) {
      const v = this.#check(p, nowMs);
      if ("drop" in v) finished.push(p.done);
      else if ("refusal" in v) {
        if (v.now === true) this.#refuseNow(v.refusal, p.done);
        else {
          direct.push(v.refusal);
          finished.push(p.done);
        }
      } else verified.push(v);
    }

    let committed: OutboxRow[] = [];
    let committedOk = true;
    const directBefore = direct.length;
    this.#afterCommit = [];
    const size = verified.length + jobs.length + receipts.length;
    const startedMs = performance.now();
    try {
      committed = this.#transact(verified, jobs, receipts, nowMs, direct);
    } catch (err) {
      committedOk = false;
      this.#afterCommit = [];
      // Infrastructure fault (disk full, read-only, corrupt): nothing of this batch was written.
      // Each sender hears "unavailable" and retries the same message id later.
      this.#o.log.error({ err: errorSummary(err), messages: verified.length }, "transaction failed; batch answered unavailable");
      direct.length = directBefore;
      // (A lost receipt, PUBACK or `ack`, only means a resend on the next subscribe: receipts get no answer.)
      for (const v of verified) {
        if (v.msg.payload.type !== "ack") direct.push(this.#error(v.device.id, "unavailable", ERROR_CODES.unavailable, v.msg.payload.id, nowMs));
      }
    }
    if (committedOk && size > 0 && this.#o.db.open) this.#metrics.batch(size, performance.now() - startedMs);
    this.#costed(batch.length + jobs.length, performance.now() - flushStarted);
    if (batch.length > 0) this.#o.admission?.endTurn(nowMs);
    const afterCommit = this.#afterCommit;
    this.#afterCommit = [];
    for (const v of verified) finished.push(v.done);
    for (const job of jobs) if (job.after !== undefined) finished.push(() => job.after!(committedOk && job.ran === true));

    if (committedOk && (verified.length > 0 || jobs.length > 0 || receipts.length > 0)) {
      this.#o.durable?.committed();
      // Light load: nothing else to do while the disk syncs, so sync here and answer at once,
      // rather than wait for the event loop to hear from the thread pool (docs/performance.md
      // §Eighth session). Under load the sync overlaps the next batch, as before.
      if (batch.length + jobs.length <= INLINE_SYNC_MAX_BATCH && this.#queue.length === 0 && this.#jobs.length === 0) this.#o.durable?.syncNow?.();
    }
    const handled = batch.length + jobs.length + receipts.length;
    const receipted = committedOk ? this.#receipted : [];
    this.#receipted = [];
    // Nothing leaves before the batch's commit is on disk; answers that were not stored (refusals)
    // wait too, so that a device's answers leave in the order its messages came.
    this.#afterDurable(() => {
      // A stored answer sent again for a duplicate goes once more, outside the delivery window.
      for (const row of committed) this.#o.publish(row.deviceId, row.bytes, row.again === true ? null : row);
      for (const row of committed) if (row.again !== true) this.#counted(row.deviceId);
      for (const out of direct) this.#o.publish(out.to, out.bytes, null);
      // Error answers count once, when first sent (a stored one sent again for a duplicate does not).
      for (const row of committed) if (row.again !== true) this.#countError(row.bytes);
      for (const out of direct) this.#countError(out.bytes);
      for (const fn of afterCommit) fn();
      if (this.#o.onReceipt !== undefined) for (const r of receipted) this.#o.onReceipt(r.deviceId, r.msgId);
      for (const done of finished) done();
      this.#inFlight -= handled;
      if (this.#inFlight === 0) for (const w of this.#idleWaiters.splice(0)) w();
    });
  }

  /**
   * Past capacity a pay request is turned away as it arrives, not when its batch comes: while the
   * broker is behind, the wait for the batch is what it is behind by. While admission says so
   * (on average, or by what is queued before it), each message is screened as it arrives; a
   * `busy` is sent at once, and anything else goes into the queue with its screening kept, so the
   * batch does not screen it again. True when it was answered here.
   */
  #turnedAway(p: Pending): boolean {
    const admission = this.#o.admission;
    if (admission === undefined) return false;
    const nowMs = this.#o.clock();
    // What is queued before it, at what messages cost lately: the wait it would add to its age.
    const aheadMs = this.#queue.length * this.#msPerMessage;
    if (!admission.refusing(nowMs, aheadMs)) return false;
    const s = (p.screened = this.#screen(p, nowMs, aheadMs));
    if (!("refusal" in s) || s.now !== true) return false;
    this.#refuseNow(s.refusal, p.done);
    return true;
  }

  /**
   * Sends a refusal that need not wait for any commit (`busy`: it stores nothing and answers a
   * request that caused nothing; docs/protocol.md §Load), then lets the message go.
   */
  #refuseNow(refusal: Outgoing, done: () => void): void {
    this.#o.publish(refusal.to, refusal.bytes, null);
    this.#countError(refusal.bytes);
    done();
  }

  /** The `busy` refusal of a pay request, or null when admission lets it in (`aheadMs`: Admission.check). */
  #busy(deviceId: string, payload: Payload, nowMs: number, aheadMs = 0): Outgoing | null {
    const verdict = this.#o.admission?.check(deviceId, payload.ts, nowMs, aheadMs);
    if (verdict === undefined || verdict.retryAfterMs === null) return null;
    const detail = `the broker is behind (messages wait ${Math.round(Math.max(verdict.ageMs + aheadMs, verdict.behindMs))} ms); send the request again in ${verdict.retryAfterMs} ms`;
    return this.#error(deviceId, "busy", detail, payload.id, nowMs, verdict.retryAfterMs);
  }

  /** How many messages (and jobs) the next batch takes: what fits in the budget at recent costs. */
  #batchSize(): number {
    const max = this.#o.maxBatch ?? 2000;
    const budgetMs = this.#o.batchBudgetMs ?? 0;
    if (budgetMs <= 0) return max;
    return Math.min(max, Math.max(MIN_BATCH, Math.floor(budgetMs / this.#msPerMessage)));
  }

  /**
   * A batch of `n` messages and jobs took `ms` in all: the cost per message follows, at once when
   * it rose (the next batch is smaller straight away), as a moving average when it fell.
   */
  #costed(n: number, ms: number): void {
    // Small batches say little: their cost is mostly the commit's, shared by fewer messages.
    if (n < MIN_BATCH) return;
    const each = ms / n;
    this.#msPerMessage = each > this.#msPerMessage ? each : this.#msPerMessage + 0.3 * (each - this.#msPerMessage);
  }

  /** The checks that need no write. Returns the refusal to send, or the verified message. */
  #check(p: Pending, nowMs: number): Verified | { refusal: Outgoing; now?: true } | { drop: true } {
    const s = p.screened ?? this.#screen(p, nowMs);
    if (!("msg" in s)) return s;
    const { payload } = s.msg;
    const refuse = (code: ErrorCode, detail: string) => ({ refusal: this.#error(p.deviceId, code, detail, payload.id, nowMs) });
    const device = this.#devices.get(p.deviceId);
    if (device === null || device.status !== "active") return refuse("bad_signature", "the sender has no active registered key");
    if (!verify(device.publicKey, s.msg.payloadBytes, s.msg.signature)) return refuse("bad_signature", ERROR_CODES.bad_signature);
    if (Math.abs(nowMs - payload.ts) > this.#o.freshnessMs) {
      return refuse("stale", `timestamp ${payload.ts} is ${nowMs - payload.ts} ms from broker time ${nowMs}; the window is ±${this.#o.freshnessMs} ms`);
    }
    this.#o.admission?.observe(p.deviceId, payload.ts, nowMs);
    // Receipts are always taken: they are how a backlog shrinks.
    if (payload.type !== "ack" && this.#o.maxBacklog !== undefined && this.#backlog(p.deviceId, nowMs) >= this.#o.maxBacklog) {
      return refuse("backlog_full", `${this.#o.maxBacklog} messages wait for this device to receive them; subscribe to its down topic and acknowledge them (PUBACK or ack) before sending more`);
    }
    return { msg: s.msg, device, done: p.done };
  }

  /**
   * The checks that need neither the sender's key nor a write: the parse, the rate limit (one
   * token a message), the addresses and, for a pay request, admission (`aheadMs`: Admission.check).
   */
  #screen(p: Pending, nowMs: number, aheadMs = 0): Screened {
    const parsed = parseEnvelope(p.bytes);
    // Only the protocol's types are labels: a device's made-up type must not grow the metric.
    this.#metrics.messageIn(!parsed.ok ? "malformed" : isUpType(parsed.msg.payload.type) ? parsed.msg.payload.type : "unknown");
    if (this.#o.rateLimiter !== undefined && !this.#o.rateLimiter.take(p.deviceId, nowMs)) {
      // Receipts are never answered: the answer would be acknowledged in turn, a loop.
      if (parsed.ok && parsed.msg.payload.type === "ack") return { drop: true };
      const id = parsed.ok ? parsed.msg.payload.id : parsed.id;
      return { refusal: this.#error(p.deviceId, "rate_limited", ERROR_CODES.rate_limited, id, nowMs) };
    }
    if (!parsed.ok) return { refusal: this.#error(p.deviceId, parsed.code, parsed.detail, parsed.id, nowMs) };
    const { payload } = parsed.msg;
    const refuse = (code: ErrorCode, detail: string) => ({ refusal: this.#error(p.deviceId, code, detail, payload.id, nowMs) });
    if (payload.from !== p.deviceId) return refuse("sender_mismatch", `this connection is device ${p.deviceId}, the envelope says ${payload.from}`);
    if (payload.to !== BROKER_ID) return refuse("misaddressed", `messages to the broker must have to = "${BROKER_ID}"`);
    // Past capacity a new payment is refused before any work on it (no verify, no write).
    if (payload.type === "pay_request") {
      const busy = this.#busy(p.deviceId, payload, nowMs, aheadMs);
      if (busy !== null) return { refusal: busy, now: true };
    }
    return { msg: parsed.msg };
  }

  #backlog(deviceId: string, nowMs: number): number {
    let b = this.#backlogs.get(deviceId);
    if (b === undefined || nowMs - b.atMs >= BACKLOG_RECOUNT_MS || nowMs < b.atMs) {
      // A cache: cleared whole rather than grown past what a busy broker's devices need.
      if (this.#backlogs.size >= 100_000) this.#backlogs.clear();
      b = { n: this.#outbox.backlog(deviceId, nowMs, this.#o.maxBacklog ?? 0), atMs: nowMs };
      this.#backlogs.set(deviceId, b);
    }
    return b.n;
  }

  /**
   * A message was stored for a device (+1) or marked delivered (-1): its counted backlog follows
   * until the next count. (A savepoint rolled back after a receipt can make it low by one until then.)
   */
  #counted(deviceId: string, by = 1): void {
    const b = this.#backlogs.get(deviceId);
    if (b !== undefined) b.n = Math.max(0, b.n + by);
  }

  #transact(verified: readonly Verified[], jobs: readonly Job[], receipts: readonly Receipt[], nowMs: number, direct: Outgoing[]): OutboxRow[] {
    const db = this.#o.db;
    // Receipts that arrive as the broker closes are dropped: those messages go again next time.
    if (!db.open) receipts = [];
    if (verified.length === 0 && jobs.length === 0 && receipts.length === 0) return [];
    const rows: OutboxRow[] = [];
    db.transaction(() => {
      for (const r of receipts) rows.push(...this.#receipt(r.deviceId, r.msgId, nowMs));
      for (const v of verified) rows.push(...this.#handleOne(v, nowMs, direct));
      for (const job of jobs) rows.push(...this.#runJob(job, nowMs));
    }).immediate();
    return rows;
  }

  /**
   * One message, in its own savepoint (replay record included). Returns the outbox rows to
   * publish after the commit; answers that must not be stored go to `direct`.
   */
  #handleOne(v: Verified, nowMs: number, direct: Outgoing[]): OutboxRow[] {
    const { payload, payloadBytes } = v.msg;
    const db = this.#o.db;
    const answerNow = (code: ErrorCode, detail: string) => {
      direct.push(this.#error(v.device.id, code, detail, payload.id, nowMs));
      return [];
    };
    if (payload.type === "ack") {
      // Receipts are idempotent: applied without replay memory and never answered (a bad one is).
      const body = upBodies.ack.safeParse(payload.body);
      if (!body.success) return answerNow("invalid_body", bodyProblem(body.error));
      return body.data.ids.flatMap((id) => this.#receipt(v.device.id, id, nowMs));
    }
    // The answer to a message leaves before anything the message caused (progress, results).
    const replies: Outgoing[] = [];
    const outgoing: Outgoing[] = [];
    const afterCommit: (() => void)[] = [];
    const digest = createHash("sha256").update(payloadBytes).digest();
    // One savepoint holds the replay record, the handler's writes and the answers. A handler's
    // refusal rolls all of it back; the message is then recorded again with its refusal only, in
    // a second savepoint (refusals are rare; a savepoint per handler call cost two statements on
    // every message).
    const handle = (refused: Refusal | null): OutboxRow[] =>
      this.#savepoint(() => {
        const seen = this.#replay.remember(v.device.id, payload.id, digest, payload.ts + this.#o.freshnessMs + 1, nowMs);
        // The same message again (a QoS 1 redelivery or a device retry): the stored answer, not a second effect.
        if (seen === "duplicate") return this.#outbox.repliesTo(v.device.id, payload.id).map((row) => ({ ...row, again: true }));
        // Not stored: it would otherwise be replayed as an answer to the original message.
        if (seen === "conflict") return answerNow("message_id_reused", ERROR_CODES.message_id_reused);
        // An answer that carries nothing to learn later lives as long as a duplicate could ask for it.
        const ephemeralUntil = Math.max(payload.ts, nowMs) + this.#o.freshnessMs + 1;
        const answer = (code: ErrorCode, detail: string) => [this.#store(this.#error(v.device.id, code, detail, payload.id, nowMs), nowMs, ephemeralUntil)];
        if (refused !== null) return answer(refused.code, refused.message);
        const handler = this.#handlers.get(payload.type);
        if (handler === undefined || !isUpType(payload.type)) return answer("unknown_type", `unknown message type "${payload.type}"`);
        const body = upBodies[payload.type].safeParse(payload.body);
        if (!body.success) return answer("invalid_body", bodyProblem(body.error));
        const ctx: HandlerContext = {
          nowMs,
          device: v.device,
          msg: payload,
          digest: digest.toString("base64"),
          db,
          reply: (type, b, msgId) => replies.push(signedDown(this.#o.signer, v.device.id, type, b, payload.id, nowMs, msgId)),
          get replied() {
            return replies.length > 0;
          },
          send: (to, type, b, msgId) => outgoing.push(signedDown(this.#o.signer, to, type, b, null, nowMs, msgId)),
          withdraw: (to, msgId) => this.#withdraw(to, msgId, nowMs, outgoing),
          afterCommit: (fn) => afterCommit.push(fn),
        };
        handler(ctx, body.data);
        const rows = [...replies, ...outgoing].map((o) => this.#store(o, nowMs, ephemeralUntil));
        this.#afterCommit.push(...afterCommit);
        return rows;
      });
    try {
      try {
        return handle(null);
      } catch (err) {
        // An expected refusal: the handler's writes are rolled back, the answer is stored.
        if (err instanceof Refusal) return handle(err);
        throw err;
      }
    } catch (err) {
      // A storage fault fails the whole batch (nothing half-written). Anything else is a bug in
      // one handler: the message's savepoint, replay record included, is rolled back, it is
      // logged once, and the device hears "unavailable" — not stored, so a retry is handled afresh.
      if (isStorageFault(err)) throw err;
      this.#o.log.error({ err: errorSummary(err), type: payload.type, device: v.device.id }, "handler failed");
      return answerNow("unavailable", ERROR_CODES.unavailable);
    }
  }

  /** A job in its own savepoint: a bug in one rolls back only its writes (a storage fault, all). */
  #runJob(job: Job, nowMs: number): OutboxRow[] {
    const outgoing: Outgoing[] = [];
    const afterCommit: (() => void)[] = [];
    const ctx: TxContext = {
      nowMs,
      db: this.#o.db,
      send: (to, type, b, msgId) => outgoing.push(signedDown(this.#o.signer, to, type, b, null, nowMs, msgId)),
      withdraw: (to, msgId) => this.#withdraw(to, msgId, nowMs, outgoing),
      afterCommit: (fn) => afterCommit.push(fn),
    };
    try {
      this.#savepoint(() => job.run(ctx));
    } catch (err) {
      if (isStorageFault(err)) throw err;
      this.#o.log.error({ err: errorSummary(err), job: job.label }, "internal job failed");
      return [];
    }
    job.ran = true;
    const rows = outgoing.map((o) => this.#store(o, nowMs, nowMs + this.#o.freshnessMs + 1));
    this.#afterCommit.push(...afterCommit);
    return rows;
  }

  #withdraw(to: string, msgId: string, nowMs: number, pending: Outgoing[]): void {
    if (this.#outbox.markDelivered(to, msgId, nowMs)) this.#counted(to, -1);
    const i = pending.findIndex((o) => o.to === to && o.msgId === msgId);
    if (i >= 0) pending.splice(i, 1);
  }

  /** Stores a message in the outbox; one of the ephemeral types expires at `ephemeralUntil`. */
  #store(o: Outgoing, nowMs: number, ephemeralUntil: number): OutboxRow {
    const expiresMs = EPHEMERAL_DOWN_TYPES.has(o.type) ? ephemeralUntil : null;
    return this.#outbox.add({ deviceId: o.to, msgId: o.msgId, re: o.re, bytes: o.bytes, createdMs: nowMs, expiresMs });
  }

  #error(to: string, code: ErrorCode, detail: string, re: string | null, nowMs: number, retryAfterMs?: number): Outgoing {
    const out = signedDown(this.#o.signer, to, "error", { code, detail, inReplyTo: re, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) }, re, nowMs);
    this.#errorCodes.set(out.bytes, code);
    return out;
  }

  #countError(bytes: Uint8Array): void {
    const code = this.#errorCodes.get(bytes);
    if (code !== undefined) this.#metrics.errorAnswer(code);
  }
}

/** SQLite errors that mean the database, not the message, is at fault. */
export function isStorageFault(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && (/^SQLITE_(FULL|IOERR|READONLY|BUSY|LOCKED|CANTOPEN|CORRUPT|NOTADB|PROTOCOL)/.test(code) || isPgStorageFault(code));
}

function bodyProblem(error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] }): string {
  const issue = error.issues[0];
  return `body.${issue?.path.map(String).join(".") ?? ""}: ${issue?.message ?? "invalid"}`;
}

export function errorSummary(err: unknown): { message: string; code?: string } {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === "string" ? { message: err.message, code } : { message: err.message };
  }
  return { message: String(err) };
}

export type { DownBody };
