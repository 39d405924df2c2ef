/**
 * The shared PostgreSQL and Redis of a test run (started by test/services-setup.ts, vitest's
 * global setup), for test files that run side by side.
 */
import { randomBytes } from "node:crypto";
import { inject } from "vitest";
import { createDatabase } from "../device-sim/services.ts";

function provided(key: "pgUrl" | "redisUrl"): string {
  const url = inject(key);
  if (url === null || url === undefined) {
    throw new Error(`no shared ${key === "pgUrl" ? "PostgreSQL" : "Redis"} server in this test run: ${inject("servicesError") ?? "test/services-setup.ts did not run (is it in vitest.config.ts globalSetup?)"}`);
  }
  return url;
}

/**
 * A new, empty database on the shared PostgreSQL server, with a random name (t_<24 hex>): no
 * other test, here or in a file running beside this one, sees it. Its URL. It is dropped with
 * the server at the end of the run.
 */
export async function freshPostgresDatabase(): Promise<string> {
  return createDatabase(provided("pgUrl"), `t_${randomBytes(12).toString("hex")}`);
}

/**
 * The shared Redis server's URL. Keys can be kept apart by prefix, but Redis pub/sub channels are
 * global to a server (SELECT does not separate them): a test whose brokers talk over pub/sub on
 * channels another file may use too should start its own server (startRedis in
 * device-sim/services.ts, about 0.15 s) instead.
 */
export function redisUrl(): string {
  return provided("redisUrl");
}
