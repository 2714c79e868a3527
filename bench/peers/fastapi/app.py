"""FastAPI + redis.asyncio room chat, scaled across processes with Redis pub/sub.

Peer system for the Roomcast benchmark (see ../README.md for the wire protocol).

    REDIS_URL=redis://127.0.0.1:6420 uvicorn app:app --host 127.0.0.1 --port 8001

* ``/ws/{room}``: each text frame a client sends is PUBLISHed to ``chat:{room}``.
* One subscriber task per process, pattern-subscribed to ``chat:*``, forwards each
  published message unchanged as a text frame to every local member of that room.
"""

import asyncio
import logging
import os
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
CHANNEL_PREFIX = "chat:"

log = logging.getLogger("chat")


class ConnectionManager:
    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.redis: aioredis.Redis | None = None
        self.pubsub = None
        self.rooms: dict[str, set[WebSocket]] = {}

    async def start(self) -> None:
        self.redis = aioredis.from_url(self.redis_url, decode_responses=True)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        # Subscribe before listening: listen() ends at once when nothing is subscribed.
        await self.pubsub.psubscribe(CHANNEL_PREFIX + "*")

    async def stop(self) -> None:
        await self.pubsub.aclose()
        await self.redis.aclose()

    async def connect(self, room: str, websocket: WebSocket) -> None:
        await websocket.accept()
        self.rooms.setdefault(room, set()).add(websocket)

    def disconnect(self, room: str, websocket: WebSocket) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(websocket)
            if not members:
                del self.rooms[room]

    async def publish(self, room: str, text: str) -> None:
        await self.redis.publish(CHANNEL_PREFIX + room, text)

    async def listen(self) -> None:
        """Forward every message from Redis to the local members of its room."""
        async for message in self.pubsub.listen():
            if message["type"] != "pmessage":
                continue
            room = message["channel"][len(CHANNEL_PREFIX):]
            text = message["data"]
            for websocket in list(self.rooms.get(room, ())):
                try:
                    await websocket.send_text(text)
                except Exception:
                    self.disconnect(room, websocket)


manager = ConnectionManager(REDIS_URL)


@asynccontextmanager
async def lifespan(app: FastAPI):
    await manager.start()
    listener = asyncio.create_task(manager.listen())
    yield
    listener.cancel()
    await manager.stop()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws/{room}")
async def websocket_endpoint(websocket: WebSocket, room: str):
    await manager.connect(room, websocket)
    try:
        while True:
            text = await websocket.receive_text()
            await manager.publish(room, text)
    except WebSocketDisconnect:
        pass
    finally:
        manager.disconnect(room, websocket)
