/**
 * Connects per device are bounded (docs/protocol.md §Connecting, §Limits): a reconnect loop costs
 * the broker a signature check, a token row and a session each time. Only authenticated attempts
 * count, so one device cannot spend another's budget; the budget refills with the broker's clock.
 */
import { afterEach, describe, expect, it } from "vitest";
import { CONNECT_BURST, CONNECT_REFILL_MS } from "../../broker/hooks.ts";
import type { DeviceKey } from "../../device-sim/keyfile.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { rawConnect, tokenFor, type ConnectOutcome } from "../wire.ts";

let broker: TestBroker;
afterEach(async () => {
  await broker?.stop();
});

describe("the connect budget", () => {
  it(`accepts ${CONNECT_BURST} connects of a device at once, answers the next with CONNACK 3, serves other devices, and lets it in again once the budget refills`, async () => {
    let frozenMs = Date.now();
    broker = await startTestBroker({}, undefined, undefined, { clock: () => frozenMs });
    const key = broker.register("terminal");
    const other = broker.register("terminal");
    const connect = async (k: DeviceKey, password = tokenFor(k.deviceId, k.pair, frozenMs)): Promise<ConnectOutcome> => {
      const outcome = await rawConnect(broker.url, { clientId: k.deviceId, username: k.deviceId, password });
      if (outcome.accepted) await outcome.client.endAsync(true);
      return outcome;
    };
    // Attempts that fail authentication spend nothing: someone else's garbage under this id.
    for (let i = 0; i < 30; i++) expect((await connect(key, "hp1.garbage")).accepted).toBe(false);
    for (let i = 0; i < CONNECT_BURST; i++) expect((await connect(key)).accepted, `connect ${i + 1}`).toBe(true);
    expect(await connect(key)).toMatchObject({ accepted: false, code: 3 });
    expect(await connect(key)).toMatchObject({ accepted: false, code: 3 });
    expect((await connect(other)).accepted).toBe(true);
    frozenMs += CONNECT_REFILL_MS;
    expect((await connect(key)).accepted).toBe(true);
    expect(await connect(key)).toMatchObject({ accepted: false, code: 3 });
  });
});
