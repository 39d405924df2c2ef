// vitest global setup (vitest.config.ts): compiles the programs before any test starts one.
// Always, not only when stale: a test run then proves exactly what the sources compile to.
import { ENTRIES, PAGE_ENTRIES, buildAll } from "./build.mjs";

export default async function setup() {
  const ms = await buildAll();
  process.stderr.write(`build: ${ENTRIES.length} programs and ${PAGE_ENTRIES.length} pages compiled to dist/ in ${Math.round(ms)} ms\n`);
}
