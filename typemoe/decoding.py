"""The one decoder: grammar state, context sliding, sampling and steering, for every backend.

Torch-free (numpy only). A backend is an `Engine`, a model that runs ids on a KV cache it owns; `Session`
turns it into a stream of tokens and holds every decoding decision once:

    session = Session(engine)               # export.runtime.OrtModel or typemoe.torch_session.TorchEngine
    out = session.feed([bos, *controls, *music])       # prefill; the context slides when full
    ids = session.generate(n_bars=4, meter="3/4", guidance=2.0, key_lock="F# major", seed=1)

- Grammar: the family of the last token picks a row of `next_allowed` (valid REMI); Positions never go
  back within a bar (strict_positions); the same pitch is never emitted twice at one position.
- Sliding: when the context would overflow, the cache is rebuilt from the leading control tokens (BOS, Key_,
  Meter_, ...) plus the most recent tokens, 3/4 of the context in all. Cached keys carry absolute RoPE
  positions, so they cannot be shifted, only re-prefilled.
- Sampling (typemoe.sampling): temperature (0 = greedy) and nucleus top-p, from a seeded numpy generator,
  so two backends with equal logits pick equal ids.
- Classifier-free guidance (typemoe.sampling.guide): logits = uncond + g * (cond - uncond), uncond from a
  second KV-cached stream whose context lacks the control tokens (g = 1: off, no second stream).
- Head guidance (typemoe.key_steering): at a Pitch step the six likeliest pitches are scored by the model's
  own ear for keys (its key head on a stream that holds only the new music, fused with those notes' pitch
  classes by the engine's key reader when it has a key fusion), and the rest dropped; on by default where a
  Key control is present.
- Key lock: Pitch ids outside the scale of a key are masked (a hard guarantee, separate from guidance).
- Meter-aware bars: a stream fed from a file or a performance has REMI's 4-beat bars whatever its meter;
  with `meter` the continuation starts on the next bar line of that meter, lasts n_bars bars of it (a time
  window in beats since the stream start, which the session tracks through slides), and is written in
  REMI bars of the meter (grammar_tables.BarPlan: 3 beats for 3/4 and 6/8), so the model's bar-relative
  habits fall on the meter's downbeats. Read its ids with the same plan (typemoe.streaming.TokenReader).
- Hooks: callables (session, logits, allowed) -> None run before each pick and may edit both in place
  (infilling, further constraints).

Dimensions: V vocabulary size, T ids in one run, C classes of the classification head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from typemoe.context_slide import SLIDE_KEEP, from_bar, slide_keep  # noqa: F401  (the decoder's public names)
from typemoe.grammar_tables import (  # noqa: F401  (the decoder's public names)
    SCALES,
    BarPlan,
    Tables,
    meter_beats,
    next_bar_start,
    remi_bar_beats,
    scale_pitch_classes,
    tables_of,
)
from typemoe.key_steering import DEFAULT_HEAD_GUIDANCE, check_head_guidance, key_hooks
from typemoe.meter_steering import DEFAULT_METER_GUIDANCE, check_meter_guidance, meter_hooks
from typemoe.sampling import check_sampling, guide, sample_next, softmax, spill_to_bar
from typemoe.streaming import TokenCursor
from typemoe.vocab import BEATS_PER_BAR

log = logging.getLogger(__name__)

TOKENS_PER_BAR_CAP = 256  # generate(n_bars=...) without n_tokens stops after n_bars * this many ids
Hook = Callable[["Session", np.ndarray, np.ndarray], None]


@dataclass
class StepOut:
    """What the heads say after a feed, at the last fed position."""

    logits: np.ndarray  # (V,) float32 next-token logits
    key_probs: np.ndarray  # (K,) softmax of the key head
    meter_probs: np.ndarray  # (M,) softmax of the meter head
    class_probs: np.ndarray | None  # (C,) softmax of the mean per-position class logits; None without head


class Engine(Protocol):
    """A backend: runs ids on a KV cache. export.runtime.OrtModel and typemoe.torch_session.TorchEngine."""

    vocab: Any  # typemoe.vocab.TypedVocab, or None for a synthetic grammar (tests)
    context_len: int
    # Optional: `key`, a typemoe.key_fusion.KeyReader (export.runtime.OrtModel has one); head guidance
    # scores pitches by its fusion when it has one, else by the key head alone.

    def new_cache(self) -> Any: ...

    def run(self, ids: Sequence[int], past_len: int, cache: Any) -> dict[str, np.ndarray]:
        """Run ids at positions past_len.. on `cache` (updated); heads as (T, *) float arrays:
        logits, key_logits, meter_logits and, with a classification head, per-position cls_logits."""
        ...

    def copy_cache(self, dst: Any, src: Any, n_rows: int) -> None: ...


# --------------------------------------------------------------------------- the session


class Session:
    """One stream of tokens on its own KV cache of an Engine.

    Attributes: tokens (the ids in the cache, in order), n_past, last (StepOut of the last feed, None
    after a rewind), bars (Bar tokens fed since the stream started, slid-out ones included), bar_start
    (the stream beat where the current bar opened: 4 beats per fed bar, the BarPlan's while generating).

    class_probs is the softmax of the mean per-position classification logits over every token fed since
    the session started, each counted once with the row it got when first fed; that equals the model's
    pooled head on the whole stream as long as the stream fits the context.
    """

    def __init__(self, engine: Engine, *, tables: Tables | None = None):
        self.engine = engine
        self.tables = tables if tables is not None else tables_of(engine.vocab)
        self.cache = engine.new_cache()
        self.reset()

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def bars(self) -> int:
        return self._bars

    @bars.setter
    def bars(self, n: int) -> None:
        """Set the time base to n fed bars, REMI's 4 beats each (e.g. after a rebuild that forgot some)."""
        self._bars = int(n)
        self.bar_start = float(max(self._bars - 1, 0) * BEATS_PER_BAR)
        self._bar_history: list[float] = []  # bar_start before each Bar fed since (rewind restores it)

    @property
    def bar_position(self) -> int:
        """Grid position of the last Position in the current bar (where the next note starts), -1 after a
        Bar."""
        return self._bar_position

    def reset(self) -> None:
        """Forget the context (the buffers are reused; rows past n_past are never read)."""
        self.tokens: list[int] = []
        self.last: StepOut | None = None
        self.bars = 0  # also sets bar_start (0: the stream beat of the current bar's Bar) and its history
        self._plan: BarPlan | None = None  # where generated Bars open (set by generate_steps)
        # The Positions past the planned bar's end at this step (generate_steps; None without): a hook that
        # brings another stream's logits spills them the same way (spill_to_bar), as SuffixMix does.
        self.spill: np.ndarray | None = None
        self._cls_rows: list[np.ndarray | None] = []  # (C,) class-logit row per token in self.tokens
        self._cls_total, self._cls_n = 0.0, 0  # sum and count of every counted row, slid-out ones included
        self._bar_position = -1  # grid position of the last Position in the current bar, -1 after a Bar
        self._pitches_here: set[int] = set()  # Pitch ids emitted at the current position
        # The unconditioned twin guidance ran on last (unconditioned()), in a box that forks share.
        self._twin_box: list[Session | None] = [None]

    # ---- feeding -----------------------------------------------------------------------------------
    def feed(self, ids: Sequence[int]) -> StepOut:
        """Run `ids` after the cached tokens and return the heads at the last of them.

        Raises:
            ValueError: empty ids, or an id outside the vocabulary.
        """
        new = [int(i) for i in ids]
        if not new:
            raise ValueError("feed() needs at least one token id")
        V = self.tables.family_of.shape[0]
        bad = [i for i in new if not 0 <= i < V]
        if bad:
            raise ValueError(f"token ids {bad[:5]} outside the vocabulary 0..{V - 1}")
        ctx = self.engine.context_len
        if self.n_past + len(new) <= ctx:  # the common case: append on the cache
            heads = self.engine.run(new, self.n_past, self.cache)
            self.tokens += new
            self._count_cls(heads, len(new), None)
        else:
            every = self.tokens + new
            rows: list[np.ndarray | None] = self._cls_rows + [None] * len(new)  # None: never run yet
            if len(rows) != len(every):  # no classification head: nothing to track
                rows = [None] * len(every)
            keep = slide_keep(every, self.tables.is_control, ctx, lambda i: bool(self.tables.is_bar[i]))
            log.debug("context full (%d + %d > %d): re-prefilling %d", self.n_past, len(new), ctx, len(keep))
            heads = self.engine.run([every[i] for i in keep], 0, self.cache)
            self.tokens = [every[i] for i in keep]
            self._cls_rows = [rows[i] for i in keep]
            self._count_cls(heads, len(keep), self._cls_rows)
        for i in new:
            self._advance(i)
        return self._step_out(heads)

    def _advance(self, i: int) -> None:
        t = self.tables
        if t.is_bar[i]:
            self._bar_history.append(self.bar_start)
            self.bar_start = self.next_bar_start()
            self._bars += 1
            self._bar_position, self._pitches_here = -1, set()
        elif t.position_of[i] >= 0:
            self._bar_position, self._pitches_here = int(t.position_of[i]), set()
        elif t.pitch_of[i] >= 0:
            self._pitches_here.add(i)

    def _count_cls(self, heads: dict[str, np.ndarray], n_run: int, window: list | None) -> None:
        """Add the class-logit rows of tokens that ran for the first time to the running mean.

        Append case (window None): every row just run is new. Slide case: window holds the rows of the
        re-prefilled tokens, None where a token had never run; only those count (once per token).
        """
        if "cls_logits" not in heads:
            return
        cls_TC = np.asarray(heads["cls_logits"], dtype=np.float64)  # (T, C)
        for j in range(n_run):
            if window is None:
                self._cls_rows.append(cls_TC[j])
            elif window[j] is None:
                window[j] = cls_TC[j]
            else:
                continue
            self._cls_total = self._cls_total + cls_TC[j]
            self._cls_n += 1

    def _step_out(self, heads: dict[str, np.ndarray]) -> StepOut:
        class_probs = None
        if "cls_logits" in heads and self._cls_n:
            class_probs = softmax(self._cls_total / self._cls_n).astype(np.float32)  # (C,)
        self.last = StepOut(
            logits=np.asarray(heads["logits"][-1], dtype=np.float32),
            key_probs=softmax(np.asarray(heads["key_logits"][-1], dtype=np.float64)).astype(np.float32),
            meter_probs=softmax(np.asarray(heads["meter_logits"][-1], dtype=np.float64)).astype(np.float32),
            class_probs=class_probs,
        )
        return self.last

    def rewind(self, n_past: int) -> None:
        """Forget every token after the first n_past (e.g. a speculative continuation)."""
        if not 0 <= n_past <= self.n_past:
            raise ValueError(f"rewind to {n_past}: the session holds {self.n_past} tokens")
        gone = self.tokens[n_past:]
        del self.tokens[n_past:]
        for _ in range(int(self.tables.is_bar[gone].sum()) if gone else 0):
            self._bars -= 1
            popped = self._bar_history.pop() if self._bar_history else None
            self.bar_start = popped if popped is not None else max(self.bar_start - BEATS_PER_BAR, 0.0)
        for row in self._cls_rows[n_past:]:
            if row is not None:
                self._cls_total, self._cls_n = self._cls_total - row, self._cls_n - 1
        del self._cls_rows[n_past:]
        self._bar_position, self._pitches_here = -1, set()
        t = self.tables
        for i in reversed(self.tokens):  # the current bar's last Position and its pitches, if any
            if t.is_bar[i]:
                break
            if t.pitch_of[i] >= 0:
                self._pitches_here.add(i)
            if t.position_of[i] >= 0:
                self._bar_position = int(t.position_of[i])
                break
        if self._bar_position < 0:
            self._pitches_here = set()
        self.last = None  # the heads at the new last position are unknown until the next feed

    def fork(self) -> Session:
        """An independent copy: same tokens and cache, its own buffers. It shares the unconditioned twin
        (unconditioned(): a cache that whichever stream asks for it first brings up to date), so that
        guided continuations on forks of a live session do not prefill it anew; one guided generation at
        a time (the bridge runs one)."""
        other = self._fresh()
        other._twin_box = self._twin_box
        self.engine.copy_cache(other.cache, self.cache, self.n_past)
        other.tokens, other.last, other.bars = list(self.tokens), self.last, self.bars
        other.bar_start, other._bar_history = self.bar_start, list(self._bar_history)
        other._cls_rows = list(self._cls_rows)
        other._cls_total, other._cls_n = self._cls_total, self._cls_n
        other._bar_position, other._pitches_here = self._bar_position, set(self._pitches_here)
        return other

    def blank(self) -> Session:
        """A new empty session on the same engine (its own cache), e.g. a second reading of the same
        music that a hook mixes in (typemoe.infill.SuffixMix)."""
        return self._fresh()

    def _fork_extra(self, other: Session) -> None:
        """Subclasses copy their own attributes here."""

    def _fresh(self) -> Session:
        """A new empty session on the same engine (and the subclass's attributes)."""
        other = type(self).__new__(type(self))
        other.engine, other.tables = self.engine, self.tables
        other.cache = self.engine.new_cache()
        other.reset()
        self._fork_extra(other)
        return other

    def unconditioned(self) -> Session | None:
        """The same stream without its control tokens (BOS kept), for guidance; None when the stream has
        no control token besides BOS.

        The session keeps the twin it returned last and brings it up to date: it is rewound to the
        tokens it shares with this stream and fed the rest, so a live session (the bridge's) pays a
        full prefill for guidance once, not at every continuation. A twin that shares nothing (after a
        slide or a reset) is built anew.
        """
        t = self.tables
        n_pre = 0
        while n_pre < len(self.tokens) and t.is_control[self.tokens[n_pre]]:
            n_pre += 1
        bos = [i for i in self.tokens[:n_pre] if i == t.bos_id]
        if n_pre == len(bos):
            return None
        target = [*bos, *self.tokens[n_pre:]]
        twin = self._twin_box[0]
        shared = 0
        if twin is not None:
            limit = min(len(twin.tokens), len(target))
            while shared < limit and twin.tokens[shared] == target[shared]:
                shared += 1
        if shared == 0:
            twin = self._twin_box[0] = self._fresh()
        elif shared == len(target) and shared == twin.n_past and twin.last is not None:
            twin.bars, twin.bar_start = self.bars, self.bar_start
            return twin
        else:
            shared = min(shared, len(target) - 1)  # re-run at least the last token: its heads are needed
            twin.rewind(shared)
        rest = target[shared:]
        if rest:
            twin.feed(rest)
        twin.bars, twin.bar_start = self.bars, self.bar_start  # the time base carries over
        return twin

    def recondition(self, controls: Sequence[int], *, keep: int | None = None) -> StepOut:
        """Restart the stream as [BOS, *controls, *recent music] (e.g. the performer changed the key).

        The recent music is the last `keep` music tokens (default: half the context) from their first Bar
        on, so it opens on a bar line; none when they hold no Bar. The time base (`bars`) carries over;
        the class-head running mean restarts with the new context.
        """
        t = self.tables
        keep = self.engine.context_len // 2 if keep is None else keep
        n_pre = 0
        while n_pre < len(self.tokens) and t.is_control[self.tokens[n_pre]]:
            n_pre += 1
        recent = self.tokens[n_pre:][-keep:] if keep > 0 else []
        bar_at = [k for k, i in enumerate(recent) if t.is_bar[i]]
        recent = recent[bar_at[0] :] if bar_at else []
        prefix = [t.bos_id] if t.bos_id is not None else []
        if len(prefix) + len(controls) + len(recent) > self.engine.context_len:
            raise ValueError(f"{len(controls)} controls + {len(recent)} music tokens exceed the context")
        bars = self.bars - int(t.is_bar[recent].sum()) if recent else self.bars
        time_base = self.bar_start, list(self._bar_history)  # the same bars, re-fed: their beats stay
        self.reset()
        self.bars = bars
        out = self.feed([*prefix, *[int(c) for c in controls], *recent])
        self.bar_start, self._bar_history = time_base
        return out

    # ---- grammar -----------------------------------------------------------------------------------
    def allowed_next(self, *, strict_positions: bool = True, unique_pitches: bool = True) -> np.ndarray:
        """(V,) bool: ids that keep the stream valid REMI after the last token.

        The family of the last token picks a row of next_allowed (control ids are never allowed); with
        strict_positions a Position may not go back or repeat within the current bar; with unique_pitches
        a pitch already sounding at the current position is not emitted again.
        """
        t = self.tables
        last = self.tokens[-1] if self.tokens else t.bos_id
        if last is None:  # no grammar (synthetic tables) and nothing fed
            return np.ones(t.family_of.shape[0], dtype=bool)
        allowed = t.next_allowed[t.family_of[last]].copy()  # (V,)
        if strict_positions and self._bar_position >= 0:
            allowed &= ~((t.position_of >= 0) & (t.position_of <= self._bar_position))
        if unique_pitches and self._pitches_here:
            allowed[list(self._pitches_here)] = False
        return allowed

    def beat_now(self) -> float:
        """Stream time of the current position in quarter-note beats since the stream start (a fed REMI
        Bar k opens beat 4k); the start of the current bar when no Position follows its Bar."""
        return self.bar_start + max(self._bar_position, 0) / self.tables.positions_per_beat

    def cursor(self) -> TokenCursor:
        """Where the stream stands, as a TokenReader of the ids generated next starts from."""
        return TokenCursor(self.bars - 1, max(self._bar_position, 0), self.bar_start)

    def bar_plan(self, meter: str | int, start_beat: float | None = None) -> BarPlan:
        """The REMI bars generate(meter=meter, start_beat=start_beat) writes in, from here: read its ids with
        it (TokenReader(vocab, self.cursor(), plan))."""
        return BarPlan.of(meter, self.next_bar_line(meter) if start_beat is None else start_beat)

    def next_bar_start(self) -> float:
        """The stream beat where the next Bar would open: 4 beats after the current one, or where the
        BarPlan of the running generation puts it."""
        return next_bar_start(self.bar_start, self._plan) if self.bars else 0.0

    def next_bar_line(self, meter: str | int) -> float:
        """The first bar line of `meter` (bars counted from the stream start) at which a continuation can
        start: after the current position, or at/after the current bar's start when no note follows it."""
        span = meter_beats(meter)
        now = self.beat_now()
        if self._bar_position >= 0:  # a note position is open: strictly after it
            k = np.floor(now / span + 1e-9) + 1
        else:
            k = np.ceil(now / span - 1e-9)
        return float(k * span)

    # ---- generation --------------------------------------------------------------------------------
    def generate(self, **kwargs) -> list[int]:
        """generate_steps(**kwargs), collected: the new ids (also appended to the session)."""
        return list(self.generate_steps(**kwargs))

    def generate_steps(
        self,
        *,
        n_tokens: int | None = None,
        n_bars: int | None = None,
        temperature: float = 1.0,
        top_p: float = 0.95,
        seed: int | np.random.Generator | None = None,
        strict_positions: bool = True,
        unique_pitches: bool = True,
        guidance: float = 1.0,
        key_lock: str | int | None = None,
        head_guidance: float = DEFAULT_HEAD_GUIDANCE,
        meter_guidance: float = DEFAULT_METER_GUIDANCE,
        meter: str | int | None = None,
        start_beat: float | None = None,
        on_downbeat: bool = False,
        bar_plan: BarPlan | None = None,
        hooks: Sequence[Hook] = (),
        stop_ids: Sequence[int] = (),
    ) -> Iterator[int]:
        """Sample a grammar-valid continuation of the cached stream, feeding each new id.

        Args:
            n_tokens: at most this many new ids.
            n_bars: without meter: stop before the n_bars-th new Bar token (neither returned nor fed), so
                the continuation ends on a bar line. With meter: n_bars bars of that meter (see meter).
                Without n_tokens at most n_bars * 256 ids are generated.
            temperature: 0 = greedy (argmax), else logits / temperature.
            top_p: nucleus sampling: keep the most likely ids until their probability reaches top_p.
            seed: seeds numpy's generator (None: fresh entropy), or a Generator to draw from.
            strict_positions: forbid Position tokens that go back (or repeat) within a bar.
            unique_pitches: never emit a pitch twice at one position.
            guidance: classifier-free guidance weight g (1 = off): logits = u + g * (c - u), u from a
                second stream without the control tokens (no effect when the stream has none).
            key_lock: a key name; Pitch ids outside its scale (SCALES) are never emitted.
            head_guidance: weight of the key head's reading of the asked key at each Pitch step
                (typemoe.key_steering; 0 = off; no effect when the stream carries no Key control).
            meter_guidance: weight of the meter's metrical hierarchy on the Position and Duration logits
                (typemoe.meter_steering; 0 = off; acts only with `meter` and a Meter control in the stream).
            meter: a time signature ("3/4"): notes start in [start_beat, start_beat + n_bars * bar) where
                bar is the meter's length in beats; the stream stops before leaving that window.
            start_beat: stream beat where the window opens (default: next_bar_line(meter)).
            on_downbeat: the first new note starts exactly on start_beat.
            bar_plan: without meter: the REMI bars to write in (Positions past a planned bar's end are
                masked; an infill's middle is written in bars of its meter this way). With meter the plan
                is the meter's, bar_plan(meter, start_beat).
            hooks: callables (session, logits, allowed) run before each pick; they may edit both in place.
                Head and meter guidance run after them.
            stop_ids: ids that end the generation once yielded (e.g. Infill_End, which a hook allows).
        Yields:
            Each new id as soon as it is sampled and fed, so a realtime caller can act on the first note
            before the rest exists, or stop early by dropping the iterator (the session then holds exactly
            the ids yielded so far).
        Raises:
            ValueError (on the first next()): neither n_tokens nor n_bars, meter without n_bars, or a bad
                temperature, top_p, guidance, key or meter, each named.
        """
        if n_tokens is None and n_bars is None:
            raise ValueError("generate() needs n_tokens or n_bars")
        if meter is not None and bar_plan is not None:
            raise ValueError("generate() takes meter or bar_plan, not both: meter sets its own plan")
        check_sampling(temperature, top_p, guidance)
        check_head_guidance(head_guidance)
        check_meter_guidance(meter_guidance)
        t = self.tables
        window = None
        if meter is not None:
            if n_bars is None:
                raise ValueError("generate(meter=...) counts bars of the meter: pass n_bars too")
            start = self.next_bar_line(meter) if start_beat is None else float(start_beat)
            window = (start, start + n_bars * meter_beats(meter))
        in_scale = None
        if key_lock is not None:
            pcs = np.maximum(t.pitch_of, 0) % 12  # (V,) pitch class (0 for non-Pitch ids)
            in_scale = scale_pitch_classes(key_lock)[pcs] | (t.pitch_of < 0)  # (V,)
        limit = n_tokens if n_tokens is not None else n_bars * TOKENS_PER_BAR_CAP
        if n_tokens is not None and n_bars is not None:
            limit = min(n_tokens, n_bars * TOKENS_PER_BAR_CAP)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if self.last is None:  # nothing fed yet (start a piece), or just rewound (re-run the last token)
            self._refeed_last()
        uncond = self.unconditioned() if guidance != 1.0 else None
        reader = getattr(self.engine, "key", None)
        hooks = [*hooks, *key_hooks(self.tokens, t, head_guidance, window, reader)]
        hooks = [*hooks, *meter_hooks(self.tokens, t, meter_guidance, meter)]
        done = bars = 0
        placed = False  # a note has started in the window (for on_downbeat)
        self._plan = bar_plan if window is None else self.bar_plan(meter, window[0])
        try:
            while done < limit:
                allowed = self.allowed_next(strict_positions=strict_positions, unique_pitches=unique_pitches)
                if in_scale is not None:
                    allowed &= in_scale
                spill = self.spill = self._mask_bar_end(allowed) if self._plan is not None else None
                if window is not None:
                    self._mask_window(allowed, window, on_downbeat and not placed, placed)
                logits = self.last.logits
                if uncond is not None:
                    logits = guide(logits, uncond.last.logits, guidance)
                if spill is not None:
                    logits = spill_to_bar(logits, spill, t.is_bar)
                for hook in hooks:
                    logits = np.array(logits, dtype=np.float32)
                    hook(self, logits, allowed)
                nxt = sample_next(logits, allowed, temperature=temperature, top_p=top_p, rng=rng)
                if t.is_bar[nxt]:
                    if window is not None:
                        if self.next_bar_start() >= window[1] - 1e-9:  # the next bar opens past the window
                            return
                    elif n_bars is not None:
                        bars += 1
                        if bars >= n_bars:
                            return
                placed = placed or t.pitch_of[nxt] >= 0
                self.feed([nxt])
                if uncond is not None:
                    uncond.feed([nxt])
                done += 1
                yield nxt
                if nxt in stop_ids:
                    return
        finally:
            self._plan = self.spill = None  # Bars fed later (a performance, a prompt) are REMI's 4-beat ones

    def _mask_bar_end(self, allowed: np.ndarray) -> np.ndarray | None:
        """Mask the Positions at or past the end of the current bar of the running BarPlan (its bars may be
        shorter than REMI's 4 beats). Once a note's Position is open in the bar, return the allowed ones
        it masked (None if none): the model, trained on 4-beat bars, means by them "later than this bar's
        end", the next bar (spill_to_bar). In a bar still empty they are only masked: there a late Position
        is a pickup, and moving on would skip the bar. Before the first Bar there is no bar to end."""
        if not self.bars:
            return None
        t = self.tables
        beat = self.bar_start + np.maximum(t.position_of, 0) / t.positions_per_beat  # (V,)
        past = allowed & (t.position_of >= 0) & (beat >= self.next_bar_start() - 1e-9)
        allowed &= ~past
        return past if self._bar_position >= 0 and past.any() else None

    def _mask_window(
        self, allowed: np.ndarray, window: tuple[float, float], downbeat: bool, placed: bool
    ) -> None:
        """Keep notes inside [start, end) beats: Positions outside it (or off `start` while `downbeat`) and
        Pitches at a position before it are masked. A Bar that would open past the end is the stop signal,
        masked while no note has been placed and an in-window Position is still open in this bar, so a
        continuation is never silent; so is a Bar that would skip the downbeat `start` in this bar."""
        t = self.tables
        start, end = window
        beat = self.bar_start + np.maximum(t.position_of, 0) / t.positions_per_beat  # (V,)
        is_pos = t.position_of >= 0
        bad = is_pos & ((beat < start - 1e-9) | (beat >= end - 1e-9))
        if downbeat:
            bad |= is_pos & (np.abs(beat - start) > 1e-9)
        if self.bars == 0:  # no Bar yet: a Position has no place on the grid
            bad |= is_pos
        allowed &= ~bad
        if self._bar_position < 0 or self.beat_now() < start - 1e-9:
            allowed &= t.pitch_of < 0  # more notes at a position before the window: no
        if not placed and (allowed & is_pos).any():
            stops = self.next_bar_start() >= end - 1e-9
            if stops or downbeat:
                allowed &= ~t.is_bar
        if not allowed.any():
            allowed |= t.is_bar

    def _refeed_last(self) -> None:
        t = self.tables
        if not self.tokens:
            if t.bos_id is None:
                raise ValueError("generate() on an empty session needs a vocabulary with BOS; feed a prompt")
            self.feed([t.bos_id])
            return
        last = self.tokens[-1]
        self.rewind(self.n_past - 1)
        self.feed([last])


def continuation(
    session: Session,
    prefix: Sequence[int],
    n_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    **kwargs,
) -> list[int]:
    """Feed `prefix` into a fresh session and return its n_tokens-id continuation (the eval entry point)."""
    session.reset()
    session.feed(list(prefix))
    return session.generate(n_tokens=n_tokens, temperature=temperature, top_p=top_p, seed=seed, **kwargs)
