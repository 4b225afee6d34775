"""`typemoe analyze` and `typemoe generate`: a model on one MIDI file, from the command line.

    typemoe analyze tune.mid [--model DIR] [--emotion-model DIR] [--json]
        key: G major (0.93)
        meter: 6/8 (0.88)
        emotion: Q4 (0.61) high valence, low arousal (calm, relaxed)
    typemoe generate tune.mid --bars 8 --key "E minor" --temperature 0.9 --seed 1 --out tune_more.mid

Torch-free: both run an exported model directory through export.runtime (numpy + onnxruntime). Given a
PyTorch checkpoint instead (a training --out dir or a checkpoint dir), they fall back to the torch
model (typemoe.model + typemoe.sample's sampling rule) when torch is installed. No --model: the shipped
default, typemoe/default_model.

analyze reads the piece the way the model was trained to (all pitched tracks merged, time and key
signatures ignored) and reports the key and meter heads at the last token of the first context_len
tokens, with their probabilities as confidences. When an emotion classifier is at hand it also reports the
piece's EMOPIA quadrant (Q1..Q4, the class head pooled over the same tokens): --emotion-model DIR, else the
`emotion/` sub-directory of the model directory (typemoe/default_model/emotion/ for the shipped model; see
typemoe/shipped.py). Without one the output has no emotion line. The sub-model is an exported model
directory with its own manifest, verified at load like the main one: a corrupt file is refused by name.

generate writes the prompt file unchanged (every track, tempo and timing as it was) plus one new
track holding the continuation: `--bars` whole 4-beat bars starting at the first bar line after the
prompt's last note. Control tokens (--key, --meter, --genre, --emotion) go before the music, as in
conditional fine-tuning; a model not fine-tuned with them is free to ignore them.

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

from typemoe import analysis
from typemoe.shipped import default_model_dir, emotion_dir
from typemoe.vocab import FAMILIES

log = logging.getLogger(__name__)
_BAR, _CONTROL = FAMILIES.index("Bar"), FAMILIES.index("control")

CONTINUATION_TRACK = "TypeMoE continuation"
TOKENS_PER_BAR_CAP = 256
BEATS_PER_BAR = 4


class ToolError(ValueError):
    """A bad input file, model or option, named in the message."""


@dataclass
class Heads:
    logits: np.ndarray  # (V,)
    key_probs: np.ndarray
    meter_probs: np.ndarray


# --------------------------------------------------------------------------- models


def _checkpoint_dir(path: Path) -> Path | None:
    for d in (path, path / "latest"):
        if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
            return d
    return None


def open_model(path: Path | None):
    """An export.runtime.OrtModel, or a _TorchModel for a PyTorch checkpoint. Raises ToolError."""
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
    from export.runtime import MANIFEST_FILE, ModelDirError, OrtModel

    if (path / MANIFEST_FILE).is_file():
        try:
            return OrtModel(path, provider="auto")
        except ModelDirError as err:
            raise ToolError(str(err)) from err
    ckpt = _checkpoint_dir(path)
    if ckpt is None:
        raise ToolError(
            f"{path} is neither an exported model directory ({MANIFEST_FILE}) nor a TypeMoE "
            "checkpoint (config.json + model.safetensors, or a training run with latest/)"
        )
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise ToolError(
            f"{path} is a PyTorch checkpoint and torch is not installed; export it to ONNX "
            "(`typemoe export`) or install the train extra"
        ) from err
    return _TorchModel(ckpt)


def open_emotion_model(path: Path | None, *, model: Path | None = None):
    """The emotion classifier for analyze, an export.runtime.OrtModel, or None when there is none.

    Args:
        path: an exported emotion model directory (--emotion-model); None: the `emotion/` sub-directory of
            `model`, or of the shipped default model when `model` is None, if that sub-directory exists.
        model: the --model path of the main model.
    Raises:
        ToolError: the directory is missing (when given), corrupt (naming the file) or has no Q1..Q4 head.
    """
    if path is None:
        path = emotion_dir(default_model_dir() if model is None else model)
        if not path.is_dir():
            return None
    path = Path(path)
    if not path.exists():
        raise ToolError(f"emotion model {path} does not exist")
    from export.runtime import ModelDirError, OrtModel

    try:
        emo = OrtModel(path, provider="auto")
    except ModelDirError as err:
        raise ToolError(f"emotion model: {err}") from err
    names = emo.class_names
    if not names or not set(names) <= set(analysis.EMOTIONS):
        raise ToolError(
            f"emotion model {path} has no emotion head (its classes: {names}); pass a model exported from "
            "`typemoe finetune --task emotion`"
        )
    return emo


class _TorchModel:
    """The slice of export.runtime.OrtModel these tools use, for a PyTorch checkpoint."""

    def __init__(self, ckpt_dir: Path):
        from typemoe import checkpoint
        from typemoe.vocab import TypedVocab

        self.model = checkpoint.load(ckpt_dir)
        _, _, meta = checkpoint.read_config(ckpt_dir)
        self.vocab = TypedVocab.load(ckpt_dir)
        self.context_len = self.model.cfg.context_len
        self.key_names = list(meta.get("key_names") or analysis.KEYS)
        self.meter_names = list(meta.get("meter_names") or analysis.METERS[: self.model.cfg.n_meters])

    def session(self) -> _TorchSession:
        return _TorchSession(self)


class _TorchSession:
    """feed / generate on a torch KV cache, with export.runtime's sliding and grammar rules."""

    def __init__(self, owner: _TorchModel):
        self.owner = owner
        self.tokens: list[int] = []
        self.past = None
        self.last: Heads | None = None

    def _run(self, ids: list[int]) -> Heads:
        import torch

        m = self.owner.model
        with torch.inference_mode():
            past = self.past if self.past is not None else m.empty_past(1)
            out = m(torch.as_tensor([ids], dtype=torch.long), past=past)
        self.past = out.present
        self.last = Heads(
            out.logits[0, -1].float().numpy(),
            torch.softmax(out.key_logits[0, -1].float(), -1).numpy(),
            torch.softmax(out.meter_logits[0, -1].float(), -1).numpy(),
        )
        return self.last

    def feed(self, ids: Sequence[int]) -> Heads:
        ids = [int(i) for i in ids]
        ctx = self.owner.context_len
        if len(self.tokens) + len(ids) <= ctx:
            self.tokens += ids
            return self._run(ids)
        every = self.tokens + ids  # full: re-prefill the control prefix + the most recent tokens
        vocab = self.owner.vocab
        n_ctrl = 0
        while n_ctrl < min(len(every), ctx // 4) and vocab.family_of[every[n_ctrl]] == _CONTROL:
            n_ctrl += 1
        self.tokens = every[:n_ctrl] + every[n_ctrl:][-(3 * ctx // 4 - n_ctrl) :]
        self.past = None
        return self._run(self.tokens)

    def generate(self, *, n_bars: int, temperature: float, top_p: float, seed: int | None) -> list[int]:
        import torch

        from typemoe.sample import sample_next

        vocab = self.owner.vocab
        gen = torch.Generator()
        gen.manual_seed(seed) if seed is not None else gen.seed()
        out: list[int] = []
        bars = 0
        while len(out) < n_bars * TOKENS_PER_BAR_CAP:
            last = self.tokens[-1] if self.tokens else vocab.bos_id
            allowed = torch.as_tensor(vocab.next_allowed[vocab.family_of[last]])[None]  # (1, V)
            nxt = int(
                sample_next(
                    torch.as_tensor(self.last.logits)[None],
                    temperature=temperature,
                    top_p=top_p,
                    allowed=allowed,
                    generator=gen,
                )[0]
            )
            if vocab.family_of[nxt] == _BAR:
                bars += 1
                if bars >= n_bars:
                    break
            out.append(nxt)
            self.feed([nxt])
        return out


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


def analyze(model, midi: Path, emotion=None) -> dict:
    """{"key", "key_confidence", "meter", "meter_confidence"} of one MIDI file; with an emotion model
    (open_emotion_model) also "emotion" (Q1..Q4), "emotion_confidence" and "emotion_probs" {class: p}."""
    score = read_midi(midi)
    ids = _tokens(model.vocab, score, midi)
    seq = [model.vocab.bos_id, *ids][: model.context_len]
    out = model.session().feed(seq)
    k, m = int(np.argmax(out.key_probs)), int(np.argmax(out.meter_probs))
    res = {
        "key": model.key_names[k],
        "key_confidence": round(float(out.key_probs[k]), 4),
        "meter": model.meter_names[m],
        "meter_confidence": round(float(out.meter_probs[m]), 4),
    }
    if emotion is not None:
        res.update(_emotion(emotion, score, ids if emotion.vocab.hash == model.vocab.hash else None, midi))
    return res


def _emotion(emo, score, ids: list[int] | None, midi: Path) -> dict:
    """The pooled class head over the first context_len tokens, as `typemoe eval` scores it."""
    if ids is None:  # another vocabulary than the main model's
        ids = _tokens(emo.vocab, score, midi)
    probs = emo.session().feed([emo.vocab.bos_id, *ids][: emo.context_len]).class_probs  # (C,)
    probs = np.asarray(probs, dtype=np.float64)
    probs /= probs.sum()
    c = int(np.argmax(probs))
    return {
        "emotion": emo.class_names[c],
        "emotion_confidence": round(float(probs[c]), 4),
        "emotion_probs": {name: round(float(p), 4) for name, p in zip(emo.class_names, probs)},
    }


# --------------------------------------------------------------------------- generate


def continuation_score(
    model, prompt_path: Path, *, bars: int, controls: dict, temperature: float, top_p: float, seed: int | None
):
    """The prompt score with one more track holding `bars` generated bars. Returns (score, n_new_notes)."""
    import symusic

    if bars < 1:
        raise ToolError(f"--bars must be >= 1, got {bars}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ToolError(f"need --temperature >= 0 and 0 < --top-p <= 1, got {temperature}, {top_p}")
    vocab = model.vocab
    score = read_midi(prompt_path)
    ids = _tokens(vocab, score, prompt_path)
    try:
        ctrl = vocab.control_ids(**controls)
    except (ValueError, KeyError) as err:
        raise ToolError(f"bad control: {err}") from err
    bar_id = int(np.flatnonzero(vocab.family_of == _BAR)[0])
    # the Bar appended after the prompt opens bar number start_bar (bars count from 0)
    start_bar = sum(1 for i in ids if vocab.family_of[i] == _BAR)
    session = model.session()
    session.feed([vocab.bos_id, *ctrl, *ids, bar_id])
    new = session.generate(n_bars=bars, temperature=temperature, top_p=top_p, seed=seed)
    decoded = vocab.decode([bar_id] * start_bar + [bar_id, *new])  # only the new notes, at their bar
    tpq_in = decoded.ticks_per_quarter
    scale = score.ticks_per_quarter / tpq_in
    track = symusic.Track(CONTINUATION_TRACK, 0, False)
    start = start_bar * BEATS_PER_BAR * tpq_in
    for t in decoded.tracks:
        for n in t.notes:
            if n.time >= start:
                track.notes.append(
                    symusic.Note(
                        int(round(n.time * scale)),
                        max(1, int(round(n.duration * scale))),
                        n.pitch,
                        n.velocity,
                    )
                )
    out = score.copy()
    out.tracks.append(track)
    return out, len(track.notes)


# --------------------------------------------------------------------------- CLI


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def _analyze_cmd(args: argparse.Namespace) -> int:
    try:
        model = open_model(args.model)
        emotion = open_emotion_model(args.emotion_model, model=args.model)
        res = analyze(model, args.file, emotion)
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
    controls = {"key": args.key, "meter": args.meter, "genre": args.genre, "emotion": args.emotion}
    try:
        score, n_new = continuation_score(
            open_model(args.model),
            args.file,
            bars=args.bars,
            controls=controls,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        score.dump_midi(str(args.out))
    except ToolError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(f"error: cannot write {args.out}: {err}\n")
        return 2
    _write(f"wrote {args.out}: the prompt plus {args.bars} bar(s), {n_new} new notes")
    return 0


def add_parsers(subparsers) -> None:
    """Register `analyze` and `generate` on an argparse subparsers object."""
    a = subparsers.add_parser(
        "analyze",
        help="key, meter (and emotion, with an emotion model) of a MIDI file, with confidences",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("file", type=Path, help="a MIDI file")
    a.add_argument("--model", type=Path, help="exported model dir or checkpoint (default: the shipped model)")
    a.add_argument(
        "--emotion-model",
        type=Path,
        help="exported emotion classifier dir (default: the emotion/ sub-dir of the model dir, if any)",
    )
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=_analyze_cmd)
    g = subparsers.add_parser(
        "generate",
        help="continue a MIDI file by N bars",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("file", type=Path, help="the prompt, a MIDI file")
    g.add_argument("--bars", type=int, required=True, help="bars (4 beats each) to add")
    g.add_argument("--out", type=Path, required=True, help="output MIDI: the prompt, then the continuation")
    g.add_argument("--model", type=Path, help="exported model dir or checkpoint (default: the shipped model)")
    g.add_argument("--key", help='control token, e.g. "E minor"')
    g.add_argument("--meter", help='control token, e.g. "6/8"')
    g.add_argument("--genre", help=f"control token: {', '.join(analysis.GENRES)}")
    g.add_argument("--emotion", help="control token: Q1..Q4")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int)
    g.set_defaults(func=_generate_cmd)


def run_cli(argv: list[str] | None = None, prog: str = "python -m export.tools") -> int:
    """`python -m export.tools analyze|generate ...`. Deliberately not called `main`: typemoe/cli.py calls a
    module's main(argv-after-the-command), and this module registers two commands via add_parsers."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    p = argparse.ArgumentParser(prog=prog)
    add_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli())
