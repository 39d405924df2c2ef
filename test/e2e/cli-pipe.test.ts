/** The command-line programs stop quietly when the reader of their output goes away (`| head`). */
import { expect, it } from "vitest";
import { spawnProgram } from "../helpers.ts";

it("exits 0 without an EPIPE stack trace when its stdout is closed before it writes", async () => {
  const child = spawnProgram("broker/admin", ["--help"]);
  // The reading end goes before the program has started, so its first write meets a closed pipe.
  child.stdout.destroy();
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  expect(stderr).not.toContain("EPIPE");
  expect(code).toBe(0);
}, 30_000);
