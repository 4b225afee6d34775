"""typemoe-bridge's command line: a message and exit code 2 for each bad value, never a traceback."""

from __future__ import annotations

import pytest

from typemoe.bridge import cli, osc_api


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--condition-key", "H major"], "--condition-key: unknown key name 'H major'"),
        (["--condition-meter", "7/0"], "--condition-meter: invalid time signature '7/0'"),
        (["--demo", "--demo-tune", "missing.mid"], "--demo-tune: no MIDI file 'missing.mid'"),
        (["--demo", "--demo-tune", "sub/dir/tune"], "no MIDI file"),
        (["--out-channel", "17"], "out_channel must be a number in 1..16"),
    ],
)
def test_bad_values_are_messages(argv, expected, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_an_unreadable_demo_tune_is_a_message(tmp_path, capsys):
    bad = tmp_path / "tune.mid"
    bad.write_bytes(b"MThd nonsense")
    assert cli.main(["--demo", "--demo-tune", str(bad)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("typemoe-bridge ")


def test_help_has_a_description_for_every_flag_and_no_doubled_defaults():
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no description"
        assert action.help.count("default") <= 1, action.help
    text = parser.format_help()
    assert "python -m" not in text and "DESIGN" not in text
    for row in osc_api.ADDRESSES:
        assert f"/typemoe/{row.name}" in text


def test_the_studio_guide_documents_every_address():
    from pathlib import Path

    guide = (Path(__file__).resolve().parent.parent / "examples" / "README.md").read_text()
    for row in osc_api.ADDRESSES:
        assert f"`/typemoe/{row.name}`" in guide, row.name
    for name, _, _ in osc_api.REPLIES:
        assert f"`/typemoe/{name}`" in guide, name
