// Smoke test for the socket.io peer, speaking raw engine.io v4 / socket.io v5
// packets over a plain WebSocket (the same thing a load generator would do).
//
// By default it starts its own redis-server (free loopback port, no persistence)
// and two instances of server.js, then tears everything down.
//   node smoke.js            # ~3 s
//   node smoke.js --ping     # also waits for the server's heartbeat (~50 s)
//   node smoke.js --urls ws://127.0.0.1:3001,ws://127.0.0.1:3002   # use running servers
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { parseArgs } from "node:util";
import WebSocket from "ws";

const { values: args } = parseArgs({
  options: { ping: { type: "boolean" }, urls: { type: "string" } },
});
const here = path.dirname(fileURLToPath(import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];
let failures = 0;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures++;
};

async function freePort() {
  const srv = createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const { port } = srv.address();
  srv.close();
  return port;
}

function start(cmd, argv, readyRe) {
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    const onData = (d) => {
      out += d;
      if (readyRe.test(out)) resolve(child);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`${cmd} exited ${code}: ${out}`)));
    setTimeout(() => reject(new Error(`${cmd} not ready: ${out}`)), 10000);
  });
}

// One raw client. Records every frame; answers pings unless told not to.
class Client {
  constructor(name, base, { answerPings = true } = {}) {
    this.name = name;
    this.frames = [];
    this.msgs = [];
    this.pings = [];
    this.waiters = [];
    this.ws = new WebSocket(`${base}/socket.io/?EIO=4&transport=websocket`, {
      perMessageDeflate: false,
    });
    this.closed = new Promise((r) => this.ws.on("close", (code) => r({ code, at: Date.now() })));
    this.ws.on("message", (data, isBinary) => {
      const f = isBinary ? data : data.toString();
      this.frames.push(f);
      if (f === "2") {
        this.pings.push(Date.now());
        if (answerPings) this.ws.send("3");
      } else if (f.startsWith('42["msg"')) {
        this.msgs.push(JSON.parse(f.slice(2))[1]);
      }
      this.waiters = this.waiters.filter((w) => !(w.pred(f) && (w.resolve(f), true)));
    });
  }
  next(pred, ms = 5000) {
    const hit = this.frames.find(pred);
    if (hit !== undefined) return Promise.resolve(hit);
    return new Promise((resolve, reject) => {
      this.waiters.push({ pred, resolve });
      setTimeout(() => reject(new Error(`${this.name}: timeout`)), ms);
    });
  }
  send(s) {
    this.ws.send(s);
  }
  async handshake() {
    this.open = await this.next((f) => f.startsWith("0"));
    this.openAt = Date.now();
    this.send("40");
    this.connect = await this.next((f) => f.startsWith("40"));
  }
  async join(room) {
    this.send(`421${JSON.stringify(["join", room])}`);
    this.joinAck = await this.next((f) => f.startsWith("431"));
  }
}

async function main() {
  let urls;
  if (args.urls) {
    urls = args.urls.split(",");
  } else {
    const rport = await freePort();
    await start(
      "redis-server",
      ["--port", String(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "/tmp"],
      /Ready to accept connections/,
    );
    const redis = `redis://127.0.0.1:${rport}`;
    const [p1, p2] = [await freePort(), await freePort()];
    await start("node", [path.join(here, "server.js"), "--port", String(p1), "--redis", redis], /listening on/);
    await start("node", [path.join(here, "server.js"), "--port", String(p2), "--redis", redis], /listening on/);
    urls = [`ws://127.0.0.1:${p1}`, `ws://127.0.0.1:${p2}`];
    console.log(`redis ${redis}, servers ${urls.join(" ")}`);
  }

  const a = new Client("a@s1/lobby", urls[0]);
  const b = new Client("b@s2/lobby", urls[1]);
  const c = new Client("c@s2/other", urls[1]);
  const d = new Client("d@s1/other", urls[0]);
  const all = [a, b, c, d];
  await Promise.all(all.map((x) => x.handshake()));

  console.log(`open packet : ${a.open}`);
  console.log(`connect ack : ${a.connect}`);
  const open = JSON.parse(a.open.slice(1));
  check(/^0\{/.test(a.open) && typeof open.sid === "string", "server sends open packet 0{sid,...} first");
  check(Array.isArray(open.upgrades) && open.upgrades.length === 0, "open.upgrades is [] on a websocket-only connection");
  check(/^40\{"sid":"[^"]+"\}$/.test(a.connect), 'client "40" is answered with 40{"sid":...}');

  await Promise.all([a.join("lobby"), b.join("lobby"), c.join("other"), d.join("other")]);
  console.log(`join ack    : ${a.joinAck}`);
  check(a.joinAck === "431[]", 'join with ack id 1 is answered with "431[]"');
  // A join without an ack id works too (no reply); give it a moment to land.
  const e = new Client("e@s2/lobby", urls[1]);
  await e.handshake();
  e.send('42["join","lobby"]');
  await sleep(200);
  check(!e.frames.some((f) => f.startsWith("43")), "join without ack id gets no reply");

  a.send(`42${JSON.stringify(["msg", { room: "lobby", text: "hello from s1" }])}`);
  const want = '42["msg","hello from s1"]';
  const got = await Promise.allSettled([a, b, e].map((x) => x.next((f) => f === want)));
  check(got[0].status === "fulfilled", `sender a (s1) gets its own message: ${want}`);
  check(got[1].status === "fulfilled", "member b on the other server (s2) gets it");
  check(got[2].status === "fulfilled", "member e (s2, joined without ack) gets it");

  b.send('42["msg",{"room":"lobby","text":"reply from s2"}]');
  const got2 = await Promise.allSettled([a, b].map((x) => x.next((f) => f === '42["msg","reply from s2"]')));
  check(got2.every((r) => r.status === "fulfilled"), "reverse direction s2 -> s1 works");

  // 100 in-order messages s1 -> s2
  for (let i = 0; i < 100; i++) a.send(`42${JSON.stringify(["msg", { room: "lobby", text: `n${i}` }])}`);
  await b.next((f) => f === '42["msg","n99"]');
  const seq = b.msgs.filter((m) => /^n\d+$/.test(m));
  check(seq.length === 100 && seq.every((m, i) => m === `n${i}`), "100 messages arrive once each, in order, across servers");

  await sleep(300);
  check(c.msgs.length === 0 && d.msgs.length === 0, "members of another room (both servers) got nothing");

  if (args.ping) {
    const mute = new Client("mute@s1", urls[0], { answerPings: false });
    await mute.handshake();
    console.log(`pingInterval=${open.pingInterval} pingTimeout=${open.pingTimeout}; waiting for server pings...`);
    await a.next((f) => f === "2", open.pingInterval + 5000);
    check(true, `server pings first: "2" came ${a.pings[0] - a.openAt} ms after the open packet (client answered "3")`);
    const closed = await Promise.race([mute.closed, sleep(open.pingInterval + open.pingTimeout + 5000).then(() => null)]);
    check(closed !== null, `client that never answers "3" is dropped ${closed && closed.at - mute.openAt} ms after open (ws close code ${closed && closed.code})`);
    console.log(`pings seen by answering client: ${a.pings.map((t) => t - a.openAt).join(", ")} ms after open`);
    check(a.ws.readyState === WebSocket.OPEN, "client that answers pings stays connected");
    check(a.pings.length >= 1 && a.frames.every((f) => f !== "1"), "no close packet sent to the answering client");
  }

  for (const x of all.concat(e)) x.ws.close();
}

try {
  await main();
} catch (err) {
  console.error(err);
  failures++;
} finally {
  for (const ch of children) ch.kill("SIGTERM");
}
console.log(failures ? `FAILED (${failures})` : "all smoke checks passed");
process.exit(failures ? 1 : 0);
