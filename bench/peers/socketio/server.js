// socket.io room chat, scaled across processes with @socket.io/redis-adapter.
// Peer system for the Roomcast benchmark (see ../README.md for the wire protocol).
//
//   node server.js --port 3001 --redis redis://127.0.0.1:6420
//   PORT=3001 REDIS_URL=redis://127.0.0.1:6420 node server.js
import { parseArgs } from "node:util";
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    redis: { type: "string" },
    host: { type: "string" },
  },
});
const port = Number(args.port ?? process.env.PORT ?? 3000);
const host = args.host ?? process.env.HOST ?? "127.0.0.1";
const redisUrl = args.redis ?? process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

// As in the adapter's docs: one client for publishing, a duplicate for subscribing.
const pubClient = createClient({ url: redisUrl });
const subClient = pubClient.duplicate();
pubClient.on("error", (err) => console.error("redis pub error:", err.message));
subClient.on("error", (err) => console.error("redis sub error:", err.message));
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = createServer();
const io = new Server(httpServer, {
  adapter: createAdapter(pubClient, subClient),
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 1e6, // socket.io default (1 MB)
  serveClient: false,
  cors: { origin: "*" },
});

io.on("connection", (socket) => {
  // Optional ack: a client that sends `421["join","r"]` gets `431[]` back once joined.
  socket.on("join", (room, ack) => {
    if (typeof room === "string") socket.join(room);
    if (typeof ack === "function") ack();
  });
  socket.on("msg", (data) => {
    if (!data || typeof data.room !== "string") return;
    // Everyone in the room, including the sender, on every server.
    io.to(data.room).emit("msg", data.text);
  });
});

httpServer.listen(port, host, () => {
  console.log(`listening on ${port}`);
});

const shutdown = () => {
  io.close();
  Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
