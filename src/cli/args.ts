/**
 * Small helpers shared by the command-line tools (admin, simulator): parse flags strictly, turn
 * a usage mistake into one readable line plus a hint, and keep exit codes consistent:
 * 0 ok, 1 the operation failed, 2 the command line was wrong.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { debugEnabled } from "../config.ts";
import { isPostgresUrl } from "../store/pg.ts";

export class UsageError extends Error {}
export class OperationError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;

export function parseFlags<O extends Options>(args: readonly string[], options: O, usage: string) {
  try {
    return parseArgs({ args: [...args], options: { ...options, help: { type: "boolean", short: "h" } }, strict: true, allowPositionals: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage}`);
  }
}

export function requireString(values: Record<string, unknown>, name: string, usage: string): string {
  const v = values[name];
  if (typeof v !== "string" || v.length === 0) throw new UsageError(`--${name} is required\n\n${usage}`);
  return v;
}

/** Runs a CLI main and exits with the documented code; errors print one line, never a stack, unless HANDOFF_DEBUG=1. */
export function runCli(main: (argv: string[]) => Promise<number | void> | number | void): void {
  // A reader that stops early (`| head`) closes the pipe: stop quietly, as other tools do,
  // instead of dying on an unhandled EPIPE with a stack trace.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE") throw err;
    process.exit(process.exitCode ?? 0);
  });
  Promise.resolve()
    .then(() => main(process.argv.slice(2)))
    .then(
      (code) => {
        process.exitCode = code ?? 0;
      },
      (err: unknown) => {
        if (err instanceof UsageError) {
          process.stderr.write(`${err.message}\n`);
          process.exitCode = 2;
        } else if (err instanceof OperationError) {
          process.stderr.write(`error: ${err.message}\n`);
          process.exitCode = 1;
        } else {
          process.stderr.write(`error: ${(err as Error).message ?? String(err)}\n`);
          if (debugEnabled()) process.stderr.write(`${(err as Error).stack ?? ""}\n`);
          process.exitCode = 1;
        }
      },
    );
}

/** --database, else HANDOFF_DATABASE_URL: a PostgreSQL URL, or undefined for the data dir's SQLite file. */
export function databaseUrl(flag: unknown, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const value = typeof flag === "string" ? flag : env.HANDOFF_DATABASE_URL;
  if (value === undefined || value === "") return undefined;
  if (!isPostgresUrl(value)) throw new UsageError(`--database must be a PostgreSQL URL (postgres://user@host:port/database), not "${value}"`);
  return value;
}
