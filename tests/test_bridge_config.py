"""BridgeConfig validation, the TOML file mirroring the flags, and the CLI's front door."""

from __future__ import annotations

import pytest

from typemoe.bridge import cli, config


def test_defaults_match_the_contract():
    c = config.BridgeConfig()
    assert (c.osc_host, c.osc_port, c.reply_host, c.reply_port) == ("127.0.0.1", 9000, "127.0.0.1", 9001)
    assert (c.in_port, c.out_port, c.trigger_cc) == ("TypeMoE In", "TypeMoE Out", config.DEFAULT_TRIGGER_CC)


@pytest.mark.parametrize(
    "bad",
    [{"mode": "jam"}, {"tempo": 0}, {"out_channel": 17}, {"top_p": 0}, {"bars": 100}, {"midi_api": "x"}],
)
def test_bad_values_name_themselves(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        config.BridgeConfig(**bad)


def test_toml_mirrors_flags_and_flags_win(tmp_path):
    f = tmp_path / "bridge.toml"
    f.write_text('midi-api = "jack"\nosc_port = 9100\nmode = "manual"\ncondition_key = "A minor"\n')
    values = config.load_toml(f)
    c = config.make_config(values, osc_port=9200, mode=None)
    assert (c.midi_api, c.osc_port, c.mode, c.condition_key) == ("jack", 9200, "manual", "A minor")


def test_toml_errors(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("wings = 2\n")
    with pytest.raises(ValueError, match="wings"):
        config.load_toml(f)
    f.write_text("osc_port = [\n")
    with pytest.raises(ValueError, match="TOML"):
        config.load_toml(f)


def test_cli_bad_config_exits_2_without_traceback(tmp_path, capsys):
    assert cli.main(["--tempo", "5"]) == 2
    assert "tempo" in capsys.readouterr().err
    f = tmp_path / "c.toml"
    f.write_text("mode = 3\n")
    assert cli.main(["--config", str(f)]) == 2


def test_cli_missing_model_is_explained(capsys):
    assert cli.main(["--model", "/nonexistent/model", "--no-midi"]) == 2
    assert "--model" in capsys.readouterr().err


def test_every_field_has_a_flag():
    flags = {a.dest for a in cli.build_parser()._actions}
    assert set(config.FIELD_NAMES) <= flags


def test_cli_without_a_midi_backend_explains_and_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "typemoe-no-such-server")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    assert cli.main(["--model", "toy", "--midi-api", "jack", "--osc-port", "9357"]) == 2
    assert "jack" in capsys.readouterr().err.lower()
