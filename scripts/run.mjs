// Starts a compiled program: `node --enable-source-maps scripts/run.mjs <dir>/<name> [args...]`
// runs dist/<dir>/<name>.mjs with args, in this process. What the npm scripts (`npm start`,
// `npm run sim` ...) call. `npm ci` builds dist/ (the `prepare` script); if a source file changed
// since, or dist/ is missing (`npm ci --ignore-scripts`), the programs are built again first:
// esbuild takes well under a second. Plain JavaScript: node runs it without a loader.
import { pathToFileURL } from "node:url";
import { ENTRIES, buildAll, bundlePath, isStale } from "./build.mjs";

const [entry, ...args] = process.argv.slice(2);
if (entry === undefined || !ENTRIES.includes(`${entry}.ts`)) {
  process.stderr.write(`usage: node scripts/run.mjs <program> [args...]; programs: ${ENTRIES.map((e) => e.replace(/\.ts$/, "")).join(", ")}\n`);
  process.exit(2);
}
if (isStale()) {
  const ms = await buildAll();
  process.stderr.write(`build: sources changed; programs compiled to dist/ in ${Math.round(ms)} ms\n`);
}
const bundle = bundlePath(entry);
// The program reads its flags from process.argv.slice(2) and knows it is the program when
// process.argv[1] is its own file: as if node had been started on it.
process.argv = [process.argv[0], bundle, ...args];
await import(pathToFileURL(bundle).href);
