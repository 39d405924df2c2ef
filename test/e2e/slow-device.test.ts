/**
 * A device that stops reading must not stall anyone else (Aedes' known weakness without a drain
 * timeout): the broker drops it after drainTimeoutMs and keeps answering the others.
 */
import type { Socket } from "node:net";
import { afterEach, expect, it } from "vitest";
import { sealEnvelope } from "../../src/protocol/envelope.ts";
import { Signer } from "../../src/crypto/ed25519.ts";
import { upTopic, downTopic } from "../../src/protocol/topics.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";
import { connectAs, subscribeGranted } from "../wire.ts";

let broker: TestBroker;
afterEach(async () => {
  await broker?.stop();
});

it("drops a phone that stops reading, while another device keeps being answered", async () => {
  broker = await startTestBroker({ drainTimeoutMs: 1000, deviceRatePerSec: 100_000, deviceBurst: 100_000 });
  const stuckKey = broker.register("phone");
  const healthy = await broker.device(broker.register("terminal"));
  const stuck = await connectAs(broker.url, stuckKey);
  expect(await subscribeGranted(stuck, downTopic(stuckKey.deviceId))).toBe(1);
  // The stuck device stops reading its socket, then asks for thousands of large answers.
  (stuck.stream as Socket).pause();
  const signer = new Signer(stuckKey.pair);
  const echo = "x".repeat(256);
  for (let i = 0; i < 15_000; i++) {
    const { bytes } = sealEnvelope({ v: 1, type: "ping", id: `p${i}`, from: stuckKey.deviceId, to: "broker", ts: Date.now(), body: { echo } }, (b) => signer.sign(b));
    stuck.publish(upTopic(stuckKey.deviceId), Buffer.from(bytes), { qos: 0 });
  }
  // A paused socket never reads the FIN, so the broker's side is what tells it was dropped.
  const clients = (broker.aedes as unknown as { clients: Record<string, unknown> }).clients;
  const dropped = expect.poll(() => clients[stuckKey.deviceId], { timeout: 30_000, interval: 200 }).toBeUndefined();
  // Meanwhile the healthy device is answered, again and again.
  for (let i = 0; i < 20; i++) expect((await healthy.call("ping", { echo: String(i) }, 10_000)).body.echo).toBe(String(i));
  await dropped;
  expect((await healthy.call("ping", {})).type).toBe("pong");
}, 60_000);
