import mqttPacket from "mqtt-packet";
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { FrameScanner, PacketRefused, PacketTooLarge, guardFrames } from "../../broker/frame-guard.ts";

/** An MQTT fixed header: type byte and the remaining-length varint [MQTT-2.2.3]. */
function header(type: number, remainingLength: number): number[] {
  const out = [type];
  let n = remainingLength;
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

/** A whole packet with a body of `remainingLength` bytes. */
function packet(remainingLength: number, type = 0x30): Uint8Array {
  const bytes = new Uint8Array(header(type, remainingLength).length + remainingLength);
  bytes.set(header(type, remainingLength));
  bytes.fill(0x61, bytes.length - remainingLength);
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Feeds `bytes` in chunks cut at `cuts`; returns the first error and how many chunks it took. */
function scanInChunks(scanner: FrameScanner, bytes: Uint8Array, cuts: number[]): Error | null {
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    const err = scanner.scan(bytes.subarray(from, cut));
    if (err !== null) return err;
    from = cut;
  }
  return null;
}

describe("FrameScanner", () => {
  // Real packets as MQTT.js's encoder writes them, so the scanner is checked against the wire.
  const stream = concat(
    mqttPacket.generate({ cmd: "connect", protocolId: "MQTT", protocolVersion: 4, clean: true, clientId: "dabc", keepalive: 30, username: "dabc", password: Buffer.from("hp1.x") }),
    mqttPacket.generate({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "hp/v1/dabc/down", qos: 1 }] }),
    mqttPacket.generate({ cmd: "publish", topic: "hp/v1/dabc/up", payload: Buffer.alloc(300, 0x62), qos: 1, messageId: 2, retain: false, dup: false }),
    mqttPacket.generate({ cmd: "pingreq" }),
    mqttPacket.generate({ cmd: "puback", messageId: 7 }),
    mqttPacket.generate({ cmd: "publish", topic: "hp/v1/dabc/up", payload: Buffer.alloc(20_000, 0x63), qos: 0, retain: false, dup: false }),
    mqttPacket.generate({ cmd: "disconnect" }),
  );

  it("accepts a stream of real packets split at every byte boundary", () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      expect(scanInChunks(new FrameScanner(65_536), stream, [cut])).toBeNull();
    }
  });

  it("accepts a stream of real packets fed one byte at a time", () => {
    const scanner = new FrameScanner(65_536);
    for (const byte of stream) expect(scanner.scan(Uint8Array.of(byte))).toBeNull();
  });

  it("finds an oversized packet after real packets wherever the chunk boundary falls around its header", () => {
    const withBig = concat(stream, packet(70_000));
    for (let cut = stream.length - 300; cut <= stream.length + 6; cut++) {
      expect(scanInChunks(new FrameScanner(65_536), withBig, [cut])).toBeInstanceOf(PacketTooLarge);
    }
  });

  it.each([
    ["1-byte", 127, 2],
    ["2-byte", 128, 3],
    ["2-byte", 16_383, 3],
    ["3-byte", 16_384, 4],
    ["3-byte", 2_097_151, 4],
    ["4-byte", 2_097_152, 5],
  ])("reads a %s remaining length of %i (header %i bytes)", (_label, remaining, headerBytes) => {
    expect(header(0x30, remaining)).toHaveLength(headerBytes);
    const total = headerBytes + remaining;
    expect(new FrameScanner(total).scan(packet(remaining))).toBeNull();
    const err = new FrameScanner(total - 1).scan(Uint8Array.from(header(0x30, remaining)));
    expect(err).toBeInstanceOf(PacketTooLarge);
    expect(err).toMatchObject({ announcedBytes: total, maxBytes: total - 1 });
  });

  it.each([
    ["exactly the limit", 0, null],
    ["one byte over the limit", 1, PacketTooLarge],
  ])("handles a packet of %s", (_label, over, expected) => {
    const limit = 2048;
    const remaining = limit - 3 + over; // 1 type byte + 2 length bytes
    const result = new FrameScanner(limit).scan(packet(remaining));
    if (expected === null) expect(result).toBeNull();
    else expect(result).toBeInstanceOf(expected);
  });

  it("refuses an oversized packet from its header alone, before any body arrives", () => {
    const err = new FrameScanner(1024).scan(Uint8Array.from(header(0x30, 10_000_000)));
    expect(err).toBeInstanceOf(PacketTooLarge);
  });

  it("keeps scanning correctly after many packets at the limit", () => {
    const scanner = new FrameScanner(100);
    const p = packet(98);
    for (let i = 0; i < 50; i++) expect(scanner.scan(p)).toBeNull();
    expect(scanner.scan(packet(99))).toBeInstanceOf(PacketTooLarge);
  });

  it("accepts packets with no body (remaining length 0) back to back", () => {
    const scanner = new FrameScanner(2);
    expect(scanner.scan(Uint8Array.of(0xc0, 0x00, 0xd0, 0x00, 0xe0, 0x00))).toBeNull();
    expect(scanner.scan(Uint8Array.of(0x30, 0x01, 0x61))).toBeInstanceOf(PacketTooLarge);
  });

  it.each([
    ["in one chunk", [] as number[]],
    ["one byte at a time", [1, 2, 3, 4, 5]],
  ])("refuses a remaining length of 5 bytes %s", (_label, cuts) => {
    const bytes = Uint8Array.of(0x30, 0x80, 0x80, 0x80, 0x80, 0x01);
    const err = scanInChunks(new FrameScanner(16 * 1024 * 1024 * 1024), bytes, cuts);
    expect(err).toBeInstanceOf(Error);
    expect(err).not.toBeInstanceOf(PacketTooLarge);
    expect(err?.message).toMatch(/more than 4 bytes/);
  });

  it("accepts the largest 4-byte remaining length when the limit allows it", () => {
    const bytes = Uint8Array.of(0x30, 0xff, 0xff, 0xff, 0x7f);
    expect(new FrameScanner(268_435_455 + 5).scan(bytes)).toBeNull();
    expect(new FrameScanner(268_435_455 + 4).scan(bytes)).toBeInstanceOf(PacketTooLarge);
  });
});

describe("guardFrames on a TCP socket read the way Aedes reads it", () => {
  const LIMIT = 2048;
  const valid = concat(
    mqttPacket.generate({ cmd: "connect", protocolId: "MQTT", protocolVersion: 4, clean: true, clientId: "dabc", keepalive: 30, username: "dabc", password: Buffer.from("hp1.x") }),
    mqttPacket.generate({ cmd: "publish", topic: "hp/v1/dabc/up", payload: Buffer.alloc(1500, 0x62), qos: 1, messageId: 2, retain: false, dup: false }),
    mqttPacket.generate({ cmd: "pingreq" }),
  );

  let server: Server | null = null;
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    await new Promise<void>((r) => (server === null ? r() : server.close(() => r())));
    server = null;
  });

  interface Accepted {
    readonly socket: Socket;
    /** Everything read() returned, in order. */
    readonly received: Buffer[];
    readonly violations: Error[];
    readonly ended: Promise<void>;
    readonly closed: Promise<void>;
  }

  /** A server whose one connection is guarded, then read as Aedes does ('readable', read()). */
  async function connect(): Promise<{ client: Socket; accepted: Promise<Accepted> }> {
    let accept!: (a: Accepted) => void;
    const accepted = new Promise<Accepted>((r) => (accept = r));
    server = createServer((socket) => {
      sockets.push(socket);
      const received: Buffer[] = [];
      const violations: Error[] = [];
      guardFrames(socket, LIMIT, (err, s) => {
        expect(s).toBe(socket);
        violations.push(err);
      });
      socket.on("readable", () => {
        const chunk = socket.read() as Buffer | null;
        if (chunk !== null) received.push(chunk);
      });
      socket.on("error", () => {});
      const ended = new Promise<void>((r) => socket.once("end", () => r()));
      const closed = new Promise<void>((r) => socket.once("close", () => r()));
      accept({ socket, received, violations, ended, closed });
    });
    await new Promise<void>((r) => server!.listen(0, "127.0.0.1", () => r()));
    const client = createConnection((server.address() as AddressInfo).port, "127.0.0.1");
    client.on("error", () => {});
    sockets.push(client);
    await new Promise<void>((r) => client.once("connect", () => r()));
    return { client, accepted };
  }

  it("hands every byte of packets within the limit to the reader, then the end of the stream", async () => {
    const { client, accepted } = await connect();
    // One byte at a time as well as whole: the guard must not lose or reorder anything.
    client.write(valid.subarray(0, 1));
    client.write(valid.subarray(1, 7));
    client.end(valid.subarray(7));
    const a = await accepted;
    await a.ended;
    expect(Buffer.concat(a.received)).toEqual(Buffer.from(valid));
    expect(a.violations).toEqual([]);
  });

  it("destroys the connection at a header announcing more than the limit, and no byte of that packet is ever readable", async () => {
    const { client, accepted } = await connect();
    const header = Uint8Array.of(0x30, 0xa0, 0x1f); // PUBLISH, remaining length 4000
    client.write(concat(valid, header, new Uint8Array(64).fill(0x61)));
    const a = await accepted;
    await a.closed;
    expect(a.socket.destroyed).toBe(true);
    expect(a.violations).toHaveLength(1);
    expect(a.violations[0]).toBeInstanceOf(PacketTooLarge);
    expect(a.violations[0]).toMatchObject({ announcedBytes: 4003, maxBytes: LIMIT });
    // The chunk that carried the header is dropped whole: what was read is a prefix of the
    // valid packets, never anything from the oversized one.
    const got = Buffer.concat(a.received);
    expect(got.length).toBeLessThanOrEqual(valid.length);
    expect(got).toEqual(Buffer.from(valid.subarray(0, got.length)));
    await new Promise<void>((r) => (client.destroyed ? r() : client.once("close", () => r())));
  });

  it("destroys the connection at a remaining length of more than 4 bytes", async () => {
    const { client, accepted } = await connect();
    client.write(Uint8Array.of(0x30, 0x80, 0x80, 0x80, 0x80, 0x01));
    const a = await accepted;
    await a.closed;
    expect(a.violations).toHaveLength(1);
    expect(a.violations[0]).not.toBeInstanceOf(PacketTooLarge);
    expect(a.violations[0]?.message).toMatch(/more than 4 bytes/);
    expect(a.received).toEqual([]);
  });
});

describe("FrameScanner packet rules", () => {
  const sub = (id: number) => mqttPacket.generate({ cmd: "subscribe", messageId: id, subscriptions: [{ topic: "hp/v1/dabc/down", qos: 1 }] });
  const unsub = (id: number) => mqttPacket.generate({ cmd: "unsubscribe", messageId: id, unsubscriptions: ["hp/v1/dabc/down"] });

  it("allows 10 SUBSCRIBE and UNSUBSCRIBE packets on one connection and refuses the 11th, even in one chunk", () => {
    const ten = concat(...Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? sub(i + 1) : unsub(i + 1))));
    const scanner = new FrameScanner(65_536);
    expect(scanner.scan(ten)).toBeNull();
    const err = scanner.scan(sub(11));
    expect(err).toBeInstanceOf(PacketRefused);
    expect(err?.message).toContain("more than 10 SUBSCRIBE and UNSUBSCRIBE packets");
    expect(new FrameScanner(65_536).scan(concat(ten, sub(11)))).toBeInstanceOf(PacketRefused);
  });

  it.each([
    [0, null],
    [1, null],
    [2, "QoS 2 PUBLISH refused"],
  ] as const)("judges a PUBLISH with QoS %i (refused: %s)", (qos, refusal) => {
    const publish = mqttPacket.generate({ cmd: "publish", topic: "hp/v1/dabc/up", payload: Buffer.from("x"), qos, messageId: qos === 0 ? undefined : 5, retain: false, dup: false });
    const err = new FrameScanner(65_536).scan(publish);
    if (refusal === null) expect(err).toBeNull();
    else expect(err?.message).toContain(refusal);
  });

  it("refuses a PUBLISH whose QoS bits say 3 as malformed", () => {
    expect(new FrameScanner(65_536).scan(Uint8Array.of(0x36, 0x00))?.message).toContain("QoS 3");
  });
});
