// Plain JavaScript on purpose: the worker runs without the TypeScript loader (src/store/checkpointer.ts).
// It copies the WAL's committed frames into the database file when asked, on its own connection,
// so the broker's thread never waits for that copy and its fsync.
import { parentPort, workerData } from "node:worker_threads";
import Database from "better-sqlite3";

/**
 * Past this many frames in the WAL the worker asks for a RESTART checkpoint instead of a passive
 * one (see below).
 */
const RESTART_AFTER_FRAMES = 2000;

// timeout 0: a checkpoint that needs the write lock never waits for it (it gives up at once,
// copying what it can, as a passive one does).
const db = new Database(workerData.file, { fileMustExist: true, timeout: 0 });
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
    // But the WAL only starts over from its beginning once a checkpoint has copied every frame,
    // which a passive one rarely manages while the broker writes: the WAL then grew to the
    // broker's fallback, whose checkpoint (and database fsync) ran on the broker's thread. So a
    // long WAL gets a RESTART checkpoint: it takes the write lock if it is free this instant
    // (timeout 0: it never waits), copies the rest and makes the next write start the WAL over;
    // if the broker is writing, it copies what it can, like a passive one.
    let [result] = db.pragma("wal_checkpoint(PASSIVE)");
    if (result.log > RESTART_AFTER_FRAMES && result.busy === 0) [result] = db.pragma("wal_checkpoint(RESTART)");
    parentPort.postMessage({ ok: true, busy: result.busy, log: result.log, checkpointed: result.checkpointed });
  } catch (err) {
    parentPort.postMessage({ ok: false, message: String(err && err.message ? err.message : err), code: err && err.code });
  }
});
