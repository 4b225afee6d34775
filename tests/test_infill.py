"""Infilling at decoding time: middles land inside their bars (100 of 100), both backends agree on them
and on the infilling tokens' logits, `typemoe infill` keeps every note outside the span byte for byte,
and a model from before infilling is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from typemoe import infill
from typemoe.decoding import Session
from typemoe.vocab import TypedVocab

pytestmark = pytest.mark.onnx
KEYS = ("time", "duration", "pitch", "velocity")


@pytest.fixture(scope="module")
def ort_model(tmp_path_factory):
    from export_fixtures import make_tiny_model_dir

    from typemoe.export.runtime import OrtModel

    return OrtModel(make_tiny_model_dir(tmp_path_factory.mktemp("infill") / "model"), provider="cpu")


@pytest.fixture(scope="module")
def torch_model():
    pytest.importorskip("torch")
    from export_fixtures import tiny_checkpoint_dir

    from typemoe.torch_session import TorchModel

    return TorchModel(tiny_checkpoint_dir())


class NoiseEngine:
    """A backend whose logits are loud noise: it tries every token the masks leave, so only the grammar
    keeps the middle in its span."""

    def __init__(self, vocab, context_len: int = 512, seed: int = 0):
        self.vocab, self.context_len = vocab, context_len
        self.rng = np.random.default_rng(seed)

    def new_cache(self):
        return None

    def copy_cache(self, dst, src, n_rows):
        pass

    def run(self, ids, past_len, cache):
        T = len(ids)
        logits = self.rng.normal(0.0, 4.0, (T, self.vocab.size)).astype(np.float32)
        return {"logits": logits, "key_logits": np.zeros((T, 24)), "meter_logits": np.zeros((T, 12))}


def random_score(seed: int, *, bars: int = 8) -> symusic.Score:
    """A piece of random notes (some long, so they cross bar lines) in a random meter, tpq 480."""
    rng = np.random.default_rng(seed)
    num, den = [(4, 4), (3, 4), (6, 8), (2, 4), (5, 8)][seed % 5]
    bar = 480 * 4 * num // den
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, num, den))
    score.tempos.append(symusic.Tempo(0, 100.0))
    track = symusic.Track("piano", 0, False)
    for t in np.sort(rng.integers(0, bars * bar, 10 * bars)):
        track.notes.append(
            symusic.Note(int(t), int(rng.choice([120, 240, 480, 1920])), int(rng.integers(40, 90)), 90)
        )
    score.tracks.append(track)
    return score


def check_middle(vocab, mid: infill.Middle, split: infill.Split) -> None:
    bars = sum(vocab.token(i) == "Bar_None" for i in mid.ids)
    assert 1 <= bars <= split.n_bars
    assert not any(vocab.token(i).startswith("Infill") for i in mid.ids)
    for n in mid.notes:  # no note outside the span, none hanging into the suffix
        assert n.time >= 0 and n.time + n.duration <= split.span_ticks, (n, split.span_ticks)
    bar_ticks = infill.bar_grid_ticks(split.bar_beats)  # the bars of the file's meter it is written in
    positions = [int(vocab.token(i).split("_")[1]) for i in mid.ids if vocab.token(i).startswith("Position_")]
    assert all(p < bar_ticks for p in positions), (positions, split.bar_beats)


def trial(model_or_engine, seed: int, **kw) -> tuple[infill.Middle, infill.Split]:
    vocab = model_or_engine.vocab
    score = random_score(seed)
    first = 1 + seed % 5
    t0, t1 = infill.bar_lines(score, first, first + seed % 3)
    beats = infill.middle_bar_beats(infill.meter_at(score, t0))  # as infill_score writes a file's middle
    split = infill.split_score(vocab, score, t0, t1, bar_beats=beats)
    session = model_or_engine.session() if hasattr(model_or_engine, "session") else Session(model_or_engine)
    mid = infill.generate_middle(
        session,
        split.prefix,
        split.suffix,
        n_bars=split.n_bars,
        span_ticks=split.span_ticks,
        bar_beats=split.bar_beats,
        seed=seed,
        **kw,
    )
    return mid, split


STEER = [{}, {"guidance": 2.0, "controls_key": "E minor"}, {"key_lock": "Bb major", "top_p": 1.0}]


def _kw(vocab, steer: dict) -> dict:
    kw = dict(steer)
    if "controls_key" in kw:
        kw["controls"] = vocab.control_ids(key=kw.pop("controls_key"))
    return kw


def test_100_of_100_middles_land_in_their_bars_tiny_model(ort_model):
    """A tiny random model through the ORT backend, plain, guided and key-locked."""
    ended = 0
    for seed in range(100):
        mid, split = trial(ort_model, seed, **_kw(ort_model.vocab, STEER[seed % 3]))
        check_middle(ort_model.vocab, mid, split)
        ended += mid.ended
    assert ended > 0  # the grammar lets the model close the middle


def test_100_of_100_middles_land_in_their_bars_noise():
    vocab = TypedVocab.default()
    engine = NoiseEngine(vocab)
    n_full = 0
    for seed in range(100):
        mid, split = trial(engine, seed, **{"temperature": 1.0, "top_p": 1.0, **_kw(vocab, STEER[seed % 3])})
        check_middle(vocab, mid, split)
        n_full += any(n.time + n.duration == split.span_ticks for n in mid.notes)
    assert n_full > 10  # notes do reach the span's end: the bound is tested, not just kept


def test_a_middle_is_written_in_bars_of_the_files_meter():
    """A 3/4 (6/8, 2/4, 5/8) span of n file bars is n REMI bars of the meter's length (3, 3, 2, 2.5 beats):
    the middle's Bars open on the file's bar lines and its notes stay inside the bar they were written in
    (check_middle), its grid ticks counted by those bars. Noise logits try every Bar and Position the
    masks leave."""
    vocab = TypedVocab.default()
    engine = NoiseEngine(vocab)
    seen = set()
    for seed in range(40):
        mid, split = trial(engine, seed, temperature=1.0, top_p=1.0)
        check_middle(vocab, mid, split)
        score = random_score(seed)
        meter = infill.meter_at(score, 0)
        n_file_bars = seed % 3 + 1
        want = {"4/4": 4.0, "3/4": 3.0, "6/8": 3.0, "2/4": 2.0, "5/8": 2.5}[meter]
        assert split.bar_beats == want and split.n_bars == n_file_bars, (meter, split)
        seen.add(meter)
        assert max((n.time for n in mid.notes), default=0) < n_file_bars * want * 4
    assert seen == {"4/4", "3/4", "6/8", "2/4", "5/8"}


def test_middle_bar_beats_and_meter_at():
    s = symusic.Score(480)
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    s.time_signatures.append(symusic.TimeSignature(1440 * 2, 12, 8))
    assert infill.meter_at(s, 0) == "3/4" and infill.meter_at(s, 2879) == "3/4"
    assert infill.meter_at(s, 2880) == "12/8" and infill.meter_at(symusic.Score(480), 99) == "4/4"
    assert [infill.middle_bar_beats(m) for m in ("4/4", "3/4", "6/8", "12/8", "9/8", "2/4", "5/4")] == [
        4.0,
        3.0,
        3.0,
        3.0,
        2.25,
        2.0,
        2.5,
    ]
    assert (
        infill.middle_bar_beats("3/32") == 4.0 and infill.middle_bar_beats("x") == 4.0
    )  # the 16th grid cannot hold it: REMI's own bars
    with pytest.raises(infill.InfillError, match="2.1 beats"):
        infill.bar_grid_ticks(2.1)


@pytest.mark.parametrize("steer", STEER, ids=["plain", "guided", "locked"])
def test_both_backends_give_the_same_middle(ort_model, torch_model, steer):
    runs = [trial(m, 7, temperature=1.0, **_kw(m.vocab, steer))[0].ids for m in (torch_model, ort_model)]
    assert runs[0] == runs[1] and len(runs[0]) > 1


def test_infilling_tokens_have_onnx_pytorch_parity(ort_model):
    """The export's parity cases include a fill-in-the-middle stream, and it passes (checked here again,
    against the checkpoint the fixture exported)."""
    from export_fixtures import tiny_checkpoint_dir

    from typemoe import checkpoint
    from typemoe.export.validate import check_parity, default_cases

    cases = [c for c in default_cases(ort_model.vocab, ort_model.context_len) if c.name.startswith("infill")]
    assert len(cases) == 1
    ids = cases[0].chunks[0][0].tolist() + [int(f[0, 0]) for f in cases[0].chunks[1:]]
    names = {ort_model.vocab.token(i) for i in ids}
    assert {"Infill_Suffix", "Infill_Middle", "Infill_Bars_2", "Infill_End"} <= names
    report = check_parity(checkpoint.load(tiny_checkpoint_dir()), ort_model.model_dir, cases=cases)
    assert not report.mismatches


def test_mix_readings_interpolates_log_probabilities_and_keeps_the_end_of_the_infilling_reading():
    rng = np.random.default_rng(0)
    fim, cont = rng.normal(0, 3, (5, 20)), rng.normal(0, 3, (5, 20))
    end = 7

    def lsm(x):
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    np.testing.assert_allclose(infill.mix_readings(fim, cont, 1.0, end), lsm(fim), atol=1e-5)
    zero = infill.mix_readings(fim, cont, 0.0, end)
    np.testing.assert_allclose(np.delete(zero, end, 1), np.delete(lsm(cont), end, 1), atol=1e-5)
    np.testing.assert_allclose(zero[:, end], lsm(fim)[:, end], atol=1e-5)  # only FIM knows the end
    half = infill.mix_readings(fim + 5.0, cont - 2.0, 0.5, end)  # a logit offset changes nothing
    want = (lsm(fim) + lsm(cont)) / 2
    want[:, end] = lsm(fim)[:, end]
    np.testing.assert_allclose(half, want, atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_the_suffix_mix_hook_reads_both_streams_as_a_fresh_prefill_would(ort_model, guidance):
    """SuffixMix, fed along by the middle, gives mix_readings of the infilling stream's logits and the
    continuation stream's, each as a from-scratch prefill of the same ids gives them (guided by a twin
    without the controls when guidance != 1)."""
    from typemoe.sampling import guide

    vocab = ort_model.vocab
    ids = infill.InfillIds.of(vocab)
    split = infill.split_score(vocab, random_score(3), *infill.bar_lines(random_score(3), 3, 4))
    ctrl = vocab.control_ids(key="E minor")
    fim = [vocab.bos_id, *ctrl, ids.suffix, *split.suffix, ids.span(split.n_bars), *split.prefix, ids.middle]
    cont = [vocab.bos_id, *ctrl, *split.prefix]
    middle = split.suffix[:24]  # real music ids to read along (they open on a Bar, as a middle does)
    session, reader = ort_model.session(), ort_model.session()
    session.feed(fim)
    reader.feed(cont)
    hook = infill.SuffixMix(reader, len(fim), weight=0.5, guidance=guidance, end_id=ids.end)

    def fresh(seq):
        s = ort_model.session()
        s.feed(seq)
        logits = s.last.logits
        if guidance != 1.0:
            u = ort_model.session()
            u.feed([vocab.bos_id, *seq[1 + len(ctrl) :]])
            logits = guide(logits, u.last.logits, guidance)
        return logits

    for k in (0, 1, len(middle) // 2, len(middle)):
        if k:
            session.feed(middle[len(session.tokens) - len(fim) : k])
        got = np.array(fresh(fim + middle[:k]), dtype=np.float32)
        hook(session, got, np.ones(vocab.size, dtype=bool))
        want = infill.mix_readings(fresh(fim + middle[:k]), fresh(cont + middle[:k]), 0.5, ids.end)
        np.testing.assert_allclose(got, want, atol=2e-4)
    assert reader.tokens == cont + middle


def test_suffix_weight_one_is_the_infilling_reading_alone(ort_model):
    """weight 1 runs no second stream, and any other weight changes the middle (on this model, seed)."""
    runs = {w: trial(ort_model, 11, temperature=1.0, suffix_weight=w)[0].ids for w in (1.0, 0.5, 0.0)}
    assert runs[1.0] != runs[0.0]
    with pytest.raises(infill.InfillError, match="suffix_weight"):
        trial(ort_model, 11, suffix_weight=-1.0)


def test_a_model_without_the_tokens_is_refused_by_name(tmp_path):
    from export_fixtures import legacy_checkpoint_dir, legacy_vocab

    old = legacy_vocab()
    with pytest.raises(infill.InfillError, match="Infill_Suffix, Infill_Middle, Infill_End"):
        infill.generate_middle(Session(NoiseEngine(old)), [], [], n_bars=1)
    src = tmp_path / "in.mid"
    random_score(0).dump_midi(str(src))
    from typemoe.cli import main

    out = tmp_path / "out.mid"
    assert (
        main(
            ["infill", str(src), "--bars", "2-3", "--model", str(legacy_checkpoint_dir()), "--out", str(out)]
        )
        == 2
    )
    assert not out.exists()


def test_the_cli_passes_head_guidance_and_refuses_a_bad_one_by_name(ort_model, tmp_path, monkeypatch, capsys):
    from typemoe.cli import main

    seen = []
    real = infill.start_middle
    monkeypatch.setattr(
        infill, "start_middle", lambda *a, **kw: seen.append(kw["head_guidance"]) or real(*a, **kw)
    )
    src, out = tmp_path / "in.mid", tmp_path / "out.mid"
    random_score(0).dump_midi(str(src))
    args = ["infill", str(src), "--bars", "2-3", "--model", str(ort_model.model_dir), "--key", "G major"]
    assert main([*args, "--head-guidance", "2.5", "--out", str(out)]) == 0 and seen == [2.5]
    capsys.readouterr()
    assert main([*args, "--head-guidance", "-1", "--out", str(tmp_path / "no.mid")]) == 2
    assert "--head-guidance" in capsys.readouterr().err and not (tmp_path / "no.mid").exists()


# --------------------------------------------------------------------------- the CLI on real files


def real_files(tmp_path) -> list:
    """Real pieces: music21 corpus tunes and a Bach chorale (4 voices, a pickup), written as MIDI."""
    music21 = pytest.importorskip("music21")
    from conftest import music21_scores

    paths = []
    for i, (_, score) in enumerate(music21_scores(3)):
        p = tmp_path / f"tune{i}.mid"
        score.dump_midi(str(p))
        paths.append(p)
    p = tmp_path / "bwv66.mid"
    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(p))
    return [*paths, p]


def notes_of(track, t0: int, t1: int, inside: bool) -> list[tuple]:
    a = track.notes.numpy()
    m = (a["time"] >= t0) & (a["time"] < t1)
    m = m if inside else ~m
    return sorted(zip(*(a[k][m].tolist() for k in KEYS)))


@pytest.mark.parametrize("backend", ["onnx", "checkpoint"])
def test_cli_keeps_every_note_outside_the_span(ort_model, tmp_path, backend):
    from export_fixtures import tiny_checkpoint_dir

    from typemoe.cli import main

    model = ort_model.model_dir if backend == "onnx" else tiny_checkpoint_dir()
    for k, src in enumerate(real_files(tmp_path)):
        first, last = 2 + k % 2, 3 + k % 2
        out = tmp_path / f"out{k}.mid"
        args = ["infill", str(src), "--bars", f"{first}-{last}", "--out", str(out), "--model", str(model)]
        assert main([*args, "--seed", str(k), "--key", "G major", "--guidance", "1.5"]) == 0
        a, b = symusic.Score(str(src)), symusic.Score(str(out))
        t0, t1 = infill.bar_lines(a, first, last)
        assert len(a.tracks) == len(b.tracks)
        for ta, tb in zip(a.tracks, b.tracks):
            assert (ta.name, ta.program, ta.is_drum) == (tb.name, tb.program, tb.is_drum)
            assert notes_of(ta, t0, t1, False) == notes_of(tb, t0, t1, False)  # byte for byte
            assert all(t0 <= t and t + d <= t1 for t, d, *_ in notes_of(tb, t0, t1, True))
        assert sum(len(notes_of(tb, t0, t1, True)) for tb in b.tracks) > 0
        assert b.ticks_per_quarter == a.ticks_per_quarter
        for what in ("tempos", "time_signatures", "key_signatures"):
            assert list(getattr(a, what)) == list(getattr(b, what)), what


def test_bar_lines_follow_the_time_signatures():
    s = symusic.Score(480)
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    s.time_signatures.append(symusic.TimeSignature(3 * 1440, 6, 8))
    assert infill.bar_lines(s, 1, 1) == (0, 1440)
    assert infill.bar_lines(s, 3, 5) == (2880, 3 * 1440 + 2 * 1440)
    assert infill.bar_lines(symusic.Score(96), 2, 2) == (384, 768)  # 4/4 without a time signature
    with pytest.raises(infill.InfillError):
        infill.bar_lines(s, 3, 2)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_a_three_beat_middle_ends_its_bars_in_a_bar_line_not_a_cluster(weight):
    """A model that wants the Positions of beat 3 at a 3-beat bar's end (a 4-beat model's habit) moves to
    the next bar (decoding.spill_to_bar), through both readings of the mix (SuffixMix spills the
    continuation reading the same way) and at the span's end (SpanGrammar: to Infill_End)."""
    from test_decoding import LateBarEngine

    vocab = TypedVocab.default()
    s = symusic.Score(480)
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    track = symusic.Track("piano", 0, False)
    for k in range(24):
        track.notes.append(symusic.Note(480 * k, 480, 60 + k % 12, 90))
    s.tracks.append(track)
    t0, t1 = infill.bar_lines(s, 3, 5)
    split = infill.split_score(vocab, s, t0, t1, bar_beats=3.0)
    for seed in range(3):
        mid = infill.generate_middle(
            Session(LateBarEngine(vocab)),
            split.prefix,
            split.suffix,
            n_bars=split.n_bars,
            span_ticks=split.span_ticks,
            bar_beats=3.0,
            suffix_weight=weight,
            seed=seed,
            temperature=1.0,
            top_p=1.0,
        )
        check_middle(vocab, mid, split)
        onsets = [n.time for n in mid.notes]
        assert onsets and max(np.unique(onsets, return_counts=True)[1]) <= 3, (weight, sorted(onsets))
