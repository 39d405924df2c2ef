/** The broker's logger: pino JSON, or pretty lines when stdout is a terminal. */
import pino, { type Logger } from "pino";

export function createLogger(level: string, pretty: boolean = process.stdout.isTTY === true): Logger {
  if (pretty) {
    return pino({ level, base: undefined, transport: { target: "pino-pretty", options: { colorize: true, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname" } } });
  }
  return pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime });
}
