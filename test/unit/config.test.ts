import { describe, expect, it } from "vitest";
import { ConfigError, brokerConfig, parseBrokerCli } from "../../src/config.ts";
import { RateLimiter } from "../../src/service/rate-limit.ts";

describe("broker configuration", () => {
  it("fills every option with its documented default and freezes the result", () => {
    const c = brokerConfig({}, {});
    expect(c).toMatchObject({ host: "127.0.0.1", port: 1883, dataDir: "./data", logLevel: "info", maxPacketBytes: 65536, freshnessMs: 120000 });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("refuses new payments past 40 ms of waiting on SQLite and 300 ms on PostgreSQL unless told otherwise", () => {
    expect(brokerConfig({}, {}).busyAfterMs).toBe(40);
    expect(brokerConfig({ database: "postgres://u@h/db" }, {}).busyAfterMs).toBe(300);
    expect(brokerConfig({ database: "postgres://u@h/db", "busy-after-ms": "80" }, {}).busyAfterMs).toBe(80);
    expect(brokerConfig({}, { HANDOFF_BUSY_AFTER_MS: "0" }).busyAfterMs).toBe(0);
    expect(brokerConfig({}, { HANDOFF_BUSY_AFTER_MS: "auto", HANDOFF_DATABASE_URL: "postgres://u@h/db" }).busyAfterMs).toBe(300);
  });

  it("takes a flag over the environment, and the environment over the default", () => {
    expect(brokerConfig({ port: "1" }, { HANDOFF_PORT: "2" }).port).toBe(1);
    expect(brokerConfig({}, { HANDOFF_PORT: "2" }).port).toBe(2);
  });

  it.each([
    [["--port", "70000"], "--port"],
    [["--port", "abc"], "--port"],
    [["--log-level", "loud"], "--log-level"],
    [["--max-packet-bytes", "10"], "--max-packet-bytes"],
    [["--nope"], "Unknown option"],
  ])("refuses %j with a message naming %s", (argv, fragment) => {
    expect(() => parseBrokerCli(argv, {})).toThrow(ConfigError);
    expect(() => parseBrokerCli(argv, {})).toThrow(fragment);
  });
});

describe("RateLimiter", () => {
  it("allows a burst, refuses beyond it, and refills at the sustained rate", () => {
    const r = new RateLimiter(10, 3);
    expect([1, 2, 3, 4].map(() => r.take("d", 0))).toEqual([true, true, true, false]);
    expect(r.take("d", 50)).toBe(false);
    expect(r.take("d", 100)).toBe(true);
    expect(r.take("other", 100)).toBe(true);
  });
});
