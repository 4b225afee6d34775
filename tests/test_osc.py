"""The OSC layer against literal datagrams: decoding, bundles, garbage, the address table, encoding."""

from __future__ import annotations

import struct

import pytest

from typemoe.bridge import osc_api
from typemoe.bridge.events import BadDatagram, OscIn
from typemoe.bridge.osc_io import decode, encode

# /typemoe/note ,ii 60 100 written out by hand (OSC 1.0: strings NUL-padded to 4 bytes, big-endian ints)
NOTE = b"/typemoe/note\x00\x00\x00" + b",ii\x00" + struct.pack(">ii", 60, 100)


def test_literal_message_decodes():
    assert decode(NOTE, 1.0) == [OscIn("/typemoe/note", (60, 100), 1.0)]
    assert encode("/typemoe/note", (60, 100)) == NOTE


def test_no_args_float_and_string():
    assert decode(b"/typemoe/ping\x00\x00\x00", 0.0) == [OscIn("/typemoe/ping", (), 0.0)]
    msg = decode(encode("/typemoe/set", ("temperature", 0.5)), 0.0)[0]
    assert msg.args == ("temperature", 0.5)


def test_bundle_unpacks_every_element():
    ping = b"/typemoe/ping\x00\x00\x00"
    bundle = (
        b"#bundle\x00" + bytes(8) + struct.pack(">i", len(NOTE)) + NOTE + struct.pack(">i", len(ping)) + ping
    )
    assert [m.address for m in decode(bundle, 0.0)] == ["/typemoe/note", "/typemoe/ping"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x02",
        b"hello",
        b"/typemoe/note",  # unterminated address
        b"/typemoe/note\x00\x00\x00,ii\x00\x00\x00",  # arguments missing
        b"/typemoe/note\x00\x00\x00,iQ\x00" + bytes(8),  # unknown type tag
        b"/typemoe/note\x00\x00\x00xx\x00\x00",  # no comma
        b"#bundle\x00" + bytes(8) + struct.pack(">i", 400) + NOTE,  # element size lies
    ],
)
def test_garbage_is_a_bad_datagram(data):
    out = decode(data, 0.0)
    assert out and all(isinstance(x, BadDatagram) for x in out)


@pytest.mark.parametrize(
    ("address", "args", "expected"),
    [
        ("/typemoe/note", (60, 100), osc_api.NoteCmd(60, 100, 0)),
        ("/typemoe/note", (60.0, 0.0, 10), osc_api.NoteCmd(60, 0, 9)),  # Pd floats, channel 10
        ("/typemoe/continue", (), osc_api.ContinueCmd(None)),
        ("/typemoe/continue", (2,), osc_api.ContinueCmd(2.0)),
        ("/typemoe/condition", ("A minor", ""), osc_api.ConditionCmd("A minor", "")),
        ("/typemoe/condition", ("A_minor", "free"), osc_api.ConditionCmd("A_minor", "")),
        ("/typemoe/tempo", (96,), osc_api.TempoCmd(96.0)),
        ("/typemoe/set", ("temperature", 0.7), osc_api.SetCmd("temperature", 0.7)),
        ("/typemoe/set", ("seed", -1), osc_api.SetCmd("seed", None)),
        ("/typemoe/set", ("respond_after", 4), osc_api.SetCmd("respond_after_beats", 4.0)),
        ("/typemoe/set", ("analysis_every_note", 1), osc_api.SetCmd("analysis_every_note", True)),
        ("/typemoe/ping", (), osc_api.SimpleCmd("ping")),
    ],
)
def test_address_table(address, args, expected):
    assert osc_api.parse_command(address, args) == expected


@pytest.mark.parametrize(
    ("address", "args"),
    [
        ("/typemoe/note", (60,)),
        ("/typemoe/note", (60.5, 100)),
        ("/typemoe/note", (128, 100)),
        ("/typemoe/note", ("C4", 100)),
        ("/typemoe/note", (True, 100)),
        ("/typemoe/continue", (0.0,)),
        ("/typemoe/tempo", ()),
        ("/typemoe/tempo", (1000.0,)),
        ("/typemoe/set", ("model", "x")),
        ("/typemoe/set", ("temperature",)),
        ("/typemoe/ping", (1,)),
        ("/typemoe/fly", ()),
        ("/other/thing", ()),
    ],
)
def test_bad_messages_raise_with_a_message(address, args):
    with pytest.raises(osc_api.OscInputError) as err:
        osc_api.parse_command(address, args)
    assert str(err.value)


# ---- hostile input -------------------------------------------------------------------------------------


def _pad(b: bytes) -> bytes:
    return b + b"\x00" * (4 - len(b) % 4)


def test_array_nested_1000_deep_is_one_bad_datagram():
    data = _pad(b"/typemoe/note") + _pad(b"," + b"[" * 1000 + b"i" + b"]" * 1000) + struct.pack(">i", 1)
    assert len(data) < 2100
    (out,) = decode(data, 0.0)
    assert isinstance(out, BadDatagram) and "nested deeper" in out.reason


def test_shallow_arrays_parse_and_are_refused_by_the_table():
    data = _pad(b"/typemoe/note") + _pad(b",[ii]i") + struct.pack(">iii", 60, 1, 100)
    (msg,) = decode(data, 0.0)
    assert msg.args == ((60, 1), 100)
    with pytest.raises(osc_api.OscInputError, match="pitch must be a number"):
        osc_api.parse_command(msg.address, msg.args)


def test_oversized_datagram_and_long_reasons_are_cut():
    (big,) = decode(b"/" + b"x" * 60_000, 0.0)
    assert isinstance(big, BadDatagram) and len(big.reason) < 100
    (long_tags,) = decode(_pad(b"/typemoe/note") + _pad(b"," + b"Q" * 3000), 0.0)
    assert len(long_tags.reason) <= 200
    with pytest.raises(osc_api.OscInputError) as err:
        osc_api.parse_command("/typemoe/" + "y" * 5000, ())
    assert len(str(err.value)) < 300


def test_a_bundle_yields_at_most_max_messages():
    from typemoe.bridge.osc_io import MAX_MESSAGES

    ping = b"/typemoe/ping\x00\x00\x00"
    bundle = b"#bundle\x00" + bytes(8) + (struct.pack(">i", len(ping)) + ping) * 300
    out = decode(bundle, 0.0)
    assert sum(isinstance(m, OscIn) for m in out) == MAX_MESSAGES
    assert isinstance(out[-1], BadDatagram)


def test_nested_bundles_are_bounded_without_recursion():
    data = NOTE
    for _ in range(200):
        data = b"#bundle\x00" + bytes(8) + struct.pack(">i", len(data)) + data
    out = decode(data[:8000], 0.0)
    assert all(isinstance(m, BadDatagram) for m in out)


def test_ten_thousand_fuzz_datagrams_never_raise_and_the_engine_answers_each_bounded():
    """Random bytes, mutated valid messages and bundles: decode never raises; the engine turns every
    message into a command or a /typemoe/error (rate-limited), and still answers ping afterwards."""
    import random

    from bridge_fixtures import Harness

    rng = random.Random(17)
    seeds = [NOTE, encode("/typemoe/set", ("temperature", 0.5)), encode("/typemoe/condition", ("A minor",))]
    h = Harness()
    n_bad = 0
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 300))
        elif kind == 1:  # flip bytes in a valid message
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        elif kind == 2:  # random type tags on a valid address
            tags = "".join(rng.choice(",ihfdsbTFNI[]Qxm") for _ in range(rng.randrange(1, 40)))
            data = _pad(b"/typemoe/note") + _pad(tags.encode()) + rng.randbytes(rng.randrange(0, 64))
        else:  # bundles with random element sizes
            data = b"#bundle\x00" + bytes(8) + struct.pack(">i", rng.randrange(-8, 64)) + rng.randbytes(64)
        for ev in decode(data, h.clock.now()):
            n_bad += isinstance(ev, BadDatagram)
            h.handle(ev)
        if i % 100 == 0:
            h.advance(0.01)
    assert n_bad > 5000
    h.advance(1.0)
    h.osc_in("/typemoe/ping")
    assert h.osc[-1][1] == "/typemoe/pong"
    assert all(len(a[0]) <= 200 for a in h.sent("/typemoe/error"))


def test_protocol_table_text_lists_every_address():
    text = osc_api.table_text()
    for row in osc_api.ADDRESSES:
        assert f"/typemoe/{row.name}" in text


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)]
)
def test_loopback(host, loopback):
    from typemoe.bridge.osc_io import is_loopback

    assert is_loopback(host) is loopback


def test_coalescer_last_value_wins_per_address_within_the_window():
    from typemoe.bridge.coalesce import Coalescer

    co = Coalescer(0.05)
    assert co.admit(OscIn("/typemoe/condition", ("A minor",), 0.0), 0.0)  # the first goes through
    for i in range(99):  # a dial at 100/s for a second... in 10 ms steps
        t = 0.001 + i * 0.01
        assert not co.admit(OscIn("/typemoe/condition", (f"v{i}",), t), t)
        assert co.admit(OscIn("/typemoe/note", (60, 90), t), t)  # notes are never held
        for m in co.due(t):
            assert m.address == "/typemoe/condition"
    t = 2.0
    (last,) = co.due(t)
    assert last.args == ("v98",)
    assert co.deadline() is None
    a = co.admit(OscIn("/typemoe/set", ("temperature", 0.5), t), t)
    b = co.admit(OscIn("/typemoe/set", ("top_p", 0.9), t), t)
    assert a and b  # different settings never replace each other


def test_listening_beyond_loopback_warns_and_replies_come_from_loopback(caplog):
    import asyncio
    import logging

    from typemoe.bridge.osc_io import Replier, open_server

    async def open_close(host: str) -> None:
        transport = await open_server(host, 0, lambda d: None)
        transport.close()

    with caplog.at_level(logging.WARNING, logger="typemoe.bridge.osc_io"):
        asyncio.run(open_close("127.0.0.1"))
        assert not caplog.records
        asyncio.run(open_close("0.0.0.0"))
    assert "anyone who can reach this machine" in caplog.text
    r = Replier("127.0.0.1", 9)
    try:
        assert r._sock.getsockname()[0] == "127.0.0.1"
    finally:
        r.close()


def test_the_examples_tables_are_the_protocol_table():
    """examples/README.md's OSC tables are generated from osc_api's table (python -m typemoe.bridge.osc_api)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "examples" / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- osc-table:start")
    body = text[text.index("\n", start) + 1 : text.index("<!-- osc-table:end -->")]
    assert body.strip() == osc_api.markdown_table().strip(), (
        "examples/README.md's OSC tables differ from bridge/osc_api.py's: paste `python -m typemoe.bridge.osc_api`"
    )
