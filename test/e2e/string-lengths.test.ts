/**
 * docs/protocol.md §Conventions, end to end: a `ping` echo is limited to 256 characters, and a
 * character is a Unicode code point. 256 emoji (512 UTF-16 units) come back in the pong; 257
 * are refused with invalid_body. test/unit/string-lengths.test.ts covers every other field.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Device } from "../../device-sim/device.ts";
import { startTestBroker, type TestBroker } from "../helpers.ts";

const EMOJI = "\u{1F600}";

describe("a ping's echo over MQTT, counted in code points", () => {
  let broker: TestBroker;
  let d: Device;

  beforeAll(async () => {
    broker = await startTestBroker();
    d = await broker.device(broker.register("terminal"));
  });
  afterAll(async () => {
    await broker.stop();
  });

  it("echoes 256 characters outside the BMP and refuses 257 with invalid_body", async () => {
    const pong = await d.request("ping", { echo: EMOJI.repeat(256) });
    expect({ type: pong.type, echo: pong.body.echo }).toEqual({ type: "pong", echo: EMOJI.repeat(256) });
    const refused = await d.request("ping", { echo: EMOJI.repeat(257) });
    expect({ type: refused.type, code: refused.body.code }).toEqual({ type: "error", code: "invalid_body" });
    expect(refused.body.detail).toMatch(/echo/);
  });
});
