"""Smoke test for the FastAPI peer (run it with the venv's python).

By default it starts its own redis-server (free loopback port, no persistence)
and two instances via run.sh, then tears everything down.

    /tmp/peers-venv/bin/python smoke.py            # ~3 s
    /tmp/peers-venv/bin/python smoke.py --ping     # also watches uvicorn's WS pings (~45 s)
    /tmp/peers-venv/bin/python smoke.py --urls ws://127.0.0.1:8001,ws://127.0.0.1:8002
"""

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

HERE = Path(__file__).resolve().parent
failures = 0


def check(ok: bool, what: str) -> None:
    global failures
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        failures += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class Member:
    def __init__(self, name: str, base: str, room: str):
        self.name, self.url = name, f"{base}/ws/{room}"
        self.got: list[str] = []
        self.new = asyncio.Event()

    async def open(self) -> "Member":
        self.ws = await connect(self.url, compression=None)
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for m in self.ws:
            self.got.append(m)
            self.new.set()

    async def wait_for(self, text: str, timeout: float = 5.0) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while text not in self.got:
                    self.new.clear()
                    await self.new.wait()
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def raw_ping_watch(base: str, answer: bool, limit: float) -> list[tuple[float, str]]:
    """A sans-I/O client that logs control frames, and answers pings only if told to."""
    uri = parse_uri(f"{base}/ws/pingroom")
    proto = ClientProtocol(uri)
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    proto.send_request(proto.connect())
    writer.write(b"".join(proto.data_to_send()))
    t0, seen = time.monotonic(), []
    try:
        async with asyncio.timeout(limit):
            while True:
                data = await reader.read(65536)
                if not data:
                    seen.append((time.monotonic() - t0, "tcp eof"))
                    break
                proto.receive_data(data)
                for ev in proto.events_received():
                    if getattr(ev, "opcode", None) in (Opcode.PING, Opcode.CLOSE):
                        seen.append((time.monotonic() - t0, ev.opcode.name))
                out = proto.data_to_send()  # includes the automatic PONG
                if answer:
                    writer.write(b"".join(out))
    except TimeoutError:
        pass
    writer.close()
    return seen


async def main(args) -> None:
    procs = []
    try:
        if args.urls:
            urls = args.urls.split(",")
        else:
            rport = free_port()
            procs.append(await asyncio.create_subprocess_exec(
                "redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", "/tmp",
                stdout=asyncio.subprocess.DEVNULL))
            await wait_port(rport)
            redis_url = f"redis://127.0.0.1:{rport}"
            env = dict(os.environ, VENV=os.environ.get("VENV", sys.prefix))
            ports = [free_port(), free_port()]
            for p in ports:
                procs.append(await asyncio.create_subprocess_exec(
                    str(HERE / "run.sh"), str(p), redis_url, env=env))
            for p in ports:
                await wait_port(p)
            urls = [f"ws://127.0.0.1:{p}" for p in ports]
            print(f"redis {redis_url}, servers {' '.join(urls)}", flush=True)

        a = await Member("a@s1/lobby", urls[0], "lobby").open()
        b = await Member("b@s2/lobby", urls[1], "lobby").open()
        c = await Member("c@s2/other", urls[1], "other").open()
        d = await Member("d@s1/other", urls[0], "other").open()
        check(a.ws.response.headers.get("Sec-WebSocket-Extensions") is None,
              "no permessage-deflate negotiated (client offered none)")

        await a.ws.send("hello from s1")
        check(await a.wait_for("hello from s1"), "sender a (s1) gets its own message back, raw text")
        check(await b.wait_for("hello from s1"), "member b on the other server (s2) gets it")

        odd = '{"room":"x","text":"json-looking"} héllo ✓ \u0000 end'
        await b.ws.send(odd)
        check(await a.wait_for(odd) and await b.wait_for(odd),
              "reverse direction s2 -> s1 works; text forwarded byte-for-byte (json, unicode, NUL)")

        for i in range(100):
            await a.ws.send(f"n{i}")
        await b.wait_for("n99")
        seq = [m for m in b.got if m.startswith("n") and m[1:].isdigit()]
        check(seq == [f"n{i}" for i in range(100)], "100 messages arrive once each, in order, across servers")

        await asyncio.sleep(0.3)
        check(not c.got and not d.got, "members of another room (both servers) got nothing")

        # A member that leaves no longer counts; the room keeps working.
        await b.close()
        await asyncio.sleep(0.1)
        await a.ws.send("after b left")
        check(await a.wait_for("after b left"), "room keeps working after a member disconnects")

        if args.ping:
            print("watching WebSocket control frames for 45 s (uvicorn default ping 20 s, timeout 20 s)...",
                  flush=True)
            good, mute = await asyncio.gather(raw_ping_watch(urls[0], True, 45),
                                              raw_ping_watch(urls[0], False, 45))
            print(f"answering client saw: {[(round(t, 1), k) for t, k in good]}")
            print(f"mute client saw     : {[(round(t, 1), k) for t, k in mute]}")
            check(any(k == "PING" for _, k in good) and not any(k in ("CLOSE", "tcp eof") for _, k in good),
                  "server sends WS ping frames; a client that pongs stays connected")
            check(any(k in ("CLOSE", "tcp eof") for _, k in mute),
                  "a client that never pongs is dropped")

        for m in (a, c, d):
            await m.close()
    except Exception as e:  # report, then clean up
        check(False, f"exception: {e!r}")
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            await p.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ping", action="store_true")
    ap.add_argument("--urls")
    asyncio.run(main(ap.parse_args()))
    print(f"FAILED ({failures})" if failures else "all smoke checks passed")
    sys.exit(1 if failures else 0)
