"""A waltz and a jig, played with a human touch into `TypeMoE In` over JACK, read as 3/4 and 6/8 (issue 12).

The bridge runs the shipped model (analysis only) on a private jackd. Each tune is a held-out music21 corpus
tune (test split: never trained on), humanized (training/evaluation/perturb.py "all": a velocity swell and per-note
noise, +-1/32-beat onset/duration jitter, legato/staccato) and played in real time from a separate JACK
client at the bridge's internal tempo. The bridge's last /typemoe/meter must name the tune's meter.

The two tunes: the Essen song X:97 of boehme20.abc (3/4) and the jig X:0058 of Aird's Airs book 1
(airdsAirs/book1.abc, 6/8). What made this test fail now and then (1 full-suite run of 3 on 2026-12-01,
the waltz heard as 4/4): the bridge's internal beat grid starts when the bridge is launched, and the
stream's bars were laid on it, so the player's notes fell at a random fraction of a grid step; through the
bridge's own tokenizer, the old waltz (zuccal0.abc X:546) read 3/4 or 4/4 and the old jig 6/8 or 3/8 with
nothing changed but that phase (/work/notes/exp/phase_stream.py on the VM). Free-running, the stream now
starts on the performer's first note (bridge/engine.py `_stream_origin`; tests/test_bridge_engine.py
checks the tokens do not depend on the launch phase). The tunes were also changed for ones the model reads
steadily, since the bridge reports the meter as it hears the music and which report is the last one
depends on when the last analysis lands: X:546 read 3/4 at its end offline but 4/4 at most bars from the
4th to the 10th of 12. These two (/work/notes/exp/stable_waltz.py: the first 48 beats humanized as here
with seeds 1-3, read at every REMI bar from the 5th on, the shipped model) name their meter at every such
bar, with a margin over the next meter of at least 0.53 (waltz) and 0.40 (jig). So this test shows the
path works end to end, not how often the meter is right. How often, on the shipped model: of the 19
held-out 3/4 tunes of the Essen collections and Aird's Airs long enough for 48 beats, 4 keep 3/4 at every
bar from the 5th in all three humanizations; at the end of the tune, over every test-split 3/4 and 6/8
tune of Aird's Airs books 1-6 and zuccal0.abc (first 1000 tokens), the fused meter reads 6 of 12 in 3/4
and 15 of 24 in 6/8 right (the meter head alone: 0 of 12 and 19 of 24). With the fix, the old tunes
passed 3 of 3 runs too; the new ones 3 of 3.
The model shipped on 2026-12-03 (MODEL_CARD.md Training step 7) read that waltz (boehme10.abc X:315) as
12/8 at its end, so the waltz was chosen again the same way for it (/work/notes/exp/stable_waltz.py): of
the held-out 3/4 tunes of boehme10, boehme20, ballad10, ballad20, erk10, altdeu10 and han1 long enough for
48 beats (five), one names 3/4 at every bar from the 5th in all three humanizations, boehme20.abc X:97
(margin 0.36); the old waltz and the three others do not. Again: the path, not the rate.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import pytest
from bridge_jack_fixtures import (
    JACKD,
    MidiSend,
    OscPeer,
    free_udp_port,
    jack_fixture,
    start_bridge,
    stop_process,
)

from typemoe.shipped import default_model_dir

rtmidi = pytest.importorskip("rtmidi")
pytestmark = [
    pytest.mark.jack,
    pytest.mark.skipif(JACKD is None, reason="jackd is not installed (apt-get install jackd2)"),
    pytest.mark.skipif(
        rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api(), reason="python-rtmidi lacks JACK"
    ),
]

BPM = 160.0  # the bridge's internal tempo and the player's (a 16th is 94 ms: scheduling slack under load stays inside it)
BEATS = 48.0  # beats of each tune played (16 bars of 3/4, 8 bars of 6/8 counted in quarter notes)
TUNES = {
    "3/4": ("essenFolksong/boehme20.abc", "97"),
    "6/8": ("airdsAirs/book1.abc", "0058"),
}


def _tune(rel: str, x: str):
    from music21 import common, converter
    from test_invariance import _m21_to_score

    from typemoe.training.data.sources import split_of

    assert split_of(f"{rel}#{x}") == "test", "the tune must be held out from training"
    text = (Path(common.getCorpusFilePath()) / rel).read_text(encoding="utf-8", errors="replace")
    part = next(p for p in re.split(r"(?m)^(?=X:)", text) if re.match(rf"X:\s*{x}\b", p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _m21_to_score(converter.parse(part, format="abc"))


def _events(score) -> list[tuple[float, int, int, int]]:
    """(beat, on, pitch, velocity) of the first BEATS beats, note-offs before note-ons at the same time."""
    tpq = score.ticks_per_quarter
    out = []
    for track in score.tracks:
        for n in track.notes:
            on = n.time / tpq
            if on < BEATS:
                out += [(on, 1, n.pitch, n.velocity), ((n.time + n.duration) / tpq, 0, n.pitch, 0)]
    return sorted(out)


# A private synchronous jackd at 128-frame periods (2.7 ms): a tune with dropped notes has another rhythm
# (in full-suite runs on the asynchronous server the waltz was heard as 4/4 or 6/4, alone it passed). This
# test is about reading the meter, not about a link that drops events.
jack = jack_fixture(128)


@pytest.fixture(scope="module")
def bridge(jack, tmp_path_factory):
    if not (default_model_dir().is_dir() and any(default_model_dir().glob("*.onnx"))):
        pytest.skip(f"no shipped model in {default_model_dir()}")
    pytest.importorskip("music21")
    osc_port = free_udp_port()
    peer = OscPeer(osc_port)
    log = tmp_path_factory.mktemp("meter") / "bridge.log"
    proc = start_bridge(
        *("--midi-api", "jack", "--mode", "analyze", "--provider", "cpu", "--stats-every-s", "0"),
        *("--osc-port", str(osc_port), "--reply-port", str(peer.port), "--tempo", str(BPM)),
        *("--in-port", "Meter In", "--out-port", "Meter Out"),
        log_path=log,
    )
    if not peer.ping_until_pong(90.0):
        stop_process(proc)
        pytest.fail(f"bridge did not answer /typemoe/ping:\n{log.read_text(errors='replace')[-4000:]}")
    send = MidiSend("Meter In", name="Meter Player")
    yield peer, send, log
    send.close()
    assert stop_process(proc) == 0, log.read_text(errors="replace")[-4000:]
    peer.close()


@pytest.mark.parametrize("meter", sorted(TUNES))
def test_a_humanized_tune_over_jack_reads_its_meter(bridge, meter):
    from typemoe.training.evaluation import perturb

    peer, send, log = bridge
    played = perturb.humanize(_tune(*TUNES[meter]), "all", seed=1)
    peer.send("/typemoe/reset")
    peer.pump(0.3)
    n0 = len(peer.received)
    spb, t0 = 60.0 / BPM, time.monotonic() + 0.1
    for beat, on, pitch, velocity in _events(played):
        time.sleep(max(0.0, t0 + beat * spb - time.monotonic()))
        send.send(0x90 if on else 0x80, pitch, velocity if on else 0)
    peer.pump(1.5)  # the last notes end, enter the stream and are analysed
    meters = [args for _, a, args in peer.received[n0:] if a == "/typemoe/meter"]
    assert meters, log.read_text(errors="replace")[-4000:]
    assert meters[-1][0] == meter, f"reported {meters[-5:]}"
