"""api.ws's protocol on a fake transport, its frames read back by the websockets library's client."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from api.ws import SEND_NOWAIT, StreamProtocol


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_send_nowait_frames_every_length_and_refuses_while_writing_is_paused() -> None:
    texts = ["a" * 10, "b" * 300, "c" * 70_000, "é"]
    results: list[bool] = []

    async def main() -> bytes:
        done = asyncio.get_running_loop().create_future()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            send_nowait = scope["extensions"][SEND_NOWAIT]
            results.extend(send_nowait(t) for t in texts[:3])
            proto.pause_writing()  # as the transport does when a client stops reading
            results.append(send_nowait("never sent"))
            proto.resume_writing()
            await send({"type": "websocket.send", "text": texts[3]})  # through the fast path of send()
            await send({"type": "websocket.close", "code": 1000})
            done.set_result(None)

        config = Config(app=app, ws=StreamProtocol, ws_per_message_deflate=False, lifespan="off", log_level="warning")
        config.load()
        proto = StreamProtocol(config=config, server_state=ServerState(), app_state={})
        transport = _Transport()
        proto.connection_made(transport)
        client.send_request(client.connect())
        proto.data_received(b"".join(client.data_to_send()))
        await asyncio.wait_for(done, 5)
        return bytes(transport.data)

    client = ClientProtocol(parse_uri("ws://localhost/runs/x/stream"))
    client.receive_data(asyncio.run(main()))
    frames = [e for e in client.events_received() if isinstance(e, Frame)]
    assert results == [True, True, True, False]
    assert [bytes(f.data).decode() for f in frames if f.opcode is Opcode.TEXT] == texts
    assert frames[-1].opcode is Opcode.CLOSE and client.close_rcvd is not None and client.close_rcvd.code == 1000
