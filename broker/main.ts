/**
 * `npm start`: runs the broker until SIGINT or SIGTERM; SIGHUP reloads the TLS certificate files.
 * Exit codes: 0 after a clean stop, 1 when it could not start (the message says why), 2 for bad flags.
 */
import { ConfigError, brokerHelp, masterKeyFromEnv, parseBrokerCli } from "../src/config.ts";
import { CertificateError } from "./certs.ts";
import { DataDirError } from "./data-dir.ts";
import { createLogger } from "./log.ts";
import { startBroker } from "./server.ts";

async function main(): Promise<number> {
  let cli;
  try {
    cli = parseBrokerCli(process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (cli.help) {
    process.stdout.write(brokerHelp() + "\n");
    return 0;
  }
  const log = createLogger(cli.config.logLevel);
  let broker;
  // The broker stops by itself only when the disk fails it: then the exit code says so.
  let onFatal: () => void = () => {};
  const fatal = new Promise<number>((resolve) => (onFatal = () => resolve(1)));
  try {
    broker = await startBroker(cli.config, { log, masterKeyEnv: masterKeyFromEnv(), onFatal: () => onFatal() });
  } catch (err) {
    const message = err instanceof DataDirError || err instanceof CertificateError || (err as { code?: string }).code === "EADDRINUSE" ? (err as Error).message : String((err as Error).stack ?? err);
    log.fatal({ err: message }, "broker could not start");
    log.flush?.();
    process.stderr.write(`broker could not start: ${(err as Error).message}\n`);
    return 1;
  }
  const stopped = new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, "stopping: no new connections, finishing in-flight messages");
      broker.close().then(
        () => resolve(0),
        (err: unknown) => {
          log.error({ err: String(err) }, "unclean stop");
          resolve(1);
        },
      );
    };
    process.once("SIGINT", () => stop("SIGINT"));
    // Certificate rotation: new TLS handshakes use the re-read files, open connections keep theirs.
    process.on("SIGHUP", () => {
      log.info({ signal: "SIGHUP" }, "reloading the TLS certificate files");
      broker.reloadCertificates();
    });
    process.once("SIGTERM", () => stop("SIGTERM"));
  });
  return Promise.race([stopped, fatal]);
}

main().then(
  (code) => {
    // Give pino's transport a moment to flush its last lines.
    setTimeout(() => process.exit(code), 50);
  },
  (err: unknown) => {
    process.stderr.write(`${String((err as Error).stack ?? err)}\n`);
    process.exit(1);
  },
);
