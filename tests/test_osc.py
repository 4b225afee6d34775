"""The OSC layer against literal datagrams: decoding, bundles, garbage, the address table, encoding."""

from __future__ import annotations

import struct

import pytest

from bridge import osc_api
from bridge.events import BadDatagram, OscIn
from bridge.osc_io import decode, encode

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
