// Plain JavaScript on purpose: the worker runs without the TypeScript loader (src/store/checkpointer.ts).
// It copies the WAL's committed frames into the database file when asked, on its own connection,
// so the broker's thread never waits for that copy and its fsync.
import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";

const db = new Database(workerData.file, { fileMustExist: true });
// The checkpoint syncs the WAL before it copies and the database file after.
db.pragma("synchronous = FULL");

parentPort.on("message", (message) => {
  if (message === "close") {
    db.close();
    parentPort.close();
    return;
  }
  try {
    // PASSIVE: as many frames as possible, never waiting for (or blocking) the broker's writes.
    const [result] = db.pragma("wal_checkpoint(PASSIVE)");
    parentPort.postMessage({ ok: true, busy: result.busy, log: result.log, checkpointed: result.checkpointed });
  } catch (err) {
    parentPort.postMessage({ ok: false, message: String(err && err.message ? err.message : err), code: err && err.code });
  }
});
