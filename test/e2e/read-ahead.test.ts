/**
 * The broker reads a device's next messages while its earlier ones wait for their commit to
 * reach the disk, up to MAX_UP_UNSTORED per connection (docs/protocol.md §Limits), and still
 * sends each PUBACK only once its message's commit is synced (§Delivery: a PUBACK means stored).
 * Before, Aedes read nothing more from a connection until its last message was answered, so
 * past capacity a device's new pay_request waited in the socket for the answers to its earlier
 * messages, and `busy` could not be "at once".
 */
import type { Packet } from "mqtt-packet";
import { afterEach, describe, expect, it } from "vitest";
import { MAX_UP_UNSTORED } from "../../broker/hooks.ts";
import { upTopic } from "../../src/protocol/topics.ts";
import { NODE_WAL_IO, type WalIo } from "../../src/store/wal-sync.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { RawSocket, connectPacket, encode } from "../raw-mqtt.ts";
import { sealWith } from "../wire.ts";

let broker: TestBroker | undefined;
const sockets: RawSocket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await broker?.stop();
  broker = undefined;
});

/**
 * node:fs, except that while `held` is set each fsync waits until `release()`. Every sync goes
 * through the thread pool (no fsyncSync): one made inline, at light load, could not be held.
 */
function gatedWalIo() {
  let held = false;
  const waiting: (() => void)[] = [];
  const { fsyncSync: _inline, ...pooled } = NODE_WAL_IO;
  const io: WalIo = {
    ...pooled,
    fsync: (fd, done) => {
      if (held) waiting.push(() => NODE_WAL_IO.fsync(fd, done));
      else NODE_WAL_IO.fsync(fd, done);
    },
  };
  return {
    io,
    hold: () => void (held = true),
    release: () => {
      held = false;
      for (const go of waiting.splice(0)) go();
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await sleep(5);
  }
}

/** A broker whose WAL syncs a test can hold, and a terminal connected to it over a raw socket. */
async function gatedDevice() {
  const gate = gatedWalIo();
  broker = await startTestBroker({ database: "", deviceRatePerSec: 100_000, deviceBurst: 100_000 }, undefined, undefined, { walIo: gate.io });
  const key = broker.register("terminal");
  const s = await RawSocket.open(broker.url);
  sockets.push(s);
  s.write(connectPacket(key));
  expect(await s.next("connack")).toMatchObject({ returnCode: 0 });
  /** The terminal's messages committed (each new one leaves a row in the replay memory). */
  const seen = () => (broker!.db.prepare("SELECT count(*) AS n FROM seen_messages WHERE device_id = ?").get(key.deviceId) as { n: number }).n;
  return { gate, key, s, seen };
}

const pubacks = (s: RawSocket): number[] => s.packets.filter((p): p is Packet & { cmd: "puback"; messageId: number } => p.cmd === "puback").map((p) => p.messageId);

describe("reading ahead while earlier messages wait for the disk", () => {
  it(`stores up to ${MAX_UP_UNSTORED} of a device's messages before the first one's sync, reads no more past that, and PUBACKs each, in order, only once synced`, async () => {
    const { gate, key, s, seen } = await gatedDevice();
    const ping = (i: number) => encode({ cmd: "publish", topic: upTopic(key.deviceId), qos: 1, messageId: i, payload: Buffer.from(sealWith(key.pair, { type: "ping", from: key.deviceId, body: { echo: `m${i}` } }).bytes) });

    gate.hold();
    // One at a time, each in a write of its own: each is read and committed while no sync ends.
    for (let i = 1; i <= MAX_UP_UNSTORED; i++) {
      s.write(ping(i));
      await until(`message ${i} is committed`, () => seen() === i);
    }
    // The bound's worth wait for the disk: the broker reads nothing more from this connection.
    s.write(ping(MAX_UP_UNSTORED + 1));
    await sleep(300);
    expect(seen()).toBe(MAX_UP_UNSTORED);
    expect(pubacks(s)).toEqual([]);

    // Synced: each is acknowledged, in order, and the connection is read again.
    gate.release();
    await until("every message is acknowledged", () => pubacks(s).length === MAX_UP_UNSTORED + 1);
    expect(pubacks(s)).toEqual(Array.from({ length: MAX_UP_UNSTORED + 1 }, (_, i) => i + 1));
    expect(seen()).toBe(MAX_UP_UNSTORED + 1);
  }, 30_000);

  it("reads a flood sent in one write no further than the bound and the read that reached it, and once synced reads and handles all of it, in order", async () => {
    const { gate, key, s, seen } = await gatedDevice();
    const packets = Array.from({ length: 900 }, (_, i) => encode({ cmd: "publish", topic: upTopic(key.deviceId), qos: 1, messageId: i + 1, payload: Buffer.from(sealWith(key.pair, { type: "ping", from: key.deviceId, body: { echo: `m${i}` } }).bytes) }));
    const all = Buffer.concat(packets);

    gate.hold();
    s.write(all); // ~300 KB at once (fewer than the 1000 a device may leave undelivered)
    await until("the first messages are committed", () => seen() >= MAX_UP_UNSTORED);
    await sleep(300);
    // Node reads a socket 64 KiB at a time, and a read is parsed whole: the bound, plus the rest
    // of the read that reached it, and nothing after it.
    expect(seen()).toBeLessThanOrEqual(MAX_UP_UNSTORED + Math.ceil(65_536 / packets[0]!.length) + 1);

    gate.release();
    await until("every message is acknowledged", () => pubacks(s).length === packets.length, 20_000);
    expect(pubacks(s)).toEqual(packets.map((_, i) => i + 1));
    expect(seen()).toBe(packets.length);
  }, 60_000);
});
