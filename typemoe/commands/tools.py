"""`typemoe analyze` and `typemoe generate`: a model on one MIDI file, from the command line.

    typemoe analyze tune.mid [--model DIR] [--emotion-model DIR] [--json]
        key: G major (0.93)
        meter: 6/8 (0.88)
        emotion: Q4 (0.61) high valence, low arousal (calm, relaxed)
    typemoe generate tune.mid --bars 8 --key "E minor" --guidance 2 --key-lock --seed 1 --out tune_more.mid

Torch-free: both run an exported model directory through export.runtime (numpy + onnxruntime). Given a
PyTorch checkpoint instead (a training --out dir or a checkpoint dir), they run it through
typemoe.torch_session when torch is installed. Either way the decoder is typemoe.decoding, the one the
bridge and `typemoe eval` use. No --model: the shipped default, typemoe/default_model.

analyze reads the whole piece the way the bridge hears it (all pitched tracks merged, time and key
signatures ignored, fed bar by bar through one session whose context slides when full) and answers for the
whole piece (typemoe.listening.whole_piece): the key answered at every bar line (the key head fused with the
pitch classes of the notes it read) and averaged, the meter head's mean fused with the rhythm of every
note, the probabilities as confidences. The key head there is the piece's heard in twelve transpositions
(the twelve that put its mean pitch between A3 and A4) and turned back (listening.key_heads_transposed), so
the key turns exactly with a transposition; that reads the piece twelve times more, and --quick reads it
once (the bridge's single hearing); --json adds the running estimate at the end ("at_end") and where
it stood after 1, 2, 4 and 8 bars ("after_bars"). When the model has an emotion head (the shipped one does) it also
reports the piece's EMOPIA quadrant (Q1..Q4: the class head pooled over every token the session heard,
read in the same pass as the key and meter); --emotion-model DIR takes it from another exported classifier
instead (verified at load like the main model: a corrupt file is refused by name). A model without an
emotion head and no --emotion-model: no emotion line.

generate writes the prompt file unchanged (every track, tempo and timing as it was; a tempo of 120 qpm is
added when the prompt has none) plus one new track holding the continuation. The continuation starts on
the prompt's next bar line of the meter (--meter, else the file's time signature when it has one meter
the model knows, else the model's meter estimate at the end of the prompt, else 4/4) with a note on that
downbeat, and lasts --bars bars of that meter. Control tokens
(--key, --meter, --genre, --emotion) go before the music; --guidance G > 1 strengthens them with
classifier-free guidance, --head-guidance W steers the pitches toward --key by the model's own ear for keys
(its key head fused with the notes' pitch classes, typemoe.key_steering), --meter-guidance W accents the
bars of --meter (onsets on its strong positions, long notes on the downbeat: typemoe.meter_steering), --key-lock allows only the pitches of --key's scale, and --candidates N writes N
continuations and keeps the one the model's own analysis hears most in --key and the meter's family
(typemoe.candidates; N times the time). The notes are clean:
on the grid, no same-pitch duplicates or overlaps (typemoe.note_writer).

add_parsers(subparsers) registers both commands (func(args) -> exit code).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typemoe import analysis, decoding, key_steering, meter_steering, note_writer, sampling
from typemoe.candidates import DEFAULT_CANDIDATES, best_of, check_candidates
from typemoe.export.model_dir import EXPORT_COMMAND, MANIFEST_FILE
from typemoe.listening import (
    ONE_HEARING,
    at_end,
    bar_chunks,
    key_heads_transposed,
    listen,
    whole_piece,
)
from typemoe.shipped import default_model_dir

log = logging.getLogger(__name__)

CONTINUATION_TRACK = "TypeMoE continuation"
REPORT_BARS = (1, 2, 4, 8)  # analyze --json: the estimate after these many bars
DEFAULT_METER = "4/4"  # REMI's own bar, when neither --meter nor a meter estimate is at hand


class ToolError(ValueError):
    """A bad input file, model or option, named in the message."""


# --------------------------------------------------------------------------- models


def _checkpoint_dir(path: Path) -> Path | None:
    for d in (path, path / "latest"):
        if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
            return d
    return None


def open_model(path: Path | None):
    """An export.runtime.OrtModel, or a typemoe.torch_session.TorchModel for a PyTorch checkpoint (both
    serve typemoe.decoding sessions). Raises ToolError."""
    if path is None:
        path = default_model_dir()
        if not path.is_dir() or not any(path.iterdir()):
            raise ToolError(
                f"no --model given and the shipped default model ({path}) is not installed; "
                "pass --model EXPORTED_MODEL_DIR (or a training checkpoint)"
            )
    path = Path(path)
    if not path.exists():
        raise ToolError(f"model {path} does not exist")
    from typemoe.export.runtime import ModelDirError, OrtModel

    if (path / MANIFEST_FILE).is_file():
        try:
            return OrtModel(path, provider="auto")
        except ModelDirError as err:
            raise ToolError(str(err)) from err
    ckpt = _checkpoint_dir(path)
    if ckpt is None:
        raise ToolError(
            f"{path} has no {MANIFEST_FILE}, so it is not an exported model directory (`{EXPORT_COMMAND}` "
            "writes one), nor a TypeMoE checkpoint (config.json + model.safetensors, or a training run "
            "with latest/)"
        )
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise ToolError(
            f"{path} is a PyTorch checkpoint and torch is not installed; export it to ONNX "
            "(`typemoe export`) or install the train extra"
        ) from err
    from typemoe.torch_session import TorchModel

    return TorchModel(ckpt)


def open_emotion_model(path: Path | None):
    """The separate emotion classifier named by --emotion-model (an export.runtime.OrtModel), or None.

    Raises:
        ToolError: the directory is missing, corrupt (naming the file) or has no Q1..Q4 head.
    """
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise ToolError(f"emotion model {path} does not exist")
    from typemoe.export.runtime import ModelDirError, OrtModel

    try:
        emo = OrtModel(path, provider="auto")
    except ModelDirError as err:
        raise ToolError(f"emotion model: {err}") from err
    if not has_emotion_head(emo):
        raise ToolError(
            f"emotion model {path} has no emotion head (its classes: {emo.class_names}); pass a model "
            "exported from `typemoe finetune --task emotion`"
        )
    return emo


def has_emotion_head(model) -> bool:
    """True when the model's classification head names EMOPIA quadrants (Q1..Q4)."""
    names = model.class_names
    return bool(names) and set(names) <= set(analysis.EMOTIONS)


# --------------------------------------------------------------------------- analyze


def read_midi(path: Path):
    """A symusic Score of `path`. Raises ToolError naming the file when it is missing or not MIDI."""
    import symusic

    if not Path(path).is_file():
        raise ToolError(f"{path}: no such file")
    try:
        return symusic.Score(str(path))
    except Exception as err:  # symusic raises RuntimeError/ValueError variants for broken files
        raise ToolError(f"{path} is not a readable MIDI file: {err}") from err


def _tokens(vocab, score, path: Path) -> list[int]:
    from typemoe.vocab import ScoreError

    try:
        return vocab.encode_score(score)
    except ScoreError as err:
        raise ToolError(f"{path}: {err}") from err


def _readers(model):
    """The model directory's key and meter readers (the notes' pitch classes fused with the key head,
    typemoe.key_fusion; their rhythm fused with the meter head, typemoe.meter): an OrtModel; None for a
    PyTorch checkpoint, whose heads answer alone."""
    return model if hasattr(model, "answer") else None


def _describe(model, key_probs, meter_probs) -> dict:
    k, m = int(np.argmax(key_probs)), int(np.argmax(meter_probs))
    return {
        "key": model.key_names[k],
        "key_confidence": round(float(key_probs[k]), 4),
        "meter": model.meter_names[m],
        "meter_confidence": round(float(meter_probs[m]), 4),
    }


def _estimate(model, out, ids: Sequence[int]) -> dict:
    """Key and meter after hearing `ids`, from the heads at their end and the directory's readers."""
    readers = _readers(model)
    if readers is None:
        return _describe(model, out.key_probs, out.meter_probs)
    return _describe(model, *readers.answer(ids, out.key_probs, out.meter_probs))


def _prefix_bars(vocab, ids: Sequence[int], bars: int) -> list[int]:
    """The ids of the first `bars` whole bars (up to the Bar token that opens bar bars + 1)."""
    at = np.flatnonzero(np.asarray(ids) == vocab.id("Bar_None"))
    return list(ids[: int(at[bars])] if len(at) > bars else ids)


def analyze(model, midi: Path, emotion=None, *, quick: bool = False) -> dict:
    """{"key", "key_confidence", "meter", "meter_confidence", "at_end", "after_bars"} of one MIDI file.

    key and meter answer for the whole piece (typemoe.listening.whole_piece: the key answers at its bar
    lines averaged, the key head there heard in all twelve transpositions unless `quick`; the meter
    head's mean fused with the rhythm of every note). "key_transpositions": how many (12, or 1). "at_end" is the running
    estimate at the end (what the bridge shows once the piece is over, from the context it holds then)
    and "after_bars" where it stood after 1, 2, 4 and 8 bars ({"1": {"key", ...}, ...}, the bars the
    piece has). With an emotion head (the model's own, else the separate `emotion` classifier of
    open_emotion_model) also "emotion" (Q1..Q4), "emotion_confidence" and "emotion_probs" {class: p}."""
    score = read_midi(midi)
    ids = _tokens(model.vocab, score, midi)
    heard = listen(model, ids, report_bars=REPORT_BARS)
    key_heads = key_heads_transposed(model, heard, ONE_HEARING if quick else None)
    whole, end = whole_piece(heard, _readers(model), key_heads), at_end(heard, _readers(model))
    res = _describe(model, whole.key_probs, whole.meter_probs)
    res["key_transpositions"] = 1 if quick else 12
    res["at_end"] = _describe(model, end.key_probs, end.meter_probs)
    res["after_bars"] = {
        str(b): _estimate(model, out, _prefix_bars(model.vocab, ids, b))
        for b, out in sorted(heard.after.items())
    }
    if emotion is not None:
        emo_ids = ids if emotion.vocab.hash == model.vocab.hash else _tokens(emotion.vocab, score, midi)
        res.update(_emotion(emotion, listen(emotion, emo_ids), emo_ids))
    elif has_emotion_head(model):
        res.update(_emotion(model, heard, ids))
    return res


def _emotion(emo, heard, ids: Sequence[int]) -> dict:
    """The class head pooled over every token the session heard (the running mean of a session fed bar by
    bar, slid-out tokens included), fused with the notes of the whole piece where the model directory has
    an emotion fusion (OrtModel.class_answer, typemoe.emotion_fusion)."""
    probs = np.asarray(heard.session.last.class_probs, dtype=np.float64)  # (C,)
    probs /= probs.sum()
    if hasattr(emo, "class_answer"):
        probs = emo.class_answer(ids, probs)
    c = int(np.argmax(probs))
    return {
        "emotion": emo.class_names[c],
        "emotion_confidence": round(float(probs[c]), 4),
        "emotion_probs": {name: round(float(p), 4) for name, p in zip(emo.class_names, probs)},
    }


# --------------------------------------------------------------------------- generate


@dataclass
class Continuation:
    score: object  # symusic.Score: the prompt plus the continuation track
    n_notes: int
    meter: str  # the meter whose bars were counted
    meter_source: str  # "--meter" | "time signature" | "estimate" | "default"
    start_beat: float  # where the continuation starts, in quarter notes from the file's start


def file_meter(score) -> str | None:
    """The prompt file's meter when all its time signatures agree on one the decoder has a bar for
    ("3/4"), else None (none written, a change of meter, or one like 5/4 the model has no class for)."""
    sigs = {(int(ts.numerator), int(ts.denominator)) for ts in score.time_signatures}
    if len(sigs) != 1:
        return None
    ((num, den),) = sigs
    name = analysis.meter_name(analysis.parse_meter(f"{num}/{den}"))
    try:
        decoding.meter_beats(name)
    except ValueError:
        return None
    return name


def _meter_for(model, session, asked: str | None, score=None) -> tuple[str, str]:
    if asked:
        return analysis.meter_name(analysis.parse_meter(asked)), "--meter"
    written = None if score is None else file_meter(score)
    if written is not None:
        return written, "time signature"
    out = session.last
    if out is not None and getattr(out, "meter_probs", None) is not None:
        name = _estimate(model, out, session.tokens)["meter"]
        try:
            decoding.meter_beats(name)
            return name, "estimate"
        except ValueError:  # "other": no bar length
            pass
    return DEFAULT_METER, "default"


def continuation_score(
    model,
    prompt_path: Path,
    *,
    bars: int,
    controls: dict,
    temperature: float,
    top_p: float,
    seed: int | None,
    guidance: float = sampling.DEFAULT_GUIDANCE,
    key_lock: bool = False,
    head_guidance: float = key_steering.DEFAULT_HEAD_GUIDANCE,
    meter_guidance: float = meter_steering.DEFAULT_METER_GUIDANCE,
    candidates: int = DEFAULT_CANDIDATES,
) -> Continuation:
    """The prompt score with one more track holding `bars` generated bars of the prompt's meter; with
    candidates > 1 the best of that many by the model's own key and meter reading (typemoe.candidates)."""
    if bars < 1:
        raise ToolError(f"--bars must be >= 1, got {bars}")
    try:
        sampling.check_sampling(temperature, top_p, guidance)
        key_steering.check_head_guidance(head_guidance)
        meter_steering.check_meter_guidance(meter_guidance)
    except ValueError as err:
        raise ToolError(f"--temperature/--top-p/--guidance/--head-guidance/--meter-guidance: {err}") from err
    if key_lock and not controls.get("key"):
        raise ToolError("--key-lock needs --key (the key whose scale to keep)")
    try:
        candidates = check_candidates(candidates)
    except ValueError as err:
        raise ToolError(f"--candidates: {err}") from err
    if candidates > 1 and not controls.get("key"):
        raise ToolError("--candidates needs --key (the key the candidates are judged by)")
    vocab = model.vocab
    score = read_midi(prompt_path)
    ids = _tokens(vocab, score, prompt_path)
    try:
        ctrl = vocab.control_ids(**controls)
        if controls.get("meter"):
            decoding.meter_beats(controls["meter"])
    except (ValueError, KeyError) as err:
        raise ToolError(f"bad control: {err}") from err
    session = model.session()
    for chunk in bar_chunks(vocab, [vocab.bos_id, *ctrl, *ids], max(1, model.context_len // 4)):
        session.feed(chunk)
    meter, source = _meter_for(model, session, controls.get("meter"), score)
    start = session.next_bar_line(meter)
    cursor, plan = session.cursor(), session.bar_plan(meter)  # where it stands, the bars it will write
    new = best_of(
        session,
        candidates,
        readers=model,
        n_bars=bars,
        meter=meter,
        on_downbeat=True,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        guidance=guidance,
        key_lock=controls.get("key") if key_lock else None,
        head_guidance=head_guidance,
        meter_guidance=meter_guidance,
    )
    notes = note_writer.continuation_notes(
        vocab, new, cursor=cursor, plan=plan, ticks_per_quarter=score.ticks_per_quarter
    )
    out = score.copy()
    out.tracks.append(note_writer.to_track(notes, CONTINUATION_TRACK))
    note_writer.ensure_tempo(out)
    return Continuation(out, len(notes), meter, source, start)


# --------------------------------------------------------------------------- CLI


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def _analyze_cmd(args: argparse.Namespace) -> int:
    try:
        model = open_model(args.model)
        emotion = open_emotion_model(args.emotion_model)
        res = analyze(model, args.file, emotion, quick=args.quick)
    except ToolError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    if args.json:
        _write(json.dumps(res))
    else:
        lines = [
            f"key: {res['key']} ({res['key_confidence']:.2f})",
            f"meter: {res['meter']} ({res['meter_confidence']:.2f})",
        ]
        if "emotion" in res:
            gloss = analysis.EMOTION_GLOSS.get(res["emotion"], "")
            lines.append(f"emotion: {res['emotion']} ({res['emotion_confidence']:.2f}) {gloss}".rstrip())
        _write("\n".join(lines))
    return 0


def _generate_cmd(args: argparse.Namespace) -> int:
    controls = {kind.name: getattr(args, kind.name) for kind in analysis.CONTROLS}
    try:
        res = continuation_score(
            open_model(args.model),
            args.file,
            bars=args.bars,
            controls=controls,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            guidance=args.guidance,
            key_lock=args.key_lock,
            head_guidance=args.head_guidance,
            meter_guidance=args.meter_guidance,
            candidates=args.candidates,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        res.score.dump_midi(str(args.out))
    except ToolError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(f"error: cannot write {args.out}: {err}\n")
        return 2
    _write(
        f"wrote {args.out}: the prompt plus {args.bars} bar(s) of {res.meter} ({res.meter_source}) from beat "
        f"{res.start_beat:g}, {res.n_notes} new notes"
    )
    return 0


def add_parsers(subparsers) -> None:
    """Register `analyze` and `generate` on an argparse subparsers object."""
    a = subparsers.add_parser(
        "analyze",
        help="key, meter (and emotion, when the model has an emotion head) of a MIDI file, with confidences",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("file", type=Path, help="a MIDI file")
    a.add_argument("--model", type=Path, help="exported model dir or checkpoint (default: the shipped model)")
    a.add_argument(
        "--emotion-model",
        type=Path,
        help="a separate exported emotion classifier (default: the model's own emotion head, if it has one)",
    )
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument(
        "--quick",
        action="store_true",
        help="hear the piece once for the key, not in 12 transpositions (about 11x faster; as the bridge hears it)",
    )
    a.set_defaults(func=_analyze_cmd)
    g = subparsers.add_parser(
        "generate",
        help="continue a MIDI file by N bars",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("file", type=Path, help="the prompt, a MIDI file")
    g.add_argument("--bars", type=int, required=True, help="bars of the meter to add")
    g.add_argument("--out", type=Path, required=True, help="output MIDI: the prompt, then the continuation")
    g.add_argument("--model", type=Path, help="exported model dir or checkpoint (default: the shipped model)")
    add_generation_flags(g, meter_help=" and bar length (default: the model's estimate)")
    g.add_argument(
        "--candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help="write this many continuations and keep the one the model's own analysis hears most in --key "
        "and the meter's family "
        f"(default: {DEFAULT_CANDIDATES}; costs that many generations)",
    )
    g.set_defaults(func=_generate_cmd)


def add_generation_flags(p, meter_help: str = "") -> None:
    """The flags of a command that samples music (generate, infill): the control kinds (analysis.CONTROLS),
    temperature, top-p, seed, guidance, key lock and head guidance."""
    for kind in analysis.CONTROLS:
        p.add_argument(f"--{kind.name}", help=kind.help + (meter_help if kind.name == "meter" else ""))
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--guidance",
        type=float,
        default=sampling.DEFAULT_GUIDANCE,
        help=f"classifier-free guidance weight for the controls (default: {sampling.DEFAULT_GUIDANCE:g}; 1 = off; "
        "with controls each token costs a second decode)",
    )
    p.add_argument("--key-lock", action="store_true", help="only pitches of --key's scale")
    p.add_argument(
        "--head-guidance",
        type=float,
        default=key_steering.DEFAULT_HEAD_GUIDANCE,
        help=f"steer the pitches toward --key by the model's own ear for keys (default: "
        f"{key_steering.DEFAULT_HEAD_GUIDANCE:g}; 0 = off; each pitch costs "
        f"{key_steering.CANDIDATES} more decode steps)",
    )
    p.add_argument(
        "--meter-guidance",
        type=float,
        default=meter_steering.DEFAULT_METER_GUIDANCE,
        help=f"accent the bars of --meter: onsets on its strong positions, long notes on the downbeat "
        f"(default: {meter_steering.DEFAULT_METER_GUIDANCE:g}; 0 = off; acts only with --meter)",
    )


def run_cli(argv: list[str] | None = None, prog: str = "python -m typemoe.commands.tools") -> int:
    """`python -m typemoe.commands.tools analyze|generate ...`. Deliberately not called `main`: typemoe/cli.py calls a
    module's main(argv-after-the-command), and this module registers two commands via add_parsers."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(prog=prog)
    add_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli())
