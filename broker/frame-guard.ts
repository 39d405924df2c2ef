/**
 * A byte limit on MQTT packets, which Aedes does not have.
 *
 * GuardedSocket sits between the TCP socket and Aedes. It follows the MQTT fixed header of
 * each packet (one type byte, then a 1-4 byte "remaining length" varint [MQTT-2.2.3]) as bytes
 * arrive, and destroys the connection the moment a packet announces more than the limit, before
 * any of its body is buffered. Everything else passes through untouched.
 */
import { Duplex } from "node:stream";
import type { Socket } from "node:net";

export class PacketTooLarge extends Error {
  constructor(
    readonly announcedBytes: number,
    readonly maxBytes: number,
  ) {
    super(`packet of ${announcedBytes} bytes exceeds the ${maxBytes}-byte limit`);
  }
}

/** Incremental scanner of MQTT packet boundaries; returns an Error as soon as a rule breaks. */
export class FrameScanner {
  #state: "type" | "length" | "body" = "type";
  #bodyLeft = 0;
  #length = 0;
  #multiplier = 1;
  #lengthBytes = 0;

  constructor(readonly maxBytes: number) {}

  scan(chunk: Uint8Array): Error | null {
    let i = 0;
    while (i < chunk.length) {
      if (this.#state === "body") {
        const take = Math.min(this.#bodyLeft, chunk.length - i);
        i += take;
        this.#bodyLeft -= take;
        if (this.#bodyLeft === 0) this.#state = "type";
      } else if (this.#state === "type") {
        i++;
        this.#state = "length";
        this.#length = 0;
        this.#multiplier = 1;
        this.#lengthBytes = 0;
      } else {
        const byte = chunk[i++]!;
        this.#length += (byte & 0x7f) * this.#multiplier;
        this.#multiplier *= 128;
        this.#lengthBytes++;
        if (byte & 0x80) {
          if (this.#lengthBytes === 4) return new Error("malformed remaining length (more than 4 bytes)"); // [MQTT-2.2.3]
          continue;
        }
        const total = 1 + this.#lengthBytes + this.#length;
        if (total > this.maxBytes) return new PacketTooLarge(total, this.maxBytes);
        this.#bodyLeft = this.#length;
        this.#state = this.#bodyLeft === 0 ? "type" : "body";
      }
    }
    return null;
  }
}

export class GuardedSocket extends Duplex {
  readonly socket: Socket;

  constructor(socket: Socket, maxPacketBytes: number, onViolation: (err: Error) => void) {
    super({ allowHalfOpen: false });
    this.socket = socket;
    const scanner = new FrameScanner(maxPacketBytes);
    socket.on("data", (chunk: Buffer) => {
      const violation = scanner.scan(chunk);
      if (violation !== null) {
        onViolation(violation);
        socket.destroy();
        this.destroy();
        return;
      }
      if (!this.push(chunk)) socket.pause();
    });
    socket.on("end", () => this.push(null));
    socket.on("close", () => this.destroy());
    socket.on("error", (err) => this.destroy(err));
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#send(chunk, callback);
  }

  /** Corked chunks (mqtt-packet writes a PUBLISH as ~6) leave as one write and one TCP segment. */
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.#send(chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk)), callback);
  }

  #send(bytes: Buffer, callback: (err?: Error | null) => void): void {
    if (this.socket.destroyed) return callback(new Error("socket closed"));
    if (this.socket.write(bytes)) callback();
    else this.socket.once("drain", () => callback());
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.socket.end();
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.socket.destroy();
    callback(err);
  }
}
