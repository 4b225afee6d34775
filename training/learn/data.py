"""Training windows and batches: pieces in memory -> augmented, labelled, padded token windows.

A sequence is [BOS] + control tokens (conditional fine-tuning only) + a music window that starts at a
Bar token, at most seq_len tokens long. Per sample, in this order:

  1. crop: a random start Bar, chosen so that long pieces give full windows and short pieces start at
     their first bar (one window per piece visit: pieces are sampled, not windows, so a corpus of
     short folk tunes and long chorales is seen piece by piece);
  2. grid phase shift by 0-3 beats (the 4-beat Bar grid is the performer's, not the notation's, so no head
     may learn meter from where Bars fall); or, for a share `own_bars` of a metered piece's windows, its bars
     re-split into bars of its meter from one of its bar lines on (meter_bars: the bars the decoder writes
     a continuation in that meter in);
  3. transposition by k semitones on Pitch ids (the key label moves with it; k is clipped so that every
     pitch of the window stays in the vocabulary's range).

Determinism, the property resume and DDP rest on: the global sample stream is a pure function of
(seed, step). Global sample g = step * batch_size + i visits piece perm_epoch[g % n] with
epoch = g // n, and every random choice of that sample comes from np.random.default_rng((seed, g)).
Rank r of W takes samples [r * B / W, (r + 1) * B / W) of each global batch. So the data order does not
depend on the number of ranks, and the sampler's whole state is the step (SamplerState keeps it
explicitly for the checkpoint).

Labels are class indices, -1 = missing. The pieces come from token shards (training/data/shards.py,
`load_pieces`); the rest of this module only needs the small `Pieces` container below.

Augmentation is done on ids here rather than with training/learn/augment.py, on purpose: transposition is
clipped to the window's pitch range instead of dropping notes, so a transposed window has exactly the
positions of the original (the key-consistency term compares them position by position), and the phase
shift is an id rewrite instead of a decode + re-encode (~100x cheaper per sample). tests/test_training.py
checks both against training/learn/augment.py.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from typemoe import analysis
from typemoe.training.data.rebar import piece_bar_ticks, resplit_bars
from typemoe.training.data.sources import location_free
from typemoe.training.learn import infill_data
from typemoe.training.learn.humanize import Humanizer
from typemoe.vocab import BEATS_PER_BAR, FAMILIES, TypedVocab


@dataclass
class Pieces:
    """The corpus in memory: token ids per piece (no BOS), labels per task, split per piece."""

    ids: list[str]
    tokens: list[np.ndarray]  # each (L_i,) int64 REMI ids
    labels: dict[str, np.ndarray]  # task -> (N,) int64 class index, -1 = missing
    label_names: dict[str, tuple[str, ...]]  # task -> class names (index = class)
    split: np.ndarray  # (N,) str: "train" | "val" | "test"
    vocab_hash: str = ""

    def __post_init__(self) -> None:
        n = len(self.ids)
        assert len(self.tokens) == n and len(self.split) == n, (
            "ids, tokens and split must have one entry per piece"
        )
        for task, lab in self.labels.items():
            assert lab.shape == (n,), f"labels[{task!r}] has shape {lab.shape}, want ({n},)"

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, task: str) -> np.ndarray:
        """(N,) labels of a task, all -1 when the data has none."""
        return self.labels.get(task, np.full(len(self), -1, dtype=np.int64))

    def subset(self, mask: np.ndarray) -> Pieces:
        keep = np.flatnonzero(mask)
        return Pieces(
            ids=[self.ids[i] for i in keep],
            tokens=[self.tokens[i] for i in keep],
            labels={t: v[keep] for t, v in self.labels.items()},
            label_names=dict(self.label_names),
            split=self.split[keep],
            vocab_hash=self.vocab_hash,
        )

    def with_split(self, name: str) -> Pieces:
        return self.subset(self.split == name)


def hash_fraction(piece_id: str, salt: str = "labels") -> float:
    """A stable number in [0, 1) per piece id (not Python's salted hash())."""
    h = hashlib.sha1(f"{salt}:{piece_id}".encode()).hexdigest()[:12]
    return int(h, 16) / 16**12


def keep_label_fraction(pieces: Pieces, fraction: float, tasks=("key", "meter")) -> Pieces:
    """Forget the `tasks` labels of all but `fraction` of the pieces, chosen by piece id (not by run)."""
    if fraction >= 1.0:
        return pieces
    keep = np.array([hash_fraction(i) < fraction for i in pieces.ids], dtype=bool)
    labels = dict(pieces.labels)
    for t in tasks:
        if t in labels:
            labels[t] = np.where(keep, labels[t], -1)
    return Pieces(
        ids=pieces.ids,
        tokens=pieces.tokens,
        labels=labels,
        label_names=pieces.label_names,
        split=pieces.split,
        vocab_hash=pieces.vocab_hash,
    )


def load_pieces(dirs, vocab: TypedVocab) -> Pieces:
    """Every piece of one or more shard directories, in memory (int64 ids, a few bytes per token).

    Raises:
        ValueError (training.shards.ShardError): not a shard directory, or tokenized with another
            vocabulary (manifest hash != vocab.hash); shard sets with different label names.
    """
    from typemoe.training.data.shards import ShardSet
    from typemoe.training.data.sources import SPLITS

    ids, tokens, split, labels = [], [], [], {t: [] for t in analysis.LABELS}
    names: dict[str, tuple[str, ...]] | None = None
    for d in dirs:
        shards = ShardSet(d, vocab=vocab)
        these = {t: tuple(v) for t, v in shards.label_names.items()}
        if names is not None and these != names:
            raise ValueError(f"{d}: label names differ from the first shard directory's ({these} vs {names})")
        names = these
        ids += [
            f"{location_free(shards.sources[shards.source[i]])}:{shards.ids[i]}" for i in range(len(shards))
        ]
        tokens += [np.asarray(shards.tokens_of(i), dtype=np.int64) for i in range(len(shards))]
        split += [SPLITS[int(s)] for s in shards.split]
        for t in analysis.LABELS:
            labels[t].append(
                np.asarray(shards.labels[t], dtype=np.int64)
                if t in shards.labels
                else np.full(len(shards), -1, dtype=np.int64)
            )
    return Pieces(
        ids=ids,
        tokens=tokens,
        labels={t: np.concatenate(v) if v else np.zeros(0, np.int64) for t, v in labels.items()},
        label_names=names or {},
        split=np.asarray(split, dtype=object),
        vocab_hash=vocab.hash,
    )


# ---------------------------------------------------------------------------------------------- token ops


class TokenOps:
    """The few facts about the vocabulary that augmentation needs, as numpy tables."""

    def __init__(self, vocab: TypedVocab):
        toks = vocab.tokens
        self.bar = vocab.id("Bar_None")
        self.bos, self.pad = vocab.bos_id, vocab.pad_id
        pitch = {i: int(t.split("_")[1]) for i, t in enumerate(toks) if t.startswith("Pitch_")}
        self.pitch_lo, self.pitch_hi = min(pitch), max(pitch)  # contiguous ids, ascending MIDI pitch
        assert list(pitch) == list(range(self.pitch_lo, self.pitch_hi + 1)), "Pitch ids must be contiguous"
        pos = {i: int(t.split("_")[1]) for i, t in enumerate(toks) if t.startswith("Position_")}
        self.pos_lo = min(pos)
        self.n_pos = len(pos)  # positions per bar: 4 beats x 4 ticks
        assert list(pos) == list(range(self.pos_lo, self.pos_lo + self.n_pos)), (
            "Position ids must be contiguous"
        )
        self.ticks_per_beat = self.n_pos // BEATS_PER_BAR
        family = np.asarray(vocab.family_of)
        self.is_control = family == FAMILIES.index("control")  # (V,) specials, controls
        self.no_target = self.is_control & ~infill_data.loss_targets(vocab)  # (V,) Infill_End is a target
        self.is_rhythm = np.isin(family, [FAMILIES.index(f) for f in ("Bar", "Position", "Duration")])  # (V,)
        self.control_ids = vocab.control_ids

    def is_pitch(self, ids):
        return (ids >= self.pitch_lo) & (ids <= self.pitch_hi)

    def transpose_range(self, ids: np.ndarray, limit: int) -> tuple[int, int]:
        """Semitone shifts in [-limit, limit] that keep every pitch of `ids` in the vocabulary."""
        p = ids[self.is_pitch(ids)]
        if p.size == 0:
            return 0, 0
        return max(-limit, self.pitch_lo - int(p.min())), min(limit, self.pitch_hi - int(p.max()))

    def phase_shift(self, ids: np.ndarray, beats: int) -> np.ndarray:
        """Move every event `beats` beats later against the Bar grid; ids must start at a Bar.

        Position p of bar b becomes absolute tick b * n_pos + p + beats * ticks_per_beat, re-split into
        (bar, position). Bar tokens are re-emitted (empty bars included); durations are untouched, so the
        result is what the tokenizer gives for the same notes played `beats` beats later.
        """
        if beats == 0:
            return ids
        return resplit_bars(
            ids,
            bar=self.bar,
            pos_lo=self.pos_lo,
            n_pos=self.n_pos,
            bar_ticks=self.n_pos,
            shift=beats * self.ticks_per_beat,
        )


# ---------------------------------------------------------------------------------------------- samples


@dataclass
class Sample:
    ids: np.ndarray  # (T,) int64: BOS + controls + music
    head_from: int  # first position at which the key/meter heads are trained
    shift: int  # semitones the music was transposed by
    labels: dict[str, int]  # task -> class (key already transposed), -1 = missing
    piece: int  # index into Pieces
    head_to: int | None = None  # the heads are trained on positions [head_from, head_to); None = the end
    rhythm_targets: bool = True  # False: collate drops its Bar/Position/Duration next-token targets


def make_sample(
    pieces: Pieces,
    i: int,
    rng: np.random.Generator | None,
    *,
    ops: TokenOps,
    seq_len: int,
    transpose: int = 0,
    phase_shift: bool = False,
    head_start_bar: int = 2,
    controls: bool | float = False,
    control_dropout: float = 0.0,
    control_window: int = 0,
    control_start_p: float = 0.0,
    key_move_p: float = 0.0,
    humanizer: Humanizer | None = None,
    own_bars: float = 0.0,
    bar_ticks: int = 0,
    clean_rhythm: bool = False,
    tasks=analysis.LABELS,
) -> Sample:
    """One window of piece i; rng=None gives the deterministic view (first bar, no augmentation).

    controls: True = the window carries its control prefix; a float p = it does with probability p
    (drawn from rng; the deterministic view then carries none). A window with controls is at most
    `control_window` tokens long (0 = seq_len) and starts at the piece's first bar with probability
    `control_start_p` (config.py says why). The heads are trained only on windows
    without a prefix (head_from = the end), so they learn to read the music, not the answer.

    own_bars: the probability that the window is written in bars of its piece's meter, `bar_ticks` grid
    ticks long (0 or 4 beats: never), from a bar line of that meter on (meter_bars); such a window has no
    phase shift, and its heads learn only from the 4-beat bars before that line (analysis reads music in
    REMI's 4-beat bars, so no head may learn meter from a bar's length).

    clean_rhythm: when the humanizer redrew the window's rhythm (onsets jittered, durations rescaled), the
    sample says so (rhythm_targets=False) and collate drops its Bar, Position and Duration targets: the
    heads still learn to read a performer's touch, and the next-token loss still learns every pitch after
    it, but the decoder does not learn to write the jitter (trained without this, it writes more than twice the
    corpus's share of notes between the eighths; docs/GPU.md, "Clean rhythm targets").
    """
    tokens = pieces.tokens[i]
    labels = {t: int(pieces.label(t)[i]) for t in tasks}
    bars = np.flatnonzero(tokens == ops.bar)
    if not isinstance(controls, bool):
        controls = rng is not None and rng.random() < float(controls)
    n_ctrl_max = 4 if controls else 0
    room = (control_window if controls and control_window else seq_len) - 1 - n_ctrl_max  # music that fits
    own = False
    if rng is None or bars.size == 0:
        start = int(bars[0]) if bars.size else 0
        beats, k = 0, 0
    else:
        last_ok = max(int(len(tokens)) - room, 0)
        starts = bars[bars <= last_ok]
        start = int(rng.choice(starts)) if starts.size else int(bars[0])
        if controls and control_start_p > 0 and rng.random() < control_start_p:
            start = int(bars[0])
        own = own_bars > 0 and 0 < bar_ticks != ops.n_pos and rng.random() < own_bars
        beats = int(rng.integers(0, 4)) if phase_shift and not own else 0
        k = 0
        if transpose:
            lo, hi = ops.transpose_range(tokens[start : start + room + 8], transpose)
            k = int(rng.integers(lo, hi + 1))
    music = tokens[start : start + room + 8]  # a little slack: the phase shift may add Bar tokens
    redrawn = False
    if humanizer is not None and rng is not None:
        music, redrawn = humanizer.humanize(music, rng)
    n_four = None  # 4-beat bars before an own-bars window's switch
    if own:
        music, switch = meter_bars(music, ops, int(np.searchsorted(bars, start)), bar_ticks, rng)
        music, n_four = music[:room], -(-switch // ops.n_pos)
    else:
        music = ops.phase_shift(music, beats)[:room]
    if k:
        music = np.where(ops.is_pitch(music), music + k, music)
    if labels.get("key", -1) >= 0 and k:
        labels["key"] = (labels["key"] % 12 + k) % 12 + 12 * (labels["key"] // 12)
    if controls and rng is not None and labels.get("key", -1) >= 0 and rng.random() < key_move_p:
        music = _move_opening(music, rng, ops)
    ctrl: list[int] = []
    if controls:
        names = pieces.label_names
        for task in (kind.name for kind in analysis.CONTROLS):  # the registry's order (the rng's too)
            c = labels.get(task, -1)
            if c < 0 or task not in names or (rng is not None and rng.random() < control_dropout):
                continue
            with contextlib.suppress(KeyError, ValueError):  # a class without a control token: skip it
                ctrl += ops.control_ids(**{task: names[task][c]})
    ids = np.concatenate([[ops.bos], ctrl, music]).astype(np.int64)
    bar_pos = np.flatnonzero(ids == ops.bar)
    head_from = int(bar_pos[head_start_bar - 1]) if bar_pos.size >= head_start_bar else len(ids)
    if ctrl:
        head_from = len(ids)  # a head that sees Key_X in its context would learn to copy it
    head_to = None
    if n_four is not None:  # what precedes the first bar of the meter is in REMI's 4-beat bars
        head_to = int(bar_pos[n_four]) if bar_pos.size > n_four else len(ids)
    return Sample(
        ids=ids,
        head_from=head_from,
        shift=k,
        labels=labels,
        piece=i,
        head_to=head_to,
        rhythm_targets=not (clean_rhythm and redrawn),
    )


def meter_bars(
    music: np.ndarray, ops: TokenOps, bar_index: int, bar_ticks: int, rng
) -> tuple[np.ndarray, int]:
    """A window of 4-beat REMI bars that opens at the piece's bar `bar_index` -> the same notes in the bars
    the decoder writes a continuation of the piece's meter in (typemoe.grammar_tables.BarPlan): 4-beat bars
    until one of the meter's bar lines (bar_ticks apart from the piece's start) in the first half of the
    window, picked at random, the first one most often, then bars of bar_ticks. A bare prompt in that
    meter is the window switched at its first bar line; a prompt continued in its meter, a later one.
    Returns the ids and the switch's tick in the window."""
    n_pos = ops.n_pos
    first = -(bar_index * n_pos) % bar_ticks  # window tick of the first bar line of the meter
    n_bars = max(int((music == ops.bar).sum()), 1)
    lines = np.arange(first, max(n_bars * n_pos // 2, first + 1), bar_ticks)
    switch = int(lines[0]) if rng.random() < 0.5 else int(rng.choice(lines))
    ids = resplit_bars(music, bar=ops.bar, pos_lo=ops.pos_lo, n_pos=n_pos, bar_ticks=bar_ticks, switch=switch)
    return ids, switch


def _move_opening(music: np.ndarray, rng: np.random.Generator, ops: TokenOps) -> np.ndarray:
    """Transpose the music before a bar line a quarter to two thirds in by a random non-zero interval, so
    the window starts in another key and arrives in the labelled one (the control's) at that bar."""
    bars = np.flatnonzero(music == ops.bar)
    cut = bars[(bars >= len(music) // 4) & (bars <= 2 * len(music) // 3)]
    if cut.size == 0:
        return music
    at = int(rng.choice(cut))
    lo, hi = ops.transpose_range(music[:at], 6)
    steps = [d for d in range(lo, hi + 1) if d != 0]
    if not steps:
        return music
    d = int(rng.choice(steps))
    head = np.where(ops.is_pitch(music[:at]), music[:at] + d, music[:at])
    return np.concatenate([head, music[at:]])


@dataclass
class Batch:
    """A padded micro-batch. Pads go on the right; targets are -1 where nothing is to be predicted."""

    idx: torch.Tensor  # (B, T) long input ids
    targets: torch.Tensor  # (B, T) long next ids, -1 on pads and control tokens
    valid: torch.Tensor  # (B, T) bool, real tokens
    head: torch.Tensor  # (B, T) bool, positions where key/meter heads are trained
    last: torch.Tensor  # (B,) long, last real position (the whole-window view)
    shift: torch.Tensor  # (B,) long, transposition in semitones
    labels: dict[str, torch.Tensor] = field(default_factory=dict)  # task -> (B,) long, -1 missing
    n_tokens: int = 0  # real tokens in the batch

    def to(self, device) -> Batch:
        mv = {k: v.to(device, non_blocking=True) for k, v in self.labels.items()}
        return Batch(
            self.idx.to(device),
            self.targets.to(device),
            self.valid.to(device),
            self.head.to(device),
            self.last.to(device),
            self.shift.to(device),
            mv,
            self.n_tokens,
        )


def collate(samples: list[Sample], ops: TokenOps) -> Batch:
    """Pad to the longest sample (dynamic padding: short folk tunes do not pay for long chorales)."""
    B, T = len(samples), max(len(s.ids) for s in samples)
    idx = np.full((B, T), ops.pad, dtype=np.int64)
    valid = np.zeros((B, T), dtype=bool)
    head = np.zeros((B, T), dtype=bool)
    for b, s in enumerate(samples):
        idx[b, : len(s.ids)] = s.ids
        valid[b, : len(s.ids)] = True
        head[b, s.head_from : len(s.ids) if s.head_to is None else s.head_to] = True
    targets = np.full((B, T), -1, dtype=np.int64)
    nxt = idx[:, 1:]
    ok = valid[:, 1:] & ~ops.no_target[nxt]  # never learn to emit pads, BOS or control tokens
    redrawn = np.array([not s.rhythm_targets for s in samples])[:, None]  # (B, 1) make_sample's clean_rhythm
    ok &= ~(redrawn & ops.is_rhythm[nxt])  # a redrawn rhythm is read, not learned
    targets[:, :-1] = np.where(ok, nxt, -1)
    labels = {t: torch.tensor([s.labels.get(t, -1) for s in samples]) for t in samples[0].labels}
    return Batch(
        idx=torch.from_numpy(idx),
        targets=torch.from_numpy(targets),
        valid=torch.from_numpy(valid),
        head=torch.from_numpy(head),
        last=torch.tensor([len(s.ids) - 1 for s in samples]),
        shift=torch.tensor([s.shift for s in samples]),
        labels=labels,
        n_tokens=int(valid.sum()),
    )


# ---------------------------------------------------------------------------------------------- sampler


@dataclass
class SamplerState:
    """Where the sample stream stands: everything needed to continue it exactly."""

    step: int = 0
    seed: int = 0
    n_pieces: int = 0
    batch_size: int = 0

    def to_dict(self) -> dict:
        return dict(step=self.step, seed=self.seed, n_pieces=self.n_pieces, batch_size=self.batch_size)


def bar_ticks_of(pieces: Pieces) -> np.ndarray:
    """(N,) grid ticks of the bars each piece's meter label is written in (REMI's 4 beats without one)."""
    names, meter = pieces.label_names.get("meter", ()), pieces.label("meter")
    return np.asarray(
        [piece_bar_ticks(names[m] if 0 <= m < len(names) else None) for m in meter], dtype=np.int64
    )


def window_controls(cfg) -> bool | float:
    """Whether training windows carry control tokens: conditional always, pre-training with cfg.control_p,
    classification never (an Emotion_* prefix would hand the classifier its label)."""
    if cfg.task == "conditional":
        return True
    return float(cfg.control_p) if cfg.task == "pretrain" and cfg.control_p > 0 else False


N_TONICS = len(analysis.TONICS)  # analysis.KEYS: index = tonic pitch class + N_TONICS * minor


def epoch_pieces(pieces: Pieces, minor_share: float) -> np.ndarray:
    """The piece indices of one epoch, before shuffling: every piece once, and the pieces labelled with a
    minor key repeated (in order, cycling) until they make about `minor_share` of the key-labelled ones."""
    every = np.arange(len(pieces))
    key = pieces.label("key")
    minor = np.flatnonzero(key >= N_TONICS)
    n_major = int(((key >= 0) & (key < N_TONICS)).sum())
    if minor_share <= 0 or len(minor) == 0 or n_major == 0:
        return every
    want = round(minor_share / (1.0 - minor_share) * n_major)  # minor slots for that share
    extra = want - len(minor)
    return every if extra <= 0 else np.concatenate([every, np.resize(minor, extra)])


class WindowSampler:
    """The deterministic, rank-sharded stream of training windows (see the module docstring)."""

    def __init__(self, pieces: Pieces, vocab: TypedVocab, cfg, *, rank: int = 0, world: int = 1):
        if len(pieces) == 0:
            raise ValueError("empty dataset: no training pieces")
        self.pieces, self.ops, self.cfg = pieces, TokenOps(vocab), cfg
        self.rank, self.world = rank, world
        self.micro_steps = cfg.check_world(world)
        self.state = SamplerState(seed=cfg.seed, n_pieces=len(pieces), batch_size=cfg.batch_size)
        self.humanizer = Humanizer(vocab) if cfg.humanize else None
        self.fim = infill_data.FimOps(vocab) if getattr(cfg, "infill_p", 0) > 0 else None
        self._epoch = epoch_pieces(pieces, getattr(cfg, "minor_share", 0.0))  # (N,) before shuffling
        # (N,) grid ticks of each piece's meter's bars; read only by own-bars windows
        self._bar_ticks = (
            bar_ticks_of(pieces) if getattr(cfg, "own_bars", 0) > 0 else np.zeros(len(pieces), int)
        )
        self._perm_epoch, self._perm = -1, None

    def load_state(self, d: dict) -> None:
        """Continue a saved stream; the piece count, seed and batch size must be the same."""
        want = SamplerState(**d)
        have = self.state
        if (want.seed, want.n_pieces, want.batch_size) != (have.seed, have.n_pieces, have.batch_size):
            raise ValueError(
                f"cannot resume: sampler was seed={want.seed}, pieces={want.n_pieces}, "
                f"batch_size={want.batch_size}; now seed={have.seed}, pieces={have.n_pieces}, "
                f"batch_size={have.batch_size} (did the data change?)"
            )
        self.state.step = want.step

    def _piece_of(self, g: int) -> int:
        n = len(self._epoch)
        epoch = g // n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.cfg.seed, 7919, epoch)).permutation(n)
            self._perm_epoch = epoch
        return int(self._epoch[self._perm[g % n]])

    def sample(self, g: int) -> Sample:
        cfg = self.cfg
        i = self._piece_of(g)
        s = make_sample(
            self.pieces,
            i,
            np.random.default_rng((cfg.seed, g)),
            ops=self.ops,
            seq_len=cfg.seq_len,
            transpose=cfg.transpose,
            phase_shift=cfg.phase_shift,
            head_start_bar=cfg.loss.head_start_bar,
            controls=window_controls(cfg),
            control_dropout=cfg.control_dropout,
            control_window=cfg.control_window,
            control_start_p=cfg.control_start_p,
            key_move_p=cfg.key_move_p,
            humanizer=self.humanizer,
            own_bars=getattr(cfg, "own_bars", 0.0),
            bar_ticks=int(self._bar_ticks[i]),
            clean_rhythm=getattr(cfg, "clean_rhythm", False),
        )
        rng = np.random.default_rng((cfg.seed, g, infill_data.SALT))
        return infill_data.maybe_fim(s, self.fim, cfg.infill_p, cfg.seq_len, rng)

    def indices(self, step: int) -> range:
        """The global sample indices of this rank's share of `step`."""
        B, per_rank = self.cfg.batch_size, self.cfg.batch_size // self.world
        g0 = step * B + self.rank * per_rank
        return range(g0, g0 + per_rank)

    def batches(self, samples: list[Sample]) -> list[Batch]:
        """One step's samples as micro-batches."""
        mb = self.cfg.micro_batch
        # similar lengths share a micro-batch: less padding, and the step's sums are the same (up to rounding)
        samples = sorted(samples, key=lambda s: len(s.ids))
        return [collate(samples[m * mb : (m + 1) * mb], self.ops) for m in range(self.micro_steps)]

    def next_step(self) -> list[Batch]:
        """This rank's micro-batches for the current step; advances the state by one step."""
        batches = self.batches([self.sample(g) for g in self.indices(self.state.step)])
        self.state.step += 1
        return batches


def eval_batches(pieces: Pieces, vocab: TypedVocab, cfg, *, rank: int = 0, world: int = 1) -> list[Batch]:
    """Deterministic validation batches: the first eval_pieces pieces, one unaugmented window each,
    this rank's share [rank::world]. Controls are kept (all of them) when the task is conditional."""
    ops = TokenOps(vocab)
    n = min(len(pieces), cfg.eval_pieces)
    mine = list(range(rank, n, world))
    samples = [
        make_sample(
            pieces,
            i,
            None,
            ops=ops,
            seq_len=cfg.seq_len,
            head_start_bar=cfg.loss.head_start_bar,
            controls=cfg.task == "conditional",
        )
        for i in mine
    ]
    return [collate(samples[j : j + cfg.micro_batch], ops) for j in range(0, len(samples), cfg.micro_batch)]
