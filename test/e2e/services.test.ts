/**
 * The PostgreSQL and Redis the tests and `npm run cluster` start (device-sim/services.ts): the
 * shared servers of the run hand out databases no other test sees, Redis answers a real client,
 * and a server's stop() leaves nothing behind.
 */
import { existsSync } from "node:fs";
import { Redis } from "ioredis";
import pg from "pg";
import { acceptsTcp } from "../helpers.ts";
import { afterEach, describe, expect, it } from "vitest";
import { createDatabase, findPostgresBin, findRedisServer, startPostgres, startRedis, type PostgresService, type RedisService } from "../../device-sim/services.ts";
import { freshPostgresDatabase, redisUrl } from "../services.ts";

async function withClient<T>(url: string, run: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await run(client);
  } finally {
    await client.end();
  }
}

const userTables = (c: pg.Client) => c.query<{ table_name: string }>("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name").then((r) => r.rows.map((row) => row.table_name));


describe("the shared PostgreSQL of the test run", () => {
  it("hands out a fresh database that is empty and that another fresh database does not see", async () => {
    const a = await freshPostgresDatabase();
    const b = await freshPostgresDatabase();
    expect(a).not.toBe(b);
    expect(await withClient(a, userTables)).toEqual([]);
    expect(await withClient(b, userTables)).toEqual([]);

    await withClient(a, async (c) => {
      await c.query("CREATE TABLE payments (id text PRIMARY KEY, amount_minor bigint NOT NULL)");
      await c.query("INSERT INTO payments VALUES ('p1', 1250)");
    });
    // A new connection to a sees the committed row; b still has no table at all.
    expect(await withClient(a, (c) => c.query("SELECT id, amount_minor FROM payments").then((r) => r.rows))).toEqual([{ id: "p1", amount_minor: "1250" }]);
    expect(await withClient(b, userTables)).toEqual([]);
    await expect(withClient(b, (c) => c.query("SELECT * FROM payments"))).rejects.toThrow(/relation "payments" does not exist/);
  });

  it("runs with fsync on, listening on 127.0.0.1 only", async () => {
    const url = await freshPostgresDatabase();
    const settings = await withClient(url, (c) => c.query<{ name: string; setting: string }>("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'listen_addresses', 'synchronous_commit') ORDER BY name").then((r) => r.rows));
    expect(settings).toEqual([
      { name: "fsync", setting: "on" },
      { name: "listen_addresses", setting: "127.0.0.1" },
      { name: "synchronous_commit", setting: "on" },
    ]);
  });

  it("refuses a database name that is not a plain identifier", async () => {
    const url = (await freshPostgresDatabase()).replace(/\/[^/]+$/, "/postgres");
    await expect(createDatabase(url, 'x"; DROP DATABASE postgres; --')).rejects.toThrow(/lower-case letters, digits and _/);
    await expect(createDatabase(url, "Upper")).rejects.toThrow(/lower-case letters/);
  });
});

describe("the shared Redis of the test run", () => {
  it("answers PING and keeps a key, through ioredis (the client mqemitter-redis uses)", async () => {
    const redis = new Redis(redisUrl(), { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await redis.connect();
      expect(await redis.ping()).toBe("PONG");
      const key = `services-test:${process.pid}:${Date.now()}`;
      await redis.set(key, "kept", "EX", 60);
      expect(await redis.get(key)).toBe("kept");
    } finally {
      redis.disconnect();
    }
  });
});

describe("a server of its own", () => {
  const started: (PostgresService | RedisService)[] = [];
  afterEach(async () => {
    await Promise.all(started.splice(0).map((s) => s.stop()));
  });

  it("PostgreSQL: stop() ends the server and removes its temporary dir", async () => {
    const server = await startPostgres();
    started.push(server);
    expect(existsSync(`${server.dir}/data/PG_VERSION`)).toBe(true);
    expect(await withClient(server.url, (c) => c.query("SELECT 1 AS one").then((r) => r.rows))).toEqual([{ one: 1 }]);
    await server.stop();
    expect(existsSync(server.dir)).toBe(false);
    expect(await acceptsTcp(server.port)).toBe(false);
    await server.stop(); // a second stop is harmless
  }, 60_000);

  it("Redis: stop() ends the server and removes its temporary dir", async () => {
    const server = await startRedis();
    started.push(server);
    expect(existsSync(server.dir)).toBe(true);
    const redis = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
    expect(await redis.ping()).toBe("PONG");
    redis.disconnect();
    await server.stop();
    expect(existsSync(server.dir)).toBe(false);
    expect(await acceptsTcp(server.port)).toBe(false);
  }, 60_000);

  it("says what to install when the binaries are missing", () => {
    expect(() => findPostgresBin("/nonexistent/postgresql")).toThrow(/apt-get install postgresql redis-server/);
    expect(() => findRedisServer("/nonexistent/redis-server")).toThrow(/apt-get install postgresql redis-server/);
  });
});
