// vitest runs the TypeScript itself; the programs the tests start as processes (the broker of the
// chaos and abuse drivers, the programs test, the simulator) are the compiled ones users run, so
// every test run compiles them first, once (scripts/build.mjs, well under a second). Then one
// PostgreSQL and one Redis for the whole run (test/services-setup.ts, about a second), which
// tests reach through test/services.ts.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    globalSetup: ["scripts/vitest-build.mjs", "test/services-setup.ts"],
  },
});
