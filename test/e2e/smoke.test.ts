import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { startTestBroker, type TestBroker } from "../helpers.ts";

describe("broker round trip", () => {
  let broker: TestBroker;
  beforeEach(async () => {
    broker = await startTestBroker();
  });
  afterEach(async () => {
    await broker.stop();
  });

  it("answers a signed ping with a signed pong", async () => {
    const d = await broker.device(broker.register("terminal"));
    const reply = await d.call("ping", { echo: "hi" });
    expect(reply.type).toBe("pong");
    expect(reply.body.echo).toBe("hi");
  });
});
