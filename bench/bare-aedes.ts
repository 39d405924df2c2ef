/**
 * A bare Aedes broker: no authentication, no ACL, no database, no signatures. The bench runs it
 * as its own process to measure what MQTT alone costs on this machine (raw QoS 1 round trips),
 * one of the three inputs of the bound (docs/performance.md §The bound).
 *
 *   node dist/bench/bare-aedes.mjs      → prints {"event":"listening","port":N}
 *
 * Same Aedes version as the broker, same loopback TCP, TCP_NODELAY like broker/server.ts.
 */
import { Aedes } from "aedes";
import { createServer, type AddressInfo } from "node:net";

const aedes = await Aedes.createBroker({ id: "bare", heartbeatInterval: 3_600_000 });
const server = createServer((socket) => {
  socket.setNoDelay(true);
  aedes.handle(socket);
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ event: "listening", port: (server.address() as AddressInfo).port }) + "\n");
});
const stop = () => {
  server.close();
  aedes.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
