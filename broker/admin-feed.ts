/**
 * A running broker learns of admin commands (device revoke, key rotation) from the admin_events
 * table, which the admin tool writes (docs/operations.md §Devices).
 */
import type { Logger } from "pino";
import { errorSummary } from "../src/service/inbox.ts";
import type { Db } from "../src/store/db.ts";
import { AdminEventFeed } from "../src/store/devices.ts";
import { Every } from "./every.ts";

export interface AdminFeedOptions {
  readonly db: Db;
  readonly log: Logger;
  /** An admin rotated or removed a master key version. */
  readonly onKeysChanged: () => void;
  readonly onDeviceRevoked: (deviceId: string) => void;
  readonly everyMs?: number;
}

export class AdminFeed {
  readonly #o: AdminFeedOptions;
  readonly #feed: AdminEventFeed;
  #seq: number;
  readonly #every: Every;

  constructor(options: AdminFeedOptions) {
    this.#o = options;
    this.#feed = new AdminEventFeed(options.db);
    // Only what happens from now on: a revocation before the start already refuses the CONNECT.
    this.#seq = this.#feed.lastSeq();
    this.#every = new Every(options.everyMs ?? 200, () => this.poll());
  }

  start(): void {
    this.#every.start();
  }

  stop(): void {
    this.#every.stop();
  }

  /** Acts on every event since the last poll. */
  poll(): void {
    try {
      for (const ev of this.#feed.since(this.#seq)) {
        this.#seq = ev.seq;
        if (ev.kind === "keys_changed") this.#o.onKeysChanged();
        if (ev.kind === "device_revoked" && ev.deviceId !== null) this.#o.onDeviceRevoked(ev.deviceId);
      }
    } catch (err) {
      this.#o.log.error({ err: errorSummary(err) }, "reading admin events failed");
    }
  }
}
