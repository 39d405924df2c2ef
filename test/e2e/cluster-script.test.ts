/**
 * `npm run cluster` (device-sim/cluster.ts): its command line, the nodes' data dirs with one
 * shared master key and broker identity, the broker flags it passes, and the real run: the nodes
 * start on the shared PostgreSQL and Redis, the demo it prints plays across them, and on stop
 * everything is stopped and every temporary dir removed.
 */
import { existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadBrokerIdentity, loadKeyring } from "../../broker/data-dir.ts";
import { CLUSTER_FLAGS, SHARED_KEY_FILES, clusterArgs, nodeArgs, parseClusterArgs, prepareNodeDirs, runCluster, type ClusterOptions } from "../../device-sim/cluster.ts";
import { UsageError } from "../../src/cli/args.ts";
import { parseBrokerCli } from "../../src/config.ts";
import { toBase64 } from "../../src/crypto/encoding.ts";
import { runDemo } from "../../device-sim/demo.ts";
import { runProgram, tempDir, acceptsTcp } from "../helpers.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});


describe("the command line", () => {
  it("defaults to two nodes on free ports, no WebSocket, nodes' warnings shown", () => {
    expect(parseClusterArgs([])).toEqual({ nodes: 2, port: 0, wsPort: null, logLevel: "warn" });
    expect(parseClusterArgs(["--nodes", "3", "--port", "18830", "--ws-port", "18080", "--log-level", "info"])).toEqual({ nodes: 3, port: 18830, wsPort: 18080, logLevel: "info" });
    expect(parseClusterArgs(["--help"])).toBeNull();
  });

  it.each([
    [["--nodes", "0"], /--nodes must be a whole number from 1 to 16/],
    [["--nodes", "17"], /--nodes must be/],
    [["--nodes", "2.5"], /--nodes must be/],
    [["--port", "65535", "--nodes", "2"], /goes past port 65535/],
    [["--port", "18830", "--ws-port", "18831", "--nodes", "2"], /overlap/],
    [["--log-level", "loud"], /--log-level must be one of/],
    [["--database", "x"], /Unknown option/],
    [["extra"], /unexpected argument extra/],
  ])("refuses %j", (argv, message) => {
    expect(() => parseClusterArgs(argv)).toThrow(UsageError);
    expect(() => parseClusterArgs(argv)).toThrow(message);
  });

  it("npm run cluster -- --help explains itself; a bad flag exits 2", async () => {
    const help = await runProgram("device-sim/cluster", ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: npm run cluster -- \[options\]/);
    expect(help.stdout).toContain("--nodes N");
    expect(help.stdout).toContain("apt-get install postgresql redis-server");
    const bad = await runProgram("device-sim/cluster", ["--nodes", "many"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--nodes must be a whole number");
  });
});

describe("the nodes' data dirs", () => {
  it("hold one master key and one broker identity, as private as the broker makes them", () => {
    const root = tempDir("hp-cluster-test-");
    dirs.push(root);
    const { dirs: nodeDirs, brokerPublicKey } = prepareNodeDirs(root, 3);
    expect(nodeDirs).toEqual([1, 2, 3].map((i) => join(root, `node-${i}`)));
    for (const file of SHARED_KEY_FILES) {
      const first = readFileSync(join(nodeDirs[0]!, file));
      for (const d of nodeDirs) {
        expect(readFileSync(join(d, file)).equals(first)).toBe(true);
        expect(statSync(join(d, file)).mode & 0o777).toBe(file === "broker.pub" ? 0o644 : 0o600);
      }
    }
    for (const d of nodeDirs) {
      expect(statSync(d).mode & 0o777).toBe(0o700);
      // What each broker will load: the same identity and the same keyring.
      expect(toBase64(loadBrokerIdentity(d).publicKey)).toBe(brokerPublicKey);
      const { keyring, source } = loadKeyring(d, undefined);
      expect(source).toBe("file");
      expect(keyring.toFileJson()).toBe(loadKeyring(nodeDirs[0]!, undefined).keyring.toFileJson());
    }
  });
});

describe("the broker command line of a node", () => {
  const o: ClusterOptions = { nodes: 3, port: 18830, wsPort: 18080, logLevel: "warn" };
  const shared = clusterArgs("postgres://postgres@127.0.0.1:5999/handoff", "redis://127.0.0.1:6999");

  it("points the node at the shared database and Redis through CLUSTER_FLAGS", () => {
    const args = nodeArgs(o, 2, "/tmp/x/node-2", shared);
    expect(args[args.indexOf(CLUSTER_FLAGS.database) + 1]).toBe("postgres://postgres@127.0.0.1:5999/handoff");
    expect(args[args.indexOf(CLUSTER_FLAGS.cluster) + 1]).toBe("redis://127.0.0.1:6999");
    expect(args[args.indexOf(CLUSTER_FLAGS.nodeId) + 1]).toBe("node-2");
    const config = parseBrokerCli(args, {}).config;
    expect([config.database, config.cluster, config.nodeId]).toEqual(["postgres://postgres@127.0.0.1:5999/handoff", "redis://127.0.0.1:6999", "node-2"]);
  });

  it("gives each node its own data dir and ports, in flags the broker takes", () => {
    const configs = [1, 2, 3].map((i) => parseBrokerCli(nodeArgs(o, i, `/tmp/x/node-${i}`, []), {}).config);
    expect(configs.map((c) => [c.dataDir, c.port, c.wsPort])).toEqual([
      ["/tmp/x/node-1", 18830, 18080],
      ["/tmp/x/node-2", 18831, 18081],
      ["/tmp/x/node-3", 18832, 18082],
    ]);
    expect(configs.every((c) => c.host === "127.0.0.1" && c.tlsPort === "off" && c.wssPort === "off" && c.metricsPort === "off")).toBe(true);
    // Logging at info at least: "broker listening" is how the cluster knows a node is up.
    expect(configs[0]!.logLevel).toBe("info");
    expect(parseBrokerCli(nodeArgs({ ...o, logLevel: "debug" }, 1, "/d", []), {}).config.logLevel).toBe("debug");
    const free = parseBrokerCli(nodeArgs({ ...o, port: 0, wsPort: null }, 3, "/d", []), {}).config;
    expect([free.port, free.wsPort]).toEqual([0, "off"]);
  });
});

describe("a run", () => {
  it("starts PostgreSQL, Redis and the nodes, prints their URLs and a demo that plays across them, and on stop removes every temporary dir", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const stop = new AbortController();
    let nodes: { dataDir: string; listening: Record<string, unknown> }[] = [];
    let demo: Promise<{ code: number; lines: string[] }> = Promise.resolve({ code: -1, lines: [] });
    const code = await runCluster(["--nodes", "2", "--ws-port", "0"], {
      out: (l) => {
        out.push(l);
        // The line it tells the user to try, run as they would (in this process), then stop.
        const tryLine = /^try {9}npm run demo -- (.*)$/.exec(l);
        if (tryLine !== null) {
          const lines: string[] = [];
          demo = runDemo(["--json", ...tryLine[1]!.split(" ")], { out: (x) => lines.push(x), err: (x) => lines.push(x) })
            .then((c) => ({ code: c, lines }))
            .finally(() => stop.abort());
        }
      },
      err: (l) => err.push(l),
      stop: stop.signal,
      onListening: (n) => {
        nodes = [...n];
      },
    });
    const text = out.join("\n");
    expect(code, err.join("\n")).toBe(0);
    expect(nodes).toHaveLength(2);
    // One broker identity across the nodes, each in its own data dir.
    expect(new Set(nodes.map((n) => n.listening.brokerPublicKey)).size).toBe(1);
    expect(new Set(nodes.map((n) => n.dataDir)).size).toBe(2);
    const mqtt = nodes.map((n) => (n.listening.listeners as Record<string, string>).tcp!);
    const ws = nodes.map((n) => (n.listening.listeners as Record<string, string>).ws!);
    expect(text).toMatch(/^PostgreSQL {2}postgres:\/\/postgres@127\.0\.0\.1:\d+\/handoff$/m);
    expect(text).toMatch(/^Redis {7}redis:\/\/127\.0\.0\.1:\d+$/m);
    for (const [i, url] of mqtt.entries()) expect(text).toContain(`node ${i + 1}      ${url}`);
    for (const url of ws) expect(text).toContain(`pages: ${url.replace(/^ws/, "http")}/terminal`);
    expect(text).toContain(`npm run demo -- --url ${mqtt.join(",")} --data-dir ${nodes[0]!.dataDir} --database postgres://`);
    // The demo, registering its devices in the shared database, played through to the end.
    const played = await demo;
    const summary = JSON.parse(played.lines.at(-1) ?? "{}") as { ok?: boolean };
    expect(played.code, played.lines.slice(-5).join("\n")).toBe(0);
    expect(summary.ok).toBe(true);

    // Everything is gone: the nodes' ports, PostgreSQL's and Redis's, and their dirs.
    const pgDir = /initdb in (\S+)/.exec(err.join("\n"))?.[1];
    expect(pgDir).toBeDefined();
    for (const dir of [dirname(nodes[0]!.dataDir), pgDir!]) expect(existsSync(dir)).toBe(false);
    for (const url of [...mqtt, ...ws, /^PostgreSQL {2}(\S+)/m.exec(text)![1]!, /^Redis {7}(\S+)/m.exec(text)![1]!]) {
      expect(await acceptsTcp(Number(new URL(url).port)), url).toBe(false);
    }
  }, 120_000);

  it("when a node cannot start, says why, stops the rest and exits 1", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCluster(["--nodes", "2"], { out: (l) => out.push(l), err: (l) => err.push(l) }, { clusterArgs: () => ["--no-such-flag", "1"] });
    expect(code).toBe(1);
    expect(err.join("\n")).toMatch(/cluster: node \d: broker exited \(2\) before it listened: Unknown option '--no-such-flag'/);
    expect(out).toEqual([]);
    const pgDir = /initdb in (\S+)/.exec(err.join("\n"))![1]!;
    const clusterDir = /data dirs in (\S+),/.exec(err.join("\n"))![1]!;
    expect(existsSync(pgDir)).toBe(false);
    expect(existsSync(clusterDir)).toBe(false);
  }, 120_000);
});
