/**
 * What a page keeps between visits, in IndexedDB (database "handoff-pay", one object store of
 * records by name): its device key, the broker key it pinned, its history, and what the page
 * keeps besides (login:terminal, agreements:terminal:<id>, user:phone, prompts:phone). Every name
 * is <what>:<role>[:…]; forgetting the device deletes every record of its role.
 *
 *   device:<role>      {deviceId, kind, name, publicKey, seed} (bytes as Uint8Array)
 *   broker:<role>      the pinned broker public key (base64)
 *   history:<role>     the page's list of payments and their outcomes (newest first)
 */
import type { BrowserKey, DeviceKind } from "./browser.ts";

const DB_NAME = "handoff-pay";
const STORE = "records";

function open(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error("IndexedDB would not open"));
  });
}

async function run<T>(mode: IDBTransactionMode, act: (store: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  const db = await open();
  try {
    return await new Promise<T>((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const req = act(tx.objectStore(STORE));
      // The write is durable once the transaction completes, not when the request succeeds.
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
      tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
    });
  } finally {
    db.close();
  }
}

export function load<T>(name: string): Promise<T | undefined> {
  return run("readonly", (s) => s.get(name) as IDBRequest<T | undefined>);
}

export async function save(name: string, value: unknown): Promise<void> {
  await run("readwrite", (s) => s.put(value, name));
}

export async function remove(name: string): Promise<void> {
  await run("readwrite", (s) => s.delete(name));
}

export function loadKey(role: DeviceKind): Promise<BrowserKey | undefined> {
  return load<BrowserKey>(`device:${role}`);
}

export function saveKey(key: BrowserKey): Promise<void> {
  return save(`device:${key.kind}`, key);
}

/**
 * Forgets the device: every record of its role (the second part of the record's name: its key,
 * its pinned broker key, its history, and whatever else the page keeps, e.g. login:terminal).
 */
export async function forgetDevice(role: DeviceKind): Promise<void> {
  const names = await run("readonly", (s) => s.getAllKeys());
  for (const name of names) if (typeof name === "string" && name.split(":")[1] === role) await remove(name);
}

export type PinCheck = { state: "pinned-now" | "matches"; pinned: string } | { state: "changed"; pinned: string; offered: string };

/**
 * Trust on first use: the first broker key a page sees is pinned; later it must be the same
 * key. A changed key is not accepted silently (the page asks the person: see web/common.ts).
 */
export async function checkBrokerPin(role: DeviceKind, offered: string): Promise<PinCheck> {
  const pinned = await load<string>(`broker:${role}`);
  if (pinned === undefined) {
    await save(`broker:${role}`, offered);
    return { state: "pinned-now", pinned: offered };
  }
  return pinned === offered ? { state: "matches", pinned } : { state: "changed", pinned, offered };
}

export async function repinBroker(role: DeviceKind, key: string): Promise<void> {
  await save(`broker:${role}`, key);
}
