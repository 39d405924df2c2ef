/**
 * The broker's data directory: the database, the broker's Ed25519 identity, the master key
 * file and the lock that keeps a second broker out.
 *
 *   handoff.db (+ -wal, -shm)   SQLite, WAL
 *   broker.key                  broker identity: seed and public key, mode 0600
 *   broker.pub                  broker public key (base64): devices pin it
 *   master.key                  master keyring, mode 0600 (absent when HANDOFF_MASTER_KEY is set)
 *   tls.crt, tls.key            the self-signed TLS certificate and its key (0600), when no --tls-cert is given
 *   broker.lock                 held (an exclusive SQLite lock) while a broker runs
 *
 * They hold prompts, amounts, names and keys, so only the broker's user may read them: the dir
 * is 0700 and every file but broker.pub is 0600. A dir or file found looser at start is
 * tightened, and `warn` hears which (docs/operations.md §The data dir); a dir that another user
 * owns is refused, because files created in it would belong to the wrong user.
 */
import Database from "better-sqlite3";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { generateKeyPair, keyPairFromSeed, type KeyPair } from "../src/crypto/ed25519.ts";
import { fromBase64, toBase64 } from "../src/crypto/encoding.ts";
import { Keyring } from "../src/crypto/keyring.ts";
import { openDatabase, type Db, type OpenOptions } from "../src/store/db.ts";

export const DB_FILE = "handoff.db";

export class DataDirError extends Error {}

/** Hears that a dir or file was tightened: a sentence, and the same facts as fields for a log. */
export type DataDirWarn = (msg: string, detail: { path: string; fromMode: string; toMode: string }) => void;

const warnOnStderr: DataDirWarn = (msg) => process.stderr.write(`warning: ${msg}\n`);

/** Every file of the data dir that only the broker's user may read (broker.pub is public). */
const PRIVATE_FILES = [DB_FILE, `${DB_FILE}-wal`, `${DB_FILE}-shm`, "broker.lock", "broker.key", "master.key", "tls.key"];

/**
 * Creates the data dir (0700) or checks an existing one: refused if another user owns it,
 * tightened to 0700 if group or others have any permission on it. Existing data files looser
 * than 0600 are tightened too. Returns the absolute path.
 */
export function ensureDataDir(dir: string, warn: DataDirWarn = warnOnStderr): string {
  const abs = resolve(dir);
  mkdirSync(abs, { recursive: true, mode: 0o700 });
  const st = statSync(abs);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new DataDirError(
      `data dir ${abs} is owned by uid ${st.uid}, not by this process's user (uid ${uid}): files created in it would belong to the wrong user. ` +
        `Run as the dir's owner (e.g. sudo -u <owner> ...), or give the dir to this user (chown -R ${uid} ${abs})`,
    );
  }
  tighten(abs, st.mode, 0o700, "data dir", warn);
  for (const name of PRIVATE_FILES) tightenFile(join(abs, name), warn);
  return abs;
}

/**
 * Opens the data dir's database. A new database file is created 0600 before SQLite opens it:
 * SQLite gives the -wal and -shm files the database file's mode, so they are 0600 too.
 */
export function openDataDb(dir: string, options: OpenOptions = {}, warn: DataDirWarn = warnOnStderr): Db {
  const file = join(dir, DB_FILE);
  if (!options.readonly) createPrivate(file);
  for (const path of [file, `${file}-wal`, `${file}-shm`]) tightenFile(path, warn);
  return openDatabase(file, options);
}

/** Creates an empty file 0600 if it does not exist (SQLite takes an empty file as an empty database). */
function createPrivate(file: string): void {
  // "a": create if absent, never truncate; the mode applies only to a file this call creates.
  closeSync(openSync(file, "a", 0o600));
}

function tightenFile(path: string, warn: DataDirWarn): void {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") return;
    throw err;
  }
  tighten(path, mode, 0o600, "data file", warn);
}

/** chmods `path` to `to` if group or others have any permission on it, and says so. */
function tighten(path: string, mode: number, to: number, what: string, warn: DataDirWarn): void {
  const from = mode & 0o777;
  if ((from & 0o077) === 0) return;
  chmodSync(path, to);
  const fromMode = from.toString(8);
  const toMode = to.toString(8);
  warn(`${what} ${path} had mode ${fromMode}, open to other users; tightened it to ${toMode}`, { path, fromMode, toMode });
}

/**
 * Takes the data dir's broker lock: an exclusive lock on broker.lock held by an open SQLite
 * connection. The operating system drops it when the process dies, even by SIGKILL, so a crash
 * never leaves a stale lock behind.
 */
export function lockDataDir(dir: string): { release(): void } {
  const file = join(dir, "broker.lock");
  createPrivate(file);
  const lock = new Database(file, { timeout: 0 });
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

/**
 * The broker's TLS certificate (PEM) a data dir holds, tls.crt, for tools that trust it: null
 * if there is none (the broker writes it on its first start with a TLS or wss listener).
 */
export function readBrokerCertificate(dir: string): string | null {
  const file = join(resolve(dir), "tls.crt");
  if (!existsSync(file)) return null;
  return readFileSync(file, "utf8");
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
