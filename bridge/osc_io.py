"""OSC over UDP: the listening socket, datagram decoding, and the reply sender.

The datagram callback only stamps time and posts the raw bytes; decoding happens on the loop, here, with a
parser of our own that bounds everything an attacker controls: the datagram size (`MAX_DATAGRAM`), the
nesting of arrays in a type tag (`MAX_ARRAY_DEPTH`, parsed without recursion), the type tags themselves
(only those OSC 1.0/1.1 defines), the bundle nesting (`MAX_BUNDLE_DEPTH`) and the messages read from one
datagram (`MAX_MESSAGES`). Anything else becomes one BadDatagram whose reason is at most `MAX_REASON`
characters: it is what /typemoe/error replies and what the log shows. Bundle time tags are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

from pythonosc.osc_message_builder import OscMessageBuilder

from typemoe.bridge.events import BadDatagram, OscIn

log = logging.getLogger(__name__)

MAX_DATAGRAM = 8192  # bytes; a /typemoe message is under 100
MAX_ARRAY_DEPTH = 4  # "[[[[" at most; no /typemoe address takes an array at all
MAX_BUNDLE_DEPTH = 4
MAX_MESSAGES = 64  # messages read from one datagram (bundles included); the rest is one BadDatagram
MAX_REASON = 200  # characters of a bad message's description

_BUNDLE = b"#bundle\x00"
_FIXED = {"i": (4, ">i"), "f": (4, ">f"), "h": (8, ">q"), "d": (8, ">d"), "t": (8, ">Q"), "r": (4, ">I")}
_FIXED |= {"c": (4, ">I"), "m": (4, ">I")}
_CONST = {"T": True, "F": False, "N": None, "I": float("inf")}


class _Bad(ValueError):
    pass


def cut(text: str, limit: int = MAX_REASON) -> str:
    """`text` shortened to `limit` characters, saying how much was cut."""
    return text if len(text) <= limit else f"{text[: limit - 24]}... ({len(text) - limit + 24} more chars)"


def _string(data: bytes, start: int, what: str) -> tuple[str, int]:
    end = data.find(b"\x00", start)
    if end < 0:
        raise _Bad(f"unterminated {what}")
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Bad(f"{what} is not UTF-8") from err
    return text, (end + 4) & ~3


def _message(data: bytes) -> OscIn | str:
    """One OSC message -> OscIn (with t=0), or the reason it is not one."""
    try:
        address, i = _string(data, 0, "address")
        if i >= len(data):
            return OscIn(address, (), 0.0)
        if data[i : i + 1] != b",":
            raise _Bad("no type tag string")
        tags, i = _string(data, i, "type tags")
        stack: list[list] = [[]]
        for tag in tags[1:]:
            if tag in _FIXED:
                size, fmt = _FIXED[tag]
                if i + size > len(data):
                    raise _Bad(f"arguments end early (tag {tag!r})")
                (value,) = struct.unpack_from(fmt, data, i)
                stack[-1].append(value)
                i += size
            elif tag in "sS":
                value, i = _string(data, i, "string argument")
                stack[-1].append(value)
            elif tag == "b":
                if i + 4 > len(data):
                    raise _Bad("blob size missing")
                (n,) = struct.unpack_from(">i", data, i)
                if n < 0 or i + 4 + n > len(data):
                    raise _Bad(f"blob size {n} does not fit")
                stack[-1].append(bytes(data[i + 4 : i + 4 + n]))
                i += 4 + ((n + 3) & ~3)
            elif tag in _CONST:
                stack[-1].append(_CONST[tag])
            elif tag == "[":
                if len(stack) > MAX_ARRAY_DEPTH:
                    raise _Bad(f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
                stack.append([])
            elif tag == "]":
                if len(stack) == 1:
                    raise _Bad("']' without '['")
                inner = tuple(stack.pop())
                stack[-1].append(inner)
            else:
                raise _Bad(f"unsupported type tag {tag!r}")
        if len(stack) != 1:
            raise _Bad("'[' without ']'")
        return OscIn(address, tuple(stack[0]), 0.0)
    except (_Bad, struct.error) as err:
        return str(err)


def decode(data: bytes, t: float) -> list[OscIn | BadDatagram]:
    """One datagram -> the messages in it (bundles unpacked, at most MAX_MESSAGES), plus a BadDatagram for
    each part that is not OSC. Never raises, whatever `data` holds."""
    if len(data) > MAX_DATAGRAM:
        return [BadDatagram(f"datagram of {len(data)} bytes (at most {MAX_DATAGRAM})", t)]
    out: list[OscIn | BadDatagram] = []
    todo = [(data, 0)]  # (bytes, bundle depth): iterative, so no input can exhaust the stack
    n_read = 0
    while todo:
        part, depth = todo.pop()
        if n_read >= MAX_MESSAGES:
            out.append(BadDatagram(f"more than {MAX_MESSAGES} messages in one datagram; the rest ignored", t))
            break
        if part.startswith(b"/"):
            msg = _message(part)
            n_read += 1
            if isinstance(msg, OscIn):
                out.append(OscIn(msg.address, msg.args, t))
            else:
                out.append(BadDatagram(cut(f"{msg} ({len(part)} bytes)"), t))
        elif part.startswith(_BUNDLE) and depth < MAX_BUNDLE_DEPTH:
            elements, i = [], len(_BUNDLE) + 8  # time tag
            while i + 4 <= len(part):
                (size,) = struct.unpack_from(">i", part, i)
                if size <= 0 or i + 4 + size > len(part):
                    elements.append(None)
                    break
                elements.append(part[i + 4 : i + 4 + size])
                i += 4 + size
            for el in reversed(elements):  # popped in order
                todo.append((el, depth + 1) if el is not None else (b"", -1))
        elif depth == -1:
            out.append(BadDatagram("bad bundle element size", t))
        elif part.startswith(_BUNDLE):
            out.append(BadDatagram(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}", t))
        else:
            out.append(BadDatagram(cut(f"not OSC ({len(part)} bytes starting {part[:8]!r})"), t))
    return out


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        # Absorb bursts while the loop is busy: a datagram costs ~1 KB of buffer on loopback, so 1 MB overflowed
        # under a 3,000-message knob burst and the kernel dropped what came after it (a ping). The kernel caps
        # the request at net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    log.info("OSC in: udp %s:%d", host, port)
    if not is_loopback(host):
        log.warning(
            "OSC in listens on %s, not on loopback: anyone who can reach this machine on that network can "
            "drive the bridge (play notes, change settings). Use --osc-host 127.0.0.1 unless you need this.",
            host,
        )
    return transport


class Replier:
    """Non-blocking UDP sender for replies; a full socket buffer drops the message and counts it."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.dropped = 0
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        if is_loopback(host):  # replies to this machine: the socket is not reachable from the network
            self._sock.bind(("::1" if ":" in host else "127.0.0.1", 0))
        self._sock.setblocking(False)
        log.info("OSC out: udp %s:%d", host, port)

    def send(self, address: str, args: tuple = ()) -> None:
        try:
            self._sock.sendto(encode(address, args), self.addr)
        except OSError as err:  # buffer full, or nobody listening (ICMP refused): replies are best effort
            self.dropped += 1
            log.debug("OSC reply %s dropped: %s", address, cut(str(err)))

    def close(self) -> None:
        self._sock.close()
