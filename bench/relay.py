"""A bare TCP byte relay: the floor of any proxy hop on this host, as a benchmark baseline.

    python -m bench.relay --port 9200 --upstream-port 9100     # 127.0.0.1:9200 → 127.0.0.1:9100

Each accepted connection gets one connection to the upstream, and bytes are piped both ways as
they arrive: no HTTP parsing, no JSON, asyncio Protocols on uvloop, so a call through it pays only
what every proxy pays (two more socket reads and writes, two more wake-ups of a second process).
`bench.run` calls the fast upstream through it beside the gateway's paths; the gateway's Δp50 beyond
the relay's is what the gateway itself adds. Flow control: when one side's send buffer passes its
high-water mark, reading from the other side pauses until it drains. When either side closes or
ends its stream, the other is closed after its pending bytes are sent.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

HOST = "127.0.0.1"


class _Side(asyncio.Protocol):
    """One socket of a relayed pair; what it reads goes to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCP transport is one, not a subclass

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    # Our own send buffer is full: stop reading what would be written to it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self._close_peer()
        return False  # and close this transport too

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_peer()

    def _close_peer(self) -> None:
        # close() sends what is still buffered first.
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.close()


class _Downstream(_Side):
    """The accepted connection: opens its upstream connection and holds what arrives until it is up.

    uvloop starts reading right after `connection_made`, even when it paused reading there, so the
    first bytes can arrive before the upstream connection exists: they are kept, not dropped.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream
        self._early: list[bytes] = []
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
        else:
            super().data_received(data)

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(_Side, *self.upstream)
        except OSError:
            self.transport.close()
            return
        assert up.transport is not None
        if self.transport.is_closing():
            up.transport.close()
            return
        up.peer, self.peer = self, up
        # Resume first: if the held bytes fill the upstream's send buffer, its pause_writing pauses this
        # side again, and a resume after the write would undo that.
        self.transport.resume_reading()
        if self._early:
            up.transport.writelines(self._early)
            self._early.clear()


async def serve(port: int, upstream_port: int, upstream_host: str = HOST) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Downstream((upstream_host, upstream_port)), HOST, port,
                                      reuse_address=True)  # fmt: skip
    bound = server.sockets[0].getsockname()[1]
    print(f"bench.relay listening on {HOST}:{bound} → {upstream_host}:{upstream_port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--upstream-port", type=int, required=True, help="the upstream's port on 127.0.0.1")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port, args.upstream_port))
    else:
        uvloop.run(serve(args.port, args.upstream_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
