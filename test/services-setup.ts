/**
 * vitest global setup (vitest.config.ts): one PostgreSQL and one Redis for the whole test run,
 * from Debian's packages, in temporary dirs on free ports (device-sim/services.ts), stopped and
 * removed when the run ends. Tests reach them through test/services.ts: freshPostgresDatabase()
 * gives each caller its own empty database on the shared server; redisUrl() the shared Redis.
 *
 * Started eagerly, side by side: about 1.2 s here (initdb is most of it), beside a run of
 * minutes. When a binary is missing the run still goes on: every test that asks for a server
 * fails with the message that says what to install, and the tests that need none pass.
 */
import type { TestProject } from "vitest/node";
import { startPostgres, startRedis, type PostgresService, type RedisService } from "../device-sim/services.ts";

declare module "vitest" {
  export interface ProvidedContext {
    /** The shared PostgreSQL server's URL (database "postgres"), or null if it could not start. */
    pgUrl: string | null;
    /** The shared Redis server's URL, or null if it could not start. */
    redisUrl: string | null;
    /** Why a server could not start (what to install), or null. */
    servicesError: string | null;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const t0 = performance.now();
  const [pg, redis] = await Promise.allSettled([startPostgres(), startRedis()]);
  const errors = [pg, redis].filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
  const pgService: PostgresService | null = pg.status === "fulfilled" ? pg.value : null;
  const redisService: RedisService | null = redis.status === "fulfilled" ? redis.value : null;
  project.provide("pgUrl", pgService?.url ?? null);
  project.provide("redisUrl", redisService?.url ?? null);
  project.provide("servicesError", errors.length === 0 ? null : errors.join("\n"));
  if (errors.length === 0) process.stderr.write(`services: PostgreSQL ${pgService!.url} and Redis ${redisService!.url} started in ${Math.round(performance.now() - t0)} ms\n`);
  else process.stderr.write(`services: not started; the tests that need them will fail:\n  ${errors.join("\n  ")}\n`);
  return async () => {
    await Promise.all([pgService?.stop(), redisService?.stop()]);
  };
}
