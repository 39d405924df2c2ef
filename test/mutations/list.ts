/**
 * The bugs `npm run test:mutations` plants, one at a time, in a scratch copy of the tree
 * (scripts/mutations.ts; docs/operations.md §Mutations). Each is a one-line change to a rule a
 * bank fears to get wrong, and names the tests that promise the rule: they must fail with the
 * bug in place ("caught"); if they pass, the promise is empty ("missed").
 *
 * To add one (do so whenever a rule is added to src/core or to the protocol):
 * - `search` is text copied from the file as it is now; it must occur there exactly once, or the
 *   harness reports the mutation `broken` (the code moved: update the entry, never drop it);
 * - `replace` is the smallest change that breaks the rule and still loads (no syntax or import
 *   error: that counts as broken too, not as caught);
 * - `tests` are the files of the tests whose names promise the rule, and `filter` a substring
 *   of those tests' names (vitest -t, matched literally) so the run takes seconds, not minutes;
 * - `quick: true` puts it in the form CI runs (test/e2e/mutations.test.ts): keep that form
 *   under two minutes.
 * Then run `npm run test:mutations -- --only <id>` and see it caught.
 */
export interface Mutation {
  /** Short, stable, kebab-case. */
  readonly id: string;
  /** One sentence: the bug. */
  readonly rule: string;
  /** Path from the repository root. */
  readonly file: string;
  /** Exact text, found exactly once in `file`. */
  readonly search: string;
  readonly replace: string;
  /** Test files (from the repository root) whose tests promise the rule. */
  readonly tests: readonly string[];
  /** Run only the tests whose full name contains this text (vitest -t, escaped). */
  readonly filter?: string;
  /** In the quick form CI runs. */
  readonly quick?: boolean;
}

export const MUTATIONS: readonly Mutation[] = [
  // ── The bugs the issue found the suite missing ─────────────────────────────────────────────
  {
    id: "unbind-tampered-keeps-row",
    rule: "Unbinding a tampered agreement leaves its row active instead of shredding it.",
    file: "src/service/binding.ts",
    search: "    agreements.shred(row.id, by, ctx.nowMs);\n    o.onUnbound?.(ctx, row.id);",
    replace: "    if (opened.ok) agreements.shred(row.id, by, ctx.nowMs);\n    o.onUnbound?.(ctx, row.id);",
    tests: ["test/e2e/binding.test.ts"],
    filter: "unbind a tampered agreement",
    quick: true,
  },
  {
    id: "receipt-marks-all-delivered",
    rule: "A receipt (PUBACK or ack) for one message marks every undelivered message of that device delivered.",
    file: "src/store/outbox.ts",
    search: '"UPDATE outbox SET delivered_ms = ? WHERE device_id = ? AND msg_id = ? AND delivered_ms IS NULL"',
    replace: '"UPDATE outbox SET delivered_ms = ? WHERE device_id = ? AND ? IS NOT NULL AND delivered_ms IS NULL"',
    tests: ["test/e2e/delivery.test.ts"],
    filter: "withhold the PUBACK of A",
    quick: true,
  },
  {
    id: "wal-sync-never-reopens",
    rule: "The WAL sync keeps syncing the descriptor of a WAL file SQLite has replaced.",
    file: "src/store/wal-sync.ts",
    search: "if (this.#fd !== null && ino === this.#ino) return this.#fd;",
    replace: "if (this.#fd !== null) return this.#fd;",
    tests: ["test/unit/wal-sync.test.ts"],
    filter: "replaced",
    quick: true,
  },
  {
    id: "purge-unbounded",
    rule: "The housekeeping purge deletes everything expired in one unbounded step, ignoring its chunk size.",
    file: "broker/housekeeping.ts",
    search: "const chunk = options.chunkRows ?? PURGE_CHUNK_ROWS;",
    replace: "const chunk = -1; // SQLite: no LIMIT",
    tests: ["test/unit/housekeeping.test.ts", "test/e2e/housekeeping.test.ts"],
    quick: true,
  },
  {
    id: "rate-limit-off",
    rule: "The per-device rate limiter lets every message through.",
    file: "src/service/rate-limit.ts",
    search: "if (b.tokens < 1) return false;",
    replace: "if (b.tokens < 1) return true;",
    tests: ["test/e2e/envelope.test.ts"],
    filter: "rate limit",
    quick: true,
  },

  // ── Payment limits (src/core/payment.ts decideMode) ─────────────────────────────────────────
  {
    id: "per-payment-max-off-by-one",
    rule: "A payment one minor unit above the agreement's per-payment maximum is accepted.",
    file: "src/core/payment.ts",
    search: "if (amountMinor > limits.perPaymentMaxMinor) {",
    replace: "if (amountMinor > limits.perPaymentMaxMinor + 1) {",
    tests: ["test/unit/payment-core.test.ts"],
    filter: "decides",
    quick: true,
  },
  {
    id: "auto-confirm-max-off-by-one",
    rule: "A payment one minor unit above the auto-confirm maximum is confirmed without asking the phone.",
    file: "src/core/payment.ts",
    search: "const auto = amountMinor <= limits.autoConfirmMaxMinor &&",
    replace: "const auto = amountMinor <= limits.autoConfirmMaxMinor + 1 &&",
    tests: ["test/unit/payment-states-doc.test.ts", "test/unit/payment-core.test.ts"],
  },
  {
    id: "daily-auto-limit-ignores-today",
    rule: "The daily auto-confirm limit compares the payment alone, not today's auto-confirmed total plus it.",
    file: "src/core/payment.ts",
    search: "u.todayAutoMinor + amountMinor <= limits.autoConfirmDailyMinor",
    replace: "amountMinor <= limits.autoConfirmDailyMinor",
    tests: ["test/unit/payment-core.test.ts"],
    filter: "daily limit",
    quick: true,
  },
  {
    id: "consecutive-auto-off-by-one",
    rule: "One more payment than maxConsecutiveAuto is auto-confirmed in a row.",
    file: "src/core/payment.ts",
    search: "u.consecutiveAuto < maxConsecutiveAuto",
    replace: "u.consecutiveAuto <= maxConsecutiveAuto",
    tests: ["test/unit/payment-core.test.ts"],
    filter: "maxConsecutiveAuto",
  },
  {
    id: "currency-check-skipped",
    rule: "A payment in another currency than the agreement's is accepted.",
    file: "src/core/payment.ts",
    search: "if (currency !== limits.currency) return",
    replace: "if (false && currency !== limits.currency) return",
    tests: ["test/unit/payment-core.test.ts", "test/e2e/payment.test.ts"],
    filter: "currency",
  },

  // ── Dynamic linking, funds, the ledger ──────────────────────────────────────────────────────
  {
    id: "approve-dynamic-link-skipped",
    rule: "An approval that names another amount, currency, merchant or terminal confirms the payment.",
    file: "src/core/payment.ts",
    search: "if (!sameLinkedValues(p, ev.values)) return",
    replace: "if (false && !sameLinkedValues(p, ev.values)) return",
    tests: ["test/unit/payment-states-doc.test.ts"],
  },
  {
    id: "execute-amount-link-skipped",
    rule: "An execution authorisation naming another amount completes the payment.",
    file: "src/core/payment.ts",
    search: "if (ev.values.amountMinor !== p.amountMinor || ev.values.currency !== p.currency",
    replace: "if (ev.values.currency !== p.currency",
    tests: ["test/e2e/payment.test.ts"],
    filter: "another payee or amount",
  },
  {
    id: "wallet-overdraft",
    rule: "A payment larger than the wallet's balance completes and takes the wallet below zero.",
    file: "src/core/payment.ts",
    search: "if (ev.walletBalanceMinor < p.amountMinor) return",
    replace: "if (ev.walletBalanceMinor < 0) return",
    // Not the fast-check property of payment-core.test.ts: its random cases need not include
    // a wallet too small, so it catches this only sometimes.
    tests: ["test/e2e/payment.test.ts"],
    filter: "insufficient funds",
    quick: true,
  },
  {
    id: "ledger-one-sided",
    rule: "A transfer credits the merchant without debiting the wallet (money made from nothing).",
    file: "src/store/ledger.ts",
    search: "      this.#move.run(-t.amountMinor, t.debitAccount);\n",
    replace: "",
    tests: ["test/e2e/payment.test.ts"],
    filter: "auto-confirms a small payment",
  },
  {
    id: "idempotency-conflict-ignored",
    rule: "A pay_request reusing an idempotency key with other fields gets the earlier payment instead of idempotency_conflict.",
    file: "src/service/payments.ts",
    search: "if (!sameBytes(existing.requestDigest, digest)) throw",
    replace: "if (!sameBytes(existing.requestDigest, existing.requestDigest)) throw",
    tests: ["test/e2e/payment.test.ts"],
    filter: "retried request",
  },
  {
    id: "final-payment-cancelled",
    rule: "A terminal can cancel a payment that has already completed.",
    file: "src/core/payment.ts",
    search: 'if (p.status !== "awaiting_confirmation" && p.status !== "executing") return notPending(p, "cancel");',
    replace: 'if (p.status === "declined") return notPending(p, "cancel");',
    tests: ["test/unit/payment-states-doc.test.ts"],
  },

  // ── Deadlines and prompts ───────────────────────────────────────────────────────────────────
  {
    id: "deadline-never-fires",
    rule: "A due deadline is queued but never run through the payment state machine.",
    file: "broker/deadlines.ts",
    search: "this.#o.fire(ctx, due.paymentId, due.which);",
    replace: "void ctx;",
    tests: ["test/unit/deadlines.test.ts"],
  },
  {
    id: "ended-prompt-still-resent",
    rule: "A prompt is not withdrawn when its payment ends, so an offline phone is still asked about it.",
    file: "src/service/payments.ts",
    search: "          ctx.withdraw(p.phoneId, `${p.id}${PROMPT_SUFFIX}`);\n",
    replace: "",
    tests: ["test/e2e/payment.test.ts"],
    filter: "the phone on its next connect",
  },
  {
    id: "approve-after-prompt-expiry",
    rule: "An approval that arrives after the prompt's deadline still confirms the payment.",
    file: "src/core/payment.ts",
    search: "if (nowMs >= p.promptDeadlineMs!) return",
    replace: "if (false && nowMs >= p.promptDeadlineMs!) return",
    tests: ["test/unit/payment-states-doc.test.ts"],
  },

  // ── Binding ─────────────────────────────────────────────────────────────────────────────────
  {
    id: "pairing-wrong-tries-off-by-one",
    rule: "A pairing code survives its fifth wrong try and is voided only on the sixth.",
    file: "src/core/pairing.ts",
    search: "if (wrongTries >= MAX_WRONG_TRIES && p.status === \"live\")",
    replace: "if (wrongTries > MAX_WRONG_TRIES && p.status === \"live\")",
    tests: ["test/e2e/binding.test.ts"],
    filter: "fifth wrong try",
  },

  // ── Messages: signature, freshness, replay ──────────────────────────────────────────────────
  {
    id: "message-signature-unchecked",
    rule: "A message whose signature does not verify is handled.",
    file: "src/service/inbox.ts",
    search: "if (!verify(device.publicKey, s.msg.payloadBytes, s.msg.signature)) return",
    replace: "if (false && !verify(device.publicKey, s.msg.payloadBytes, s.msg.signature)) return",
    tests: ["test/e2e/envelope.test.ts"],
    filter: "bad_signature",
    quick: true,
  },
  {
    id: "future-timestamp-fresh",
    rule: "A message stamped further in the future than the freshness window is accepted.",
    file: "src/service/inbox.ts",
    search: "if (Math.abs(nowMs - payload.ts) > this.#o.freshnessMs) {",
    replace: "if (nowMs - payload.ts > this.#o.freshnessMs) {",
    tests: ["test/e2e/envelope.test.ts"],
    filter: "newer than the window",
  },
  {
    id: "duplicate-handled-again",
    rule: "The same message again (same id and bytes) is handled a second time instead of getting the stored answer.",
    file: "src/service/inbox.ts",
    search: 'if (seen === "duplicate") return',
    replace: 'if (false && seen === "duplicate") return',
    tests: ["test/e2e/envelope.test.ts"],
    filter: "duplicates",
  },
  {
    id: "message-id-reuse-accepted",
    rule: "A used message id with a different body is handled as a new message instead of message_id_reused.",
    file: "src/service/inbox.ts",
    search: 'if (seen === "conflict") return',
    replace: 'if (false && seen === "conflict") return',
    tests: ["test/e2e/envelope.test.ts"],
    filter: "message_id_reused",
  },
  {
    id: "backlog-bound-off",
    rule: "A device past its backlog bound gets its new messages handled instead of backlog_full.",
    file: "src/service/inbox.ts",
    search: "this.#backlog(p.deviceId, nowMs) >= this.#o.maxBacklog",
    replace: "this.#backlog(p.deviceId, nowMs) >= this.#o.maxBacklog * 1000",
    tests: ["test/e2e/backlog.test.ts"],
    filter: "refuses new messages with backlog_full",
  },
  {
    id: "publish-before-fsync",
    rule: "A batch's answers are published before its commit is synced to disk.",
    file: "src/service/inbox.ts",
    search: "if (this.#o.durable === undefined) fn();",
    replace: "if (this.#o.durable !== null) fn();",
    tests: ["test/unit/wal-sync.test.ts"],
    filter: "durability gate",
  },
  {
    id: "lone-receipt-never-written",
    rule: "A receipt with no message after it waits for ever instead of at most receiptDelayMs.",
    file: "src/service/inbox.ts",
    search: "else if (this.#receiptTimer === null && !this.#scheduled) {",
    replace: "else if (false) {",
    tests: ["test/unit/inbox-timing.test.ts"],
    filter: "lone receipt",
  },
  {
    id: "batch-budget-ignored",
    rule: "A batch takes everything waiting, however long it takes, so the broker goes back to its sockets only after it.",
    file: "src/service/inbox.ts",
    search: "if (budgetMs <= 0) return max;",
    replace: "return max;",
    tests: ["test/unit/inbox-timing.test.ts"],
    filter: "never fewer than MIN_BATCH",
  },
  {
    id: "busy-waits-for-its-batch",
    rule: "Past capacity a pay request waits in the queue for its batch before it is answered busy.",
    file: "src/service/inbox.ts",
    search: "if (this.#turnedAway(p)) return;",
    replace: "",
    tests: ["test/unit/inbox-timing.test.ts"],
    filter: "inside submit",
  },
  {
    id: "busy-ignores-queue",
    rule: "A pay request arriving behind a long queue is let in, to be refused only after it has waited.",
    file: "src/service/inbox.ts",
    search: "const aheadMs = this.#queue.length * this.#msPerMessage;",
    replace: "const aheadMs = 0;",
    tests: ["test/unit/inbox-timing.test.ts"],
    filter: "messages queued before it",
  },
  {
    id: "read-ahead-unbounded",
    rule: "A connection's messages waiting for their commit have no bound: the broker reads on from it.",
    file: "broker/hooks.ts",
    search: "if (++state.unstored >= maxUpUnstored && !state.paused) {",
    replace: "if (++state.unstored >= Infinity && !state.paused) {",
    tests: ["test/e2e/read-ahead.test.ts"],
    filter: "stores up to",
  },
  {
    id: "inline-sync-skips-disk",
    rule: "A small batch's answers are released at light load without their commit being synced to disk.",
    file: "src/store/wal-sync.ts",
    search: "this.#io.fsyncSync(this.#descriptor());",
    replace: "this.#descriptor();",
    tests: ["test/unit/wal-sync.test.ts"],
    filter: "syncs before releasing anything",
    quick: true,
  },

  // ── Connecting ──────────────────────────────────────────────────────────────────────────────
  {
    id: "connect-token-reuse",
    rule: "A connect token that was already used is accepted again.",
    file: "src/store/replay.ts",
    search: "return this.#putToken.run(deviceId, nonce, expiresMs, nowMs).changes === 1;",
    replace: "return this.#putToken.run(deviceId, nonce, expiresMs, nowMs).changes >= 0;",
    tests: ["test/e2e/connect.test.ts"],
    filter: "refuses the same token again",
  },
  {
    id: "connect-token-future-fresh",
    rule: "A connect token stamped further in the future than the freshness window is accepted.",
    file: "src/service/connect.ts",
    search: "if (Math.abs(nowMs - token.tsMs) > this.#freshnessMs) return",
    replace: "if (nowMs - token.tsMs > this.#freshnessMs) return",
    tests: ["test/e2e/connect.test.ts"],
  },

  // ── Topics and the transport ────────────────────────────────────────────────────────────────
  {
    id: "subscribe-acl-any-device",
    rule: "A device may subscribe to another device's down topic.",
    file: "src/protocol/topics.ts",
    search: 'levels[2] !== deviceId || levels[3] !== "down"',
    replace: 'levels[2] === "" || levels[3] !== "down"',
    tests: ["test/e2e/acl.test.ts"],
    filter: "another device's down topic",
    quick: true,
  },
  {
    id: "publish-acl-any-up-topic",
    rule: "A device may publish on another device's up topic.",
    file: "src/protocol/topics.ts",
    search: "return topic === upTopic(deviceId);",
    replace: 'return topic.endsWith("/up");',
    tests: ["test/e2e/acl.test.ts"],
    filter: "publish",
  },
  {
    id: "delivery-window-resend-off",
    rule: "A device that connects to a backlog and withholds its PUBACKs is sent all of it, not at most the delivery window.",
    file: "broker/delivery.ts",
    search: "const room = this.#window - conn.awaiting.size;",
    replace: "const room = 65_535 - conn.awaiting.size;",
    tests: ["test/e2e/flow-control.test.ts"],
    filter: "the delivery window",
  },
  {
    id: "delivery-window-live-off",
    rule: "A connected device whose window is full is still sent each new message as it is stored, past the delivery window.",
    file: "broker/delivery.ts",
    search: "if (conn.behind || conn.awaiting.size >= this.#window) {",
    replace: "if (conn.behind) {",
    tests: ["test/e2e/flow-control.test.ts"],
    filter: "the delivery window",
  },
  {
    id: "subscribe-limit-off-by-one",
    rule: "An 11th SUBSCRIBE or UNSUBSCRIBE on one connection is accepted.",
    file: "broker/frame-guard.ts",
    search: "if (this.#subscribes > this.maxSubscribes) return",
    replace: "if (this.#subscribes > this.maxSubscribes + 1) return",
    tests: ["test/unit/frame-guard.test.ts"],
    filter: "refuses the 11th",
  },
  {
    id: "qos2-publish-accepted",
    rule: "A QoS 2 PUBLISH is let through to Aedes instead of closing the connection.",
    file: "broker/frame-guard.ts",
    search: "if (qos === 2) return new PacketRefused(",
    replace: "if (qos === 4) return new PacketRefused(",
    tests: ["test/e2e/transport-rules.test.ts"],
    filter: "publishes with QoS 2",
  },
  {
    id: "duplicate-member-at-top",
    rule: "A payload naming a member twice at its top level (two ids, say) is accepted.",
    file: "src/protocol/strict-json.ts",
    search: 'if (top.names.has(name)) report("duplicate", name, top);',
    replace: 'if (top.names.has(name) && depth > 1) report("duplicate", name, top);',
    tests: ["test/e2e/strict-json.test.ts"],
  },

  {
    id: "connect-budget-off",
    rule: "A device may connect as often as it likes: a reconnect loop is never refused.",
    file: "broker/hooks.ts",
    search: 'if (!connects.take(device.id, o.clock())) return refuse("too_many_connects");',
    replace: 'if (!connects.take(device.id, o.clock()) && false) return refuse("too_many_connects");',
    tests: ["test/e2e/connect-budget.test.ts"],
  },
  {
    id: "connect-budget-spent-by-strangers",
    rule: "Failed connect attempts under a device's id spend that device's connect budget.",
    file: "broker/hooks.ts",
    search: "    try {\n      checked = authenticator.check(",
    replace: "    connects.take(client.id, o.clock());\n    try {\n      checked = authenticator.check(",
    tests: ["test/e2e/connect-budget.test.ts"],
  },

  // ── The production edge (broker/listener.ts) ───────────────────────────────────────────────
  // (No mutation lowers the TLS minimum: Node 20's OpenSSL 3 refuses TLS 1.0 and 1.1 at its
  // default security level whatever minVersion says, so no test here could tell the difference.)
  {
    id: "ws-origin-unchecked",
    rule: "A WebSocket upgrade from an Origin that is not allowed goes through.",
    file: "broker/listener.ts",
    search: "if (origin !== undefined && allowedOrigins.length > 0 && !allowedOrigins.some(",
    replace: "if (origin === undefined && allowedOrigins.length > 0 && !allowedOrigins.some(",
    tests: ["test/e2e/listeners.test.ts"],
    filter: "disallowed Origin",
  },
  {
    id: "listener-unguarded",
    rule: "Connections on the TLS and WebSocket listeners skip the packet-size guard.",
    file: "broker/listener.ts",
    search: "guardFrames(stream as Socket, o.maxPacketBytes,",
    replace: "if (kind === \"tcp\") guardFrames(stream as Socket, o.maxPacketBytes,",
    tests: ["test/e2e/listeners.test.ts"],
    filter: "more than the limit",
  },

  // ── The browser device and its pages (src/device, broker/pages.ts) ─────────────────────────
  {
    id: "device-client-skips-verify",
    rule: "The shared device client hands on a broker message whose signature does not verify.",
    file: "src/device/client.ts",
    search: "if (!this.#o.platform.verify(this.#o.brokerPublicKey, payloadBytes, signature))",
    replace: "if (false && !this.#o.platform.verify(this.#o.brokerPublicKey, payloadBytes, signature))",
    tests: ["test/unit/device-client.test.ts"],
    filter: "drops a broker message its platform does not verify",
  },
  {
    id: "pages-framable",
    rule: "The pages may be framed by another site (click-jacking the phone's Approve button).",
    file: "broker/pages.ts",
    search: "form-action 'none'; frame-ancestors 'none'",
    replace: "form-action 'none'; frame-ancestors *",
    tests: ["test/e2e/pages.test.ts"],
    filter: "as HTML carrying the broker's public key",
  },

  // ── The audit log (src/store/audit.ts, src/service/audit-proofs.ts) ────────────────────────
  {
    id: "audit-leaf-hash-unchecked",
    rule: "audit verify accepts an entry whose text was edited, when its leaf hash was left as it was.",
    file: "src/store/audit.ts",
    search: "if (!equalBytes(leaf, row.leaf_hash)) return entryProblem(",
    replace: "if (false && !equalBytes(leaf, row.leaf_hash)) return entryProblem(",
    tests: ["test/unit/audit.test.ts"],
    filter: "names an entry whose text was edited and its leaf hash left",
    quick: true,
  },
  {
    id: "audit-proof-for-strangers",
    rule: "Any device may get the audit entry (and proof) of another device's payment.",
    file: "src/service/audit-proofs.ts",
    search: "(payment.payment.terminalId !== ctx.device.id && payment.payment.phoneId !== ctx.device.id)",
    replace: "(false && payment.payment.terminalId !== ctx.device.id && payment.payment.phoneId !== ctx.device.id)",
    tests: ["test/e2e/audit.test.ts"],
    filter: "answers audit_entry_not_found to a device asking for an entry that is not about its own payment",
  },
  // ── Several nodes (src/store/pg.ts, broker/cluster.ts) ─────────────────────────────────────
  {
    id: "pg-no-write-lock",
    rule: "A PostgreSQL transaction starts without the cluster-wide write lock, so two nodes' writes interleave.",
    file: "src/store/pg.ts",
    search: "this.query(`BEGIN; SELECT pg_advisory_xact_lock(${WRITE_LOCK})`);",
    replace: "this.query(`BEGIN`);",
    tests: ["test/unit/store-contract.test.ts"],
    filter: "makes a transaction wait for the write lock another connection holds",
    quick: true,
  },
  {
    id: "pg-commit-not-durable",
    rule: "A broker session keeps a server's synchronous_commit=off, so devices may hear of commits PostgreSQL has not flushed.",
    file: "src/store/pg-worker.mjs",
    search: 'if (sync.rows[0]?.synchronous_commit === "off") await c.query("SET synchronous_commit = on");',
    replace: 'if (sync.rows[0]?.synchronous_commit === "never") await c.query("SET synchronous_commit = on");',
    tests: ["test/unit/store-contract.test.ts"],
    filter: "commits durably even where the server is set to synchronous_commit=off",
  },
  {
    id: "cluster-no-stored-notice",
    rule: "A node that stores a message for a device on another node does not tell that node.",
    file: "broker/server.ts",
    search: "if (row !== null) cluster.stored(deviceId);",
    replace: "if (row === undefined) cluster.stored(deviceId);",
    tests: ["test/e2e/cluster.test.ts"],
    filter: "binds a terminal on one node to a phone on the other",
  },
  {
    id: "cluster-direct-send",
    rule: "A node sends a message it committed straight to its device, past a row another node committed first whose notice has not arrived: that row is skipped until the device reconnects.",
    file: "broker/server.ts",
    search: "sharedOutbox: mq !== undefined,",
    replace: "sharedOutbox: false,",
    tests: ["test/e2e/cluster.test.ts"],
    filter: "never skips a message another node committed",
  },
  {
    id: "cluster-no-catch-up-after-redis",
    rule: "A node back from a Redis outage does not re-read the outboxes of its devices, so what was stored meanwhile waits for their reconnect.",
    file: "broker/cluster.ts",
    search: "for (const deviceId of held) options.onStored(deviceId);",
    replace: "for (const deviceId of held) void deviceId;",
    tests: ["test/e2e/cluster.test.ts"],
    filter: "while Redis is down",
  },
];
