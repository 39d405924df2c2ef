// vitest runs the TypeScript itself; the programs the tests start as processes (the broker of the
// chaos and abuse drivers, the programs test, the simulator) are the compiled ones users run, so
// every test run compiles them first, once (scripts/build.mjs, well under a second).
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    globalSetup: ["scripts/vitest-build.mjs"],
  },
});
