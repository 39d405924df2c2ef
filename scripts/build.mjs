// Compiles every program a user starts to plain JavaScript in dist/, so none of them runs through
// a TypeScript loader (docs/performance.md §Start-up). Plain JavaScript itself: node runs it as is.
//
//   node scripts/build.mjs            build every program (what `npm ci` runs, as `prepare`)
//   node scripts/build.mjs --if-stale build only when a source is newer than its bundle
//
// Each entry point (<dir>/<name>.ts) becomes one ESM bundle, dist/<dir>/<name>.mjs, with a
// source map beside it (run it with node --enable-source-maps and stack traces name .ts lines).
// Packages stay imports of node_modules: better-sqlite3 is a native addon, pino starts worker
// threads from its own files, pino-pretty is loaded by name.
//
// `import.meta.url` in a bundle is the bundle's URL, not the source file's. So that every module
// sees what it sees under a loader, the build rewrites it per module:
//   - `new URL("<literal>", import.meta.url)` resolves against the module's source file, in every
//     module (ROOT = "..", scenarios/demo.json, src/store/checkpoint-worker.mjs);
//   - any other `import.meta.url` in a module that is not the entry point becomes that module's
//     source URL, so its "am I the program?" check (import.meta.url vs process.argv[1]) stays
//     false; in the entry point it stays the bundle's URL, which is process.argv[1];
//   - import.meta.dirname and import.meta.filename are refused (the build fails and says where).
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const DIST = join(ROOT, "dist");
/** What the build read, per entry: the staleness check compares these files' times. */
const INPUTS_FILE = join(DIST, "inputs.json");

/** Every program a user starts, and the processes those programs start. */
export const ENTRIES = [
  "broker/main.ts", // npm start; the broker chaos, abuse and the bench start
  "broker/admin.ts", // npm run admin
  "device-sim/cli.ts", // npm run sim
  "device-sim/demo.ts", // npm run demo
  "device-sim/chaos.ts", // npm run test:chaos
  "device-sim/abuse.ts", // npm run test:abuse
  "device-sim/cluster.ts", // npm run cluster
  "bench/run.ts", // npm run bench
  "bench/load.ts", // the bench's load generator
  "bench/bare-aedes.ts", // the bench's bound: Aedes alone
  "bench/profile.ts", // summarises a CPU profile
  "scripts/mutations.ts", // npm run test:mutations
  "scripts/vectors.ts", // prints the protocol document's test vectors
];

/**
 * The browser pages the broker serves (broker/pages.ts): each web/<name>.ts becomes
 * dist/web/<name>.js, one minified bundle for the browser with everything it imports (MQTT.js's
 * browser build, tweetnacl, zod, the protocol from src/): no CDN, no request but to the broker.
 */
export const PAGE_ENTRIES = ["web/terminal.ts", "web/phone.ts"];
/** Files copied as they are next to the page bundles. */
export const PAGE_FILES = ["web/pages.css"];
export const PAGES_DIR = join(DIST, "web");

/** dist/<dir>/<name>.mjs for "<dir>/<name>.ts" (or "<dir>/<name>"). */
export function bundlePath(entry) {
  return join(DIST, entry.replace(/\.ts$/, "") + ".mjs");
}

const posix = (p) => p.split(sep).join("/");

/** Rewrites `import.meta.url` in one module's source text (see the top of this file). */
export function rewriteImportMeta(source, file, isEntry) {
  if (!source.includes("import.meta.url")) return source;
  // Every bundle is dist/<dir>/<name>.mjs: two levels below the project root.
  const own = `new URL(${JSON.stringify(`../../${posix(relative(ROOT, file))}`)}, import.meta.url).href`;
  const withUrls = source.replace(/new URL\(\s*("[^"\n]*"|'[^'\n]*'|`[^`$\n]*`)\s*,\s*import\.meta\.url\s*\)/g, (_, literal) => `new URL(${literal}, ${own})`);
  if (isEntry) return withUrls;
  return withUrls.replace(/(?<!, )import\.meta\.url(?!\)\.href)/g, `(${own})`);
}

function importMetaPlugin(entryFile) {
  return {
    name: "source-import-meta",
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, (args) => {
        if (args.path.includes(`${sep}node_modules${sep}`)) return undefined;
        const source = readFileSync(args.path, "utf8");
        // These would name dist/<dir>, not the source's folder, and nothing rewrites them: refuse.
        const other = /import\.meta\.(dirname|filename)/.exec(source);
        if (other !== null) return { errors: [{ text: `${posix(relative(ROOT, args.path))}: import.meta.${other[1]} in a compiled program; use new URL("<path>", import.meta.url)` }] };
        return { contents: rewriteImportMeta(source, args.path, args.path === entryFile), loader: "ts" };
      });
    },
  };
}

/** Writes a file whole or not at all: a program starting during a rebuild never reads half of one. */
function writeAtomically(path, contents) {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, contents);
  renameSync(tmp, path);
}

/** Builds every entry; returns how long it took (ms). */
export async function buildAll() {
  const t0 = performance.now();
  // Loaded here, not at the top: a start that finds dist/ fresh (scripts/run.mjs) never loads it.
  const { build } = await import("esbuild");
  const inputs = {};
  await Promise.all(
    ENTRIES.map(async (entry) => {
      const file = join(ROOT, entry);
      if (posix(entry).split("/").length !== 2) throw new Error(`${entry}: entries must be <dir>/<name>.ts`);
      const result = await build({
        entryPoints: [file],
        outfile: bundlePath(entry),
        bundle: true,
        format: "esm",
        platform: "node",
        target: "node20",
        packages: "external",
        sourcemap: "linked",
        sourcesContent: false,
        write: false,
        metafile: true,
        logLevel: "warning",
        plugins: [importMetaPlugin(file)],
      });
      for (const out of result.outputFiles) writeAtomically(out.path, out.contents);
      inputs[entry] = Object.keys(result.metafile.inputs).map((p) => posix(relative(ROOT, join(process.cwd(), p))));
    }),
  );
  const pages = await build({
    entryPoints: PAGE_ENTRIES.map((e) => join(ROOT, e)),
    outdir: PAGES_DIR,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["chrome100", "firefox100", "safari15"],
    minify: true,
    sourcemap: "linked",
    sourcesContent: false,
    write: false,
    metafile: true,
    logLevel: "warning",
  });
  for (const out of pages.outputFiles) writeAtomically(out.path, out.contents);
  for (const f of PAGE_FILES) writeAtomically(join(DIST, f), readFileSync(join(ROOT, f)));
  // Inputs that are not files (tweetnacl's "(disabled):crypto", which the browser build leaves
  // out) would count as deleted sources and make every start rebuild.
  const pageSources = Object.keys(pages.metafile.inputs).filter((p) => !p.startsWith("(disabled):"));
  inputs.pages = [...pageSources.map((p) => posix(relative(ROOT, join(process.cwd(), p)))), ...PAGE_FILES];
  inputs["scripts/build.mjs"] = ["scripts/build.mjs", "package.json"];
  writeAtomically(INPUTS_FILE, JSON.stringify(inputs, null, 1) + "\n");
  return performance.now() - t0;
}

/** Whether any bundle is missing or older than a file it was built from (or than this script). */
export function isStale() {
  let inputs;
  try {
    inputs = JSON.parse(readFileSync(INPUTS_FILE, "utf8"));
  } catch {
    return true;
  }
  const mtime = (p) => {
    try {
      return statSync(p).mtimeMs;
    } catch {
      return null;
    }
  };
  const built = mtime(INPUTS_FILE);
  const outputs = [...ENTRIES.map((e) => [e, bundlePath(e)]), ["pages", join(PAGES_DIR, "terminal.js")]];
  for (const [entry, output] of outputs) {
    const files = inputs[entry];
    const bundle = mtime(output);
    if (files === undefined || bundle === null || built === null) return true;
    for (const f of [...files, ...inputs["scripts/build.mjs"]]) {
      const t = mtime(join(ROOT, f));
      // A source that is gone was removed or renamed: its importer changed too, but rebuild anyway.
      if (t === null || t > bundle || t > built) return true;
    }
  }
  return false;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const ifStale = process.argv.includes("--if-stale");
  if (ifStale && !isStale()) process.exit(0);
  const ms = await buildAll();
  process.stderr.write(`build: ${ENTRIES.length} programs and ${PAGE_ENTRIES.length} pages compiled to dist/ in ${Math.round(ms)} ms\n`);
}
