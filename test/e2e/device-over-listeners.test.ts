/**
 * The Device client against the broker's own TLS and WebSocket listeners (test/e2e/listeners.test.ts
 * drives them with raw MQTT.js; test/e2e/client-transports.test.ts drives the client against
 * front ends of its own): trusting the broker's self-signed certificate by CA or by its pinned
 * SHA-256 fingerprint, a device connects, is answered, and reconnects with a fresh token.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Device } from "../../device-sim/device.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";

let broker: TestBroker;
beforeAll(async () => {
  broker = await startTestBroker({ tlsPort: 0, wsPort: 0, wssPort: 0 });
});
afterAll(async () => {
  await broker.stop();
});

describe("the Device client on the broker's listeners", () => {
  it.each([
    ["mqtts", "tls", "ca"],
    ["mqtts", "tls", "fingerprint"],
    ["ws", "ws", "none"],
    ["wss", "wss", "ca"],
    ["wss", "wss", "fingerprint"],
  ] as const)("connects over %s (the %s listener, trust by %s), is answered, and reconnects with a fresh token", async (_scheme, listener, trust) => {
    const url = broker.listeners[listener]!.url;
    const cert = broker.certificate!;
    const d = new Device({
      url,
      key: broker.register("terminal"),
      brokerPublicKey: broker.publicKey,
      reconnect: false,
      ...(trust === "ca" ? { ca: cert.pem } : trust === "fingerprint" ? { fingerprint256: cert.fingerprint256 } : {}),
    });
    try {
      await d.connect();
      expect((await d.call("ping", { echo: listener })).body.echo).toBe(listener);
      await d.close();
      await d.connect();
      expect((await d.call("ping", {})).type).toBe("pong");
    } finally {
      await d.close();
    }
  });
});
