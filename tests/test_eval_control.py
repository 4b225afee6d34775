"""eval_control's `real` rows: its analysers on the composers' own music, the ceiling of the control table."""

from __future__ import annotations

import numpy as np
import symusic

from typemoe import analysis
from typemoe.training.evaluation import eval_control


def _waltz_in_c(bars: int = 8) -> symusic.Score:
    """A C-major waltz: a low tonic or dominant on each downbeat, a chord tone on beats 2 and 3."""
    score = symusic.Score(480)
    track = symusic.Track("waltz", 0, False)
    chords = [(48, (64, 67)), (43, (62, 65)), (48, (64, 67)), (41, (65, 69))]
    for b in range(bars):
        bass, (x, y) = chords[b % len(chords)]
        t = b * 3 * 480
        track.notes.append(symusic.Note(t, 480, bass, 90))
        track.notes.append(symusic.Note(t + 480, 400, x, 60))
        track.notes.append(symusic.Note(t + 960, 400, y, 60))
        track.notes.append(symusic.Note(t, 1400, 72 if b % 2 == 0 else 67, 80))
    score.tracks.append(track)
    return score


def test_real_rates_compare_the_analysers_with_the_labels(vocab):
    toks = np.asarray(vocab.encode_score(_waltz_in_c()))
    c_major, fs_major = analysis.KEYS.index("C major"), analysis.KEYS.index("F# major")
    three, four = analysis.METERS.index("3/4"), analysis.METERS.index("4/4")
    right = eval_control.real_rates(vocab, [toks], [c_major], [three], bars=2)
    assert right["bare.real.key_match"] == 1.0 and right["bare.real.meter_family_match"] == 1.0
    assert right["move.real.key_match"] == 1.0 and right["bare.real.key_n"] == 1
    assert right["bare.real.scale_match"] == 1.0  # every note is in C major's scale
    wrong = eval_control.real_rates(vocab, [toks], [fs_major], [four], bars=2)
    assert wrong["bare.real.key_match"] == 0.0 and wrong["bare.real.meter_family_match"] == 0.0
    assert 0 < wrong["bare.real.scale_match"] < 0.3  # of the waltz's notes only F (E#) is in F# major's scale
    # unlabelled pieces and pieces too short for the passage are left out, not counted as misses
    both = eval_control.real_rates(vocab, [toks, toks], [c_major, -1], [-1, three], bars=2)
    assert both["bare.real.key_n"] == 1 and both["bare.real.meter_family_n"] == 1
    assert "move.real.key_match" not in eval_control.real_rates(vocab, [toks], [c_major], [three], bars=5)


def test_off_grid_counts_onsets_between_the_eighths(vocab):
    toks = np.asarray(vocab.encode_score(_waltz_in_c()))
    c_major, three = analysis.KEYS.index("C major"), analysis.METERS.index("3/4")
    assert eval_control.real_rates(vocab, [toks], [c_major], [three], bars=2)["bare.real.off_grid"] == 0.0
    jittered = _waltz_in_c()
    for n in jittered.tracks[0].notes[1::4]:  # beat 2 of every bar a sixteenth late: 1 note of 4
        n.time += 120
    toks = np.asarray(vocab.encode_score(jittered))
    assert (
        eval_control.real_rates(vocab, [toks], [c_major], [three], bars=3)["bare.real.off_grid"] == 0.25
    )  # 4 waltz bars
    assert eval_control.off_grid(np.array([0.0, 0.25, 0.5, 0.75, 1.5])) == 0.4
    assert eval_control.off_grid(np.array([])) == 0.0


def test_the_check_key_is_bellman_budges_a_profile_the_key_fusion_does_not_read(vocab):
    """The control table's second key finder is music21's Bellman-Budge profile, outside the key fusion's
    features (baselines.KEY_BASELINES), so a steering that reads the fusion is checked by a profile it never
    saw; on the C-major waltz both finders read C major, and the `real` rows report the check beside the
    first."""
    from music21.analysis import discrete

    from typemoe.training.evaluation import baselines

    assert "bellman" not in baselines.KEY_BASELINES
    assert type(baselines._analyser("bellman")) is discrete.BellmanBudge
    toks = np.asarray(vocab.encode_score(_waltz_in_c()))
    c_major, fs_major = analysis.KEYS.index("C major"), analysis.KEYS.index("F# major")
    three = analysis.METERS.index("3/4")
    got = eval_control.analyse_new_notes(vocab, toks.tolist(), 0.0, c_major)
    assert got[0] == got[4] == c_major
    assert (
        eval_control.real_rates(vocab, [toks], [c_major], [three], bars=2)["bare.real.key_match_bellman"]
        == 1.0
    )
    assert (
        eval_control.real_rates(vocab, [toks], [fs_major], [three], bars=2)["bare.real.key_match_bellman"]
        == 0.0
    )
    # F, G, A and B, long on G and A: Bellman-Budge hears C major, Krumhansl-Schmuckler G major. They are
    # different profiles, not one read twice
    notes = baselines.Notes(
        np.arange(6.0), np.array([2.0, 3.0, 1.0, 3.0, 3.0, 1.0]), np.array([65, 67, 71, 69, 67, 65])
    )
    assert baselines.key_estimate(notes, "bellman")[0] == analysis.KEYS.index("C major")
    assert baselines.key_estimate(notes, "krumhansl")[0] == analysis.KEYS.index("G major")
    got = eval_control.analyse_notes(notes, 0.0, analysis.KEYS.index("C major"))
    assert (got[0], got[4]) == (analysis.KEYS.index("G major"), analysis.KEYS.index("C major"))
