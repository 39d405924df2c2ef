/**
 * A node stops cleanly however Redis behaves (broker/cluster.ts releaseRedis): here Redis stops
 * answering without closing its connections, so the emitter's QUITs wait until the grace period
 * drops the connections. Seen once in CI: each dropped QUIT rejected with "Connection is closed."
 * and nothing caught it, an unhandled rejection, which ends a Node process.
 */
import { spawn } from "node:child_process";
import pino from "pino";
import { expect, it } from "vitest";
import { clusterEmitter, releaseRedis } from "../../broker/cluster.ts";
import { freePort } from "../../device-sim/broker-process.ts";
import { findRedisServer } from "../../device-sim/services.ts";
import { acceptsTcp } from "../helpers.ts";

it("closes its Redis emitter without an unhandled rejection when Redis stops answering", async () => {
  const port = await freePort();
  const redis = spawn(findRedisServer(), ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => void rejections.push(reason);
  try {
    await expect.poll(() => acceptsTcp(port), { timeout: 10_000 }).toBe(true);
    const mq = clusterEmitter({ url: `redis://127.0.0.1:${port}`, nodeId: "stop-test", log: pino({ level: "silent" }) });
    releaseRedis(mq);
    // Connected: a message goes through.
    await new Promise<void>((resolve, reject) => mq.emit({ topic: "hp/test", payload: "x" }, (err?: Error) => (err ? reject(err) : resolve())));
    process.on("unhandledRejection", onRejection);
    redis.kill("SIGSTOP");
    await new Promise<void>((resolve) => mq.close(() => resolve()));
    // The dropped connections end (and what waited on them fails) once Redis's side closes too.
    const exited = new Promise((r) => redis.once("exit", r));
    redis.kill("SIGKILL");
    await exited;
    await new Promise((r) => setTimeout(r, 300));
    expect(rejections).toEqual([]);
  } finally {
    process.off("unhandledRejection", onRejection);
    redis.kill("SIGKILL");
  }
}, 30_000);
