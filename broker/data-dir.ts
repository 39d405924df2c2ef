/**
 * The broker's data directory: the database, the broker's Ed25519 identity, the master key
 * file and the lock that keeps a second broker out.
 *
 *   handoff.db (+ -wal, -shm)   SQLite, WAL
 *   broker.key                  broker identity: seed and public key, mode 0600
 *   broker.pub                  broker public key (base64): devices pin it
 *   master.key                  master keyring, mode 0600 (absent when HANDOFF_MASTER_KEY is set)
 *   broker.lock                 held (an exclusive SQLite lock) while a broker runs
 */
import Database from "better-sqlite3";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { generateKeyPair, keyPairFromSeed, type KeyPair } from "../src/crypto/ed25519.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { Keyring } from "../src/crypto/keyring.ts";
import { openDatabase, type Db, type OpenOptions } from "../src/store/db.ts";

export const DB_FILE = "handoff.db";

export class DataDirError extends Error {}

export function ensureDataDir(dir: string): string {
  const abs = resolve(dir);
  mkdirSync(abs, { recursive: true, mode: 0o700 });
  return abs;
}

export function openDataDb(dir: string, options: OpenOptions = {}): Db {
  return openDatabase(join(dir, DB_FILE), options);
}

/**
 * Takes the data dir's broker lock: an exclusive lock on broker.lock held by an open SQLite
 * connection. The operating system drops it when the process dies, even by SIGKILL, so a crash
 * never leaves a stale lock behind.
 */
export function lockDataDir(dir: string): { release(): void } {
  const lock = new Database(join(dir, "broker.lock"), { timeout: 0 });
  try {
    lock.pragma("journal_mode = DELETE");
    lock.pragma("locking_mode = EXCLUSIVE");
    lock.exec("CREATE TABLE IF NOT EXISTS holder (pid INTEGER)");
    lock.exec("BEGIN EXCLUSIVE");
    lock.exec(`DELETE FROM holder; INSERT INTO holder VALUES (${process.pid})`);
  } catch (err) {
    lock.close();
    if ((err as { code?: string }).code === "SQLITE_BUSY") {
      throw new DataDirError(`another broker is already running on data dir ${dir}; stop it first, or start this one with --data-dir <another dir>`);
    }
    throw err;
  }
  return {
    release() {
      try {
        lock.exec("COMMIT");
      } finally {
        lock.close();
      }
    },
  };
}

/** Loads the broker identity, creating it (0600) on first start. */
export function loadBrokerIdentity(dir: string): KeyPair {
  const file = join(dir, "broker.key");
  if (!existsSync(file)) {
    const pair = generateKeyPair();
    writeSecretFile(file, JSON.stringify({ publicKey: toBase64(pair.publicKey), seed: toBase64(pair.seed) }, null, 2) + "\n");
    writeFileSync(join(dir, "broker.pub"), toBase64(pair.publicKey) + "\n", { mode: 0o644 });
    return pair;
  }
  const parsed = JSON.parse(readFileSync(file, "utf8")) as { seed?: string };
  const seed = parsed.seed === undefined ? null : fromBase64(parsed.seed);
  if (seed === null || seed.length !== 32) throw new DataDirError(`${file} is not a broker identity file`);
  const pair = keyPairFromSeed(seed);
  const pubFile = join(dir, "broker.pub");
  if (!existsSync(pubFile)) writeFileSync(pubFile, toBase64(pair.publicKey) + "\n", { mode: 0o644 });
  return pair;
}

/** The broker public key a data dir holds, for tools that pin it. */
export function readBrokerPublicKey(dir: string): Uint8Array | null {
  const file = join(resolve(dir), "broker.pub");
  if (!existsSync(file)) return null;
  return fromBase64(readFileSync(file, "utf8").trim());
}

export const MASTER_KEY_FILE = "master.key";

/**
 * The master keyring: from HANDOFF_MASTER_KEY when set, else from master.key, created with mode
 * 0600 on first start. `warn` hears about a key file that others can read.
 */
export function loadKeyring(dir: string, fromEnv: string | undefined, warn: (msg: string) => void = () => {}): { keyring: Keyring; source: "env" | "file" | "created" } {
  if (fromEnv !== undefined) return { keyring: Keyring.fromEnv(fromEnv), source: "env" };
  const file = join(dir, MASTER_KEY_FILE);
  if (!existsSync(file)) {
    // A database without its key file is the wrong dir or a lost key: a new key would seal new
    // data that the real key cannot open, and could not open the old data at all.
    if (existsSync(join(dir, DB_FILE))) {
      throw new DataDirError(`${dir} has a database but no ${MASTER_KEY_FILE}: restore the key file, set HANDOFF_MASTER_KEY, or check --data-dir`);
    }
    const keyring = Keyring.fresh();
    writeSecretFile(file, keyring.toFileJson());
    return { keyring, source: "created" };
  }
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0) warn(`${file} has mode ${mode.toString(8)}; it should be 600 (chmod 600 ${file})`);
  return { keyring: Keyring.fromFileJson(readFileSync(file, "utf8")), source: "file" };
}

export function saveKeyring(dir: string, keyring: Keyring): void {
  writeSecretFile(join(dir, MASTER_KEY_FILE), keyring.toFileJson());
}

/** Writes a file only its owner can read, replacing it atomically enough for a key file. */
function writeSecretFile(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600, flag: "w" });
  chmodSync(tmp, 0o600);
  // rename is atomic on POSIX: a crash leaves the old file or the new one, never half of one.
  renameSync(tmp, file);
}
