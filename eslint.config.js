// Lint: typescript-eslint's recommended rules, plus the rule that keeps src/core pure.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["node_modules/", "data/", "coverage/", "dist/", "artifacts/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: "readonly", Buffer: "readonly", console: "readonly", setTimeout: "readonly", clearTimeout: "readonly", setInterval: "readonly", clearInterval: "readonly", setImmediate: "readonly", NodeJS: "readonly", TextEncoder: "readonly", TextDecoder: "readonly", URL: "readonly" } },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-non-null-assertion": "off",
    },
  },
  {
    files: ["src/core/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: ["../store/*", "../service/*", "../crypto/*", "**/broker/*", "better-sqlite3", "pino", "aedes", "mqtt", "node:*"] }],
      "no-restricted-properties": ["error", { object: "Date", property: "now", message: "the core takes time as an argument" }, { object: "Math", property: "random", message: "the core takes randomness as an argument" }],
    },
  },
  {
    // What the browser pages bundle (scripts/build.mjs PAGE_ENTRIES): the device protocol and what
    // it stands on. A Node module here would break the pages' build, or worse, pull in a polyfill.
    files: ["web/**/*.ts", "src/device/client.ts", "src/device/emitter.ts", "src/device/browser*.ts", "src/protocol/**/*.ts", "src/crypto/encoding.ts", "src/crypto/ids.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: [{ group: ["node:*"], message: "this module runs in the browser too: take what differs through the DevicePlatform adapter (src/device/client.ts)" }] }],
    },
  },
);
