"""The data room: MIDI sources and their labels, and the token shards that training and evaluation read
(`typemoe data build`: prepare.py, sources.py, music21_source.py, label_rules.py, shards.py)."""
