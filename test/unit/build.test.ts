/** The compiled programs (scripts/build.mjs): what users start runs without a TypeScript loader. */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DIST, ENTRIES, ROOT, bundlePath, rewriteImportMeta } from "../../scripts/build.mjs";

const scripts = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts;

describe("compiled programs", () => {
  it("every npm script a user starts runs a compiled entry through scripts/run.mjs, with no tsx", () => {
    for (const name of ["start", "admin", "sim", "demo", "bench", "test:chaos", "test:abuse", "test:mutations"]) {
      const m = /^node --enable-source-maps scripts\/run\.mjs (\S+)$/.exec(scripts[name] ?? "");
      expect(m, `${name}: ${scripts[name]}`).not.toBeNull();
      expect(ENTRIES).toContain(`${m![1]}.ts`);
    }
    expect(scripts.prepare).toBe("node scripts/build.mjs");
  });

  it("records only real files as a build's inputs, so a start after a build does not build again", () => {
    // The test run built everything first (scripts/vitest-build.mjs); every recorded input must exist.
    const inputs = JSON.parse(readFileSync(join(DIST, "inputs.json"), "utf8")) as Record<string, string[]>;
    expect(Object.keys(inputs)).toContain("pages");
    const missing = Object.values(inputs)
      .flat()
      .filter((f) => !existsSync(join(ROOT, f)));
    expect(missing).toEqual([]);
  });

  it("resolves new URL(literal, import.meta.url) against the module's source file, entry or not", () => {
    const src = 'const ROOT = new URL("..", import.meta.url);';
    for (const isEntry of [true, false]) {
      const out = rewriteImportMeta(src, join(ROOT, "device-sim/broker-process.ts"), isEntry);
      expect(out).toBe('const ROOT = new URL("..", new URL("../../device-sim/broker-process.ts", import.meta.url).href);');
    }
  });

  it("keeps a bare import.meta.url the bundle's in the entry point, and makes it the source file's elsewhere", () => {
    const src = "if (import.meta.url === process.argv[1]) main();";
    expect(rewriteImportMeta(src, join(ROOT, "bench/profile.ts"), true)).toBe(src);
    expect(rewriteImportMeta(src, join(ROOT, "bench/profile.ts"), false)).toBe('if ((new URL("../../bench/profile.ts", import.meta.url).href) === process.argv[1]) main();');
  });

  it("runs only the entry's own main in a bundle that holds another program's module (bench/run bundles bench/profile)", () => {
    // vitest's global setup built dist/ (vitest.config.ts).
    const r = spawnSync(process.execPath, [bundlePath("bench/run.ts"), "--help"], { cwd: ROOT, encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Usage: npm run bench/);
    expect(r.stdout).not.toContain("bench/profile");
  });
});
