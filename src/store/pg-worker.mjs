// Plain JavaScript on purpose: the worker runs without the TypeScript loader (src/store/pg.ts).
// It owns one PostgreSQL connection (the `pg` client) and runs, one at a time and in order, the
// statements the broker's thread sends it; the broker's thread waits for each answer (Atomics),
// so the services above stay synchronous, exactly as on SQLite.
import { workerData } from "node:worker_threads";
import pg from "pg";

// Integers are BIGINT (int8) and sums NUMERIC in the schema: every value the broker stores is an
// integer far below 2^53 (ms timestamps, minor units, sequence numbers), so a JS number is exact.
// A value past 2^53 is refused rather than rounded.
const exactNumber = (text) => {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new Error(`integer ${text} is beyond 2^53: not exact as a JS number`);
  return n;
};
pg.types.setTypeParser(20, exactNumber); // int8
pg.types.setTypeParser(1700, exactNumber); // numeric (sum of int8)

const { signal, port, url, applicationName } = workerData;
const flag = new Int32Array(signal);
const names = new Map();

// The id of the request being answered (0: the ready message). The broker's thread sends one
// request at a time and matches each answer to its request by this id.
let current = 0;

function answer(message) {
  port.postMessage({ ...message, id: current });
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
}

function failure(err) {
  return { error: { message: String(err && err.message ? err.message : err), code: err && err.code, detail: err && err.detail, constraint: err && err.constraint } };
}

let client;
// A broken connection fails the statement waiting on it: the broker's thread treats that as a
// storage fault and the batch fails whole. Without this listener the error would kill the worker.
let broken = null;

async function connect() {
  const c = new pg.Client({ connectionString: url, application_name: applicationName });
  c.on("error", (err) => {
    broken = err;
  });
  c.on("end", () => {
    broken ??= new Error("the server closed the connection");
  });
  await c.connect();
  // Idle in a transaction for 30 s (a frozen node), the session ends and releases the write lock;
  // a wait for the lock gives up after 20 s.
  await c.query("SET idle_in_transaction_session_timeout = '30s'; SET lock_timeout = '20s'");
  // Nothing leaves the broker before its commit is durable: a server set to synchronous_commit=off
  // would answer COMMIT before its WAL is flushed, so this session turns it back on. Stronger
  // settings (remote_write, on with synchronous_standby_names, remote_apply) are kept.
  const sync = await c.query("SHOW synchronous_commit");
  if (sync.rows[0]?.synchronous_commit === "off") await c.query("SET synchronous_commit = on");
  client = c;
  broken = null;
  names.clear();
}

try {
  await connect();
  answer({ ready: true });
} catch (err) {
  answer(failure(err));
}

port.on("message", async (m) => {
  if (m === "close") {
    await client.end().catch(() => {});
    port.close();
    return;
  }
  current = m.id;
  if (broken !== null) {
    // Inside a transaction the connection's work is lost with it: that transaction fails. A
    // statement outside one (the next BEGIN, a read) connects again first (PostgreSQL restarted,
    // or a standby was promoted behind the same address).
    if (m.inTransaction) return answer(failure(Object.assign(new Error(`the PostgreSQL connection broke: ${broken.message}`), { code: "08006" })));
    try {
      await client.end().catch(() => {});
      await connect();
    } catch (err) {
      return answer(failure(Object.assign(new Error(`PostgreSQL is unreachable: ${err.message}`), { code: "08001" })));
    }
  }
  try {
    if (m.params === undefined) {
      // Text without parameters may hold several statements (BEGIN; SELECT pg_advisory_xact_lock…):
      // the simple protocol runs them in one round trip.
      const r = await client.query({ text: m.sql, rowMode: "array" });
      const last = Array.isArray(r) ? r[r.length - 1] : r;
      answer({ rows: last.rows ?? [], fields: (last.fields ?? []).map((f) => f.name), n: last.rowCount ?? 0 });
      return;
    }
    // Each distinct text is prepared once per connection and run by name afterwards.
    let name = names.get(m.sql);
    if (name === undefined) {
      name = `hp${names.size}`;
      names.set(m.sql, name);
    }
    const r = await client.query({ name, text: m.sql, values: m.params, rowMode: "array" });
    answer({ rows: r.rows, fields: r.fields.map((f) => f.name), n: r.rowCount ?? 0 });
  } catch (err) {
    answer(failure(err));
  }
});
