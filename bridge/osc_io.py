"""OSC over UDP: the listening socket, datagram decoding, and the reply sender.

The datagram callback only stamps time and posts the raw bytes; decoding (python-osc's OscMessage) happens
on the loop. python-osc reports some malformed input through the *root* logger, so datagrams are
pre-checked here (address, type tags, bundle framing) and garbage never reaches it: a flood of junk costs
one counted /typemoe/error reply (rate-limited by the engine), not a log line each.
Bundles are unpacked and run at once; their time tags are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

from pythonosc import osc_message
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.events import BadDatagram, OscIn

log = logging.getLogger(__name__)

_TAGS = set(",ihfdsbrmtTFN[]")
_BUNDLE = b"#bundle\x00"
_MAX_DEPTH = 4


def _string_end(data: bytes, start: int) -> int:
    """Index after the padded OSC string at `start`, or -1."""
    end = data.find(b"\x00", start)
    return -1 if end < 0 else (end + 4) & ~3


def _check_message(data: bytes) -> str | None:
    """Why `data` is not a message we can decode, or None."""
    idx = _string_end(data, 0)
    if idx < 0:
        return "unterminated address"
    if idx >= len(data):
        return None
    if data[idx : idx + 1] != b",":
        return "no type tag string"
    end = data.find(b"\x00", idx)
    if end < 0:
        return "unterminated type tags"
    bad = set(data[idx:end].decode("latin-1")) - _TAGS
    return f"unsupported type tag(s) {''.join(sorted(bad))!r}" if bad else None


def decode(data: bytes, t: float, depth: int = 0) -> list[OscIn | BadDatagram]:
    """One datagram -> the messages in it, or a single BadDatagram saying why not."""
    if data.startswith(b"/"):
        why = _check_message(data)
        if why is None:
            try:
                msg = osc_message.OscMessage(data)
                return [OscIn(msg.address, tuple(msg.params), t)]
            except (osc_message.ParseError, UnicodeDecodeError, struct.error, IndexError, ValueError) as err:
                why = str(err)
        return [BadDatagram(f"{why} ({len(data)} bytes)", t)]
    if data.startswith(_BUNDLE) and depth < _MAX_DEPTH:
        out: list[OscIn | BadDatagram] = []
        i = len(_BUNDLE) + 8  # time tag
        while i + 4 <= len(data):
            (size,) = struct.unpack(">i", data[i : i + 4])
            if size <= 0 or i + 4 + size > len(data):
                return out + [BadDatagram("bad bundle element size", t)]
            out += decode(data[i + 4 : i + 4 + size], t, depth + 1)
            i += 4 + size
        return out
    return [BadDatagram(f"not OSC ({len(data)} bytes starting {data[:8]!r})", t)]


def encode(address: str, args: tuple) -> bytes:
    """Explicit OSC types: bool is rejected, int -> i, float -> f, str -> s."""
    b = OscMessageBuilder(address)
    for a in args:
        if isinstance(a, bool):
            raise TypeError(f"no OSC type for bool in {address}")
        if isinstance(a, int):
            b.add_arg(a, "i")
        elif isinstance(a, float):
            b.add_arg(a, "f")
        else:
            b.add_arg(str(a), "s")
    return b.build().dgram


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr) -> None:
        self._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("OSC socket error: %s", exc)


async def open_server(
    host: str, port: int, on_datagram: Callable[[bytes], None]
) -> asyncio.DatagramTransport:
    """Bind the OSC input socket (raises OSError with the address when it is taken)."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(on_datagram), local_addr=(host, port)
        )
    except OSError as err:
        raise OSError(
            f"cannot listen for OSC on {host}:{port}: {err.strerror or err} "
            "(another bridge running? use --osc-port)"
        ) from err
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # absorb bursts while the loop is busy
    log.info("OSC in: udp %s:%d", host, port)
    return transport


class Replier:
    """Non-blocking UDP sender for replies; a full socket buffer drops the message and counts it."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.dropped = 0
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        log.info("OSC out: udp %s:%d", host, port)

    def send(self, address: str, args: tuple = ()) -> None:
        try:
            self._sock.sendto(encode(address, args), self.addr)
        except OSError as err:  # buffer full, or nobody listening (ICMP refused): replies are best effort
            self.dropped += 1
            log.debug("OSC reply %s dropped: %s", address, err)

    def close(self) -> None:
        self._sock.close()
