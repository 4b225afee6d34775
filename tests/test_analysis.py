import pytest

from typemoe import analysis as A


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Gb major", "F# major"),
        ("f# minor", "F# minor"),
        ("C", "C major"),
        ("a", "A minor"),
        ("Am", "A minor"),
        ("E- minor", "Eb minor"),
        ("D dorian", "D minor"),
        ("G mixolydian", "G major"),
        ("Cb major", "B major"),
    ],
)
def test_parse_key_names_and_enharmonics(name, expected):
    assert A.key_name(A.parse_key(name)) == expected


def test_parse_key_music21_object():
    music21 = pytest.importorskip("music21")
    assert A.key_name(A.parse_key(music21.key.Key("e-", "minor"))) == "Eb minor"
    assert A.key_name(A.parse_key(music21.key.Key("F#"))) == "F# major"


@pytest.mark.parametrize("bad", ["H major", "C locrian", "", "major", 24, None])
def test_bad_keys_name_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad) if isinstance(bad, str) and bad else "."):
        A.parse_key(bad)


def test_key_signature_mapping():
    assert A.key_name(A.key_from_signature(2, minor=False)) == "D major"
    assert A.key_name(A.key_from_signature(2, minor=True)) == "B minor"
    assert A.key_name(A.key_from_signature(-3, minor=True)) == "C minor"


@pytest.mark.parametrize("k", range(-13, 14))
def test_transpose_key_moves_tonic_by_k(k):
    for i in range(24):
        j = A.transpose_key(i, k)
        assert j // 12 == i // 12 and (j - i) % 12 == k % 12


@pytest.mark.parametrize(
    ("pred", "true", "score"),
    [
        ("C major", "C major", 1.0),
        ("G major", "C major", 0.5),
        ("F major", "C major", 0.5),
        ("A minor", "C major", 0.3),
        ("C major", "A minor", 0.3),
        ("C minor", "C major", 0.2),
        ("C# major", "C major", 0.0),
        ("E minor", "A minor", 0.5),
        ("D minor", "C major", 0.0),
    ],
)
def test_mirex_score_five_relations(pred, true, score):
    assert A.mirex_score(A.parse_key(pred), A.parse_key(true)) == score


@pytest.mark.parametrize(
    ("ts", "name", "family"),
    [
        ("6/8", "6/8", "triple"),
        ("C", "4/4", "duple"),
        ("C|", "2/2", "duple"),
        ("3/4", "3/4", "triple"),
        ((9, 8), "9/8", "triple"),
        ("5/4", "other", "other"),
        ("7/8", "other", "other"),
    ],
)
def test_meter_classes_and_families(ts, name, family):
    i = A.parse_meter(ts)
    assert A.meter_name(i) == name
    assert A.meter_family(i) == family


@pytest.mark.parametrize("bad", ["6/7", "x/8", "0/4", "waltz"])
def test_bad_meter(bad):
    with pytest.raises(ValueError, match="time signature"):
        A.parse_meter(bad)
