"""ModelThread: every model call, in order, on one daemon thread off the I/O loop.

The engine's model actions (Feed, Recondition, ResetModel, Generate, CancelGenerate) are queued here;
results come back to the loop as events through `post`. Queued work stays bounded: consecutive Feeds merge
into one prefill (a flood costs one model call per batch, not per note), and only the newest Generate waits.

A generation runs on a fork of the live session, and an infill (bridge.infill) on a fresh session of its
own (the live one is kept), each one token per step, and queued work goes first between steps: a performer's note is analysed within one decode step even while a continuation is being sampled.
Each finished note is posted at once (Generated chunks; the last has done=True), so the first note can be
scheduled a few tokens after the trigger instead of after the whole continuation.

What the context holds and when it is rebuilt is decided by ContextPolicy (below: pure, no model, no
thread, no clock, tested without threads); this thread only carries out its plans on the session. How a
continuation is steered (meter window, guidance, key lock) is bridge.continuation's; the decoder is
typemoe.decoding's.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from typemoe import context_slide, decoding
from typemoe.bridge import infill
from typemoe.bridge.continuation import bar_plan, generate_kwargs
from typemoe.bridge.events import (
    Analysis,
    CancelGenerate,
    Feed,
    Generate,
    Generated,
    InfillJob,
    ModelFailed,
    Probe,
    Recondition,
    ResetModel,
)
from typemoe.vocab import FAMILIES

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the context's policy (pure)


@dataclass(frozen=True)
class Plan:
    """What to do with the session: feed `tokens` to it, or to a fresh one when `rebuild`."""

    tokens: tuple[int, ...]
    rebuild: bool
    has_music: bool  # False: only BOS + controls (nothing to analyse)


class ContextPolicy:
    """The model context's policy: what it holds and when it is rebuilt. Pure: no model, no thread, no clock.

    The context is `[BOS] + control tokens + music`. Music is appended as it arrives (the KV cache grows by
    the new ids only). Before it would overflow, leaving `reserve` slots free for a generation, the context
    is rebuilt: the control prefix first, then the recent music from a Bar token on, so the controls never
    slide out of the window. A new condition or a reset rebuilds it too.

        policy = ContextPolicy(context_len=1024, reserve=256, bos=1, bar=5)
        plan = policy.feed(ids, n_past=session.n_past)
        session = model.session() if plan.rebuild else session
        out = session.feed(plan.tokens)

    Args:
        context_len: the model's context length.
        reserve: slots kept free for a generation when music is appended.
        bos, bar: the BOS and Bar token ids.
    """

    def __init__(self, *, context_len: int, reserve: int, bos: int, bar: int) -> None:
        if not 0 <= reserve < context_len:
            raise ValueError(f"reserve must be in 0..{context_len - 1}, got {reserve}")
        self.context_len, self.reserve, self.bos, self.bar = context_len, reserve, bos, bar
        self.controls: tuple[int, ...] = ()
        self._history: deque[int] = deque(maxlen=context_len)
        self.bars = 0  # Bar tokens in the music since the last reset (kept or not): the stream's time base

    @property
    def history(self) -> list[int]:
        return list(self._history)

    def feed(self, ids: tuple[int, ...] | list[int], n_past: int) -> Plan:
        """New music `ids` for a session holding `n_past` tokens: append, or rebuild keeping half."""
        self._history.extend(ids)
        self.bars += sum(1 for i in ids if i == self.bar)
        if n_past + len(ids) > self.context_len - self.reserve:
            return self.rebuild(keep=self.context_len // 2)
        return Plan(tuple(ids), rebuild=False, has_music=True)

    def recondition(self, controls: tuple[int, ...]) -> Plan:
        """A new control prefix; the recent music follows it."""
        self.controls = tuple(controls)
        return self.rebuild(keep=self.context_len // 2)

    def reset(self) -> Plan:
        """Forget the music; the controls stay."""
        self._history.clear()
        self.bars = 0
        return self.rebuild()

    def rebuild(self, keep: int = 0) -> Plan:
        """BOS + controls + up to `keep` recent music tokens starting at a Bar (none if no Bar is there)."""
        room = self.context_len - self.reserve - 1 - len(self.controls)
        keep = max(0, min(keep, room))
        music = list(self._history)[-keep:] if keep else []
        music = music[context_slide.from_bar(music, 0, lambda i: i == self.bar) :]  # none without a Bar
        self._history = deque(music, maxlen=self.context_len)
        return Plan((self.bos, *self.controls, *music), rebuild=True, has_music=bool(music))


# --------------------------------------------------------------------------- the thread
@dataclass
class _Generation:
    job: Generate
    steps: Iterator[int]
    plan: decoding.BarPlan | None  # the REMI bars it is written in, for the engine's reader
    chunk: list[int] = field(default_factory=list)  # ids sampled since the last post


class ModelThread:
    """Owns the model session; only its thread touches it.

    Args:
        model: a bridge.model.Model.
        post: thread-safe callback delivering result events to the loop.
        now: clock function for event stamps.
        reserve: cache slots kept free for a generation (default: a quarter of the context).
    """

    def __init__(
        self, model, post: Callable[[object], None], now: Callable[[], float], *, reserve: int | None = None
    ) -> None:
        self._model = model
        self._post = post
        self._now = now
        self._ctx = int(model.context_len)
        self._policy = ContextPolicy(
            context_len=self._ctx,
            reserve=reserve if reserve is not None else self._ctx // 4,
            bos=int(model.vocab.bos_id),
            bar=int(model.vocab.id("Bar_None")),
        )
        self._jobs: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._session = None
        self._gen: _Generation | None = None  # the generation in progress (thread-only)
        self._fill: infill.InfillRun | None = None  # the infill answer in progress (thread-only)
        self._ends_note = np.asarray(model.vocab.family_of) == FAMILIES.index("Duration")  # (V,)
        self._fused = getattr(model, "answer", None)  # the model directory's fused key/meter answers
        self._thread = threading.Thread(target=self._run, name="typemoe-model", daemon=True)
        self.busy = False

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        """Stop after the current call (a generation in progress is not interrupted, only abandoned)."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    def submit(self, action) -> None:
        """Queue a model action (any thread)."""
        with self._cond:
            last = self._jobs[-1] if self._jobs else None
            if isinstance(action, Feed) and isinstance(last, Feed):
                self._jobs[-1] = Feed(last.ids + action.ids, min(last.cause_t, action.cause_t))
            elif isinstance(action, Recondition | ResetModel):
                # Each re-prefills the whole context, so a queued one that has not run yet is superseded:
                # a knob sending 100 values a second costs one re-prefill per model call, not one per value.
                # A reset also drops the queued feeds (their music is forgotten) but keeps a queued
                # Recondition (the controls survive a reset).
                drop = Recondition if isinstance(action, Recondition) else (ResetModel, Feed, Probe)
                self._jobs = deque(j for j in self._jobs if not isinstance(j, drop))
                self._jobs.append(action)
            elif isinstance(action, Probe):  # only the newest matters
                self._jobs = deque(j for j in self._jobs if not isinstance(j, Probe))
                self._jobs.append(action)
            elif isinstance(action, InfillJob):  # only the newest request matters
                self._jobs = deque(j for j in self._jobs if not isinstance(j, InfillJob))
                self._jobs.append(action)
            elif isinstance(action, Generate | CancelGenerate):
                self._jobs = deque(j for j in self._jobs if not isinstance(j, Generate))
                self._jobs.append(action)
            else:
                self._jobs.append(action)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs)

    # ---- the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        self._apply(self._policy.rebuild())
        while True:
            with self._cond:
                while not self._jobs and self._gen is None and self._fill is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._jobs.popleft() if self._jobs else None
                self.busy = True
            try:
                if job is None:  # a token of each answer in progress, the infill's first
                    if self._fill is not None:
                        self._step_fill()
                    if self._gen is not None:
                        self._step()
                else:
                    self._do(job)
            except (
                Exception
            ) as err:  # a model failure must not kill the bridge: report it, rebuild the context
                gen = job if isinstance(job, Generate) else (self._gen.job if job is None else None)
                log.exception("model call %s failed", type(job or gen).__name__)
                if gen is not None:
                    self._gen = None
                    self._post(Generated(gen.request_id, (), f"generation failed: {err}", self._now()))
                else:
                    self._post(ModelFailed(f"model failed: {err}", self._now()))
                    self._apply(self._policy.reset())
            finally:
                self.busy = False

    def _step(self) -> None:
        """One token of the generation in progress; post a chunk when it completes a note, or at the end."""
        gen = self._gen
        nxt = next(gen.steps, None)
        if nxt is None:
            self._gen = None
            self._post(Generated(gen.job.request_id, tuple(gen.chunk), None, self._now(), True, gen.plan))
            return
        gen.chunk.append(nxt)
        if self._ends_note[nxt]:
            self._post(Generated(gen.job.request_id, tuple(gen.chunk), None, self._now(), False, gen.plan))
            gen.chunk = []

    def _step_fill(self) -> None:
        """One token of the infill answer in progress; post the answer once it is complete."""
        run = self._fill
        try:
            if run.step():
                return
            event = run.result(self._now())
        except Exception as err:  # a model failure must not kill the bridge, nor the live context
            event = infill.failed(run.job, err, self._now())
        self._fill = None
        self._post(event)

    def _answer(self, out, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(key, meter) probabilities: the heads' at the end of `ids` (the music the session holds), fused
        with those notes' pitch classes and rhythm when the model directory has fusions (OrtModel.key,
        OrtModel.meter: typemoe.key_fusion, typemoe.meter), as `typemoe analyze` answers."""
        if self._fused is None:  # the toy stand-in: the heads answer
            return np.asarray(out.key_probs), np.asarray(out.meter_probs)
        return self._fused(ids, out.key_probs, out.meter_probs)

    def _do(self, job) -> None:
        if isinstance(job, Feed):
            out = self._apply(self._policy.feed(job.ids, self._session.n_past))
            if out is not None:
                key, meter = self._answer(out, self._policy.history)
                self._post(Analysis(key, meter, job.cause_t, self._now()))
        elif isinstance(job, Probe):
            if job.ids and self._session.n_past + len(job.ids) < self._ctx:
                out = self._session.fork().feed(list(job.ids))
                key, meter = self._answer(out, [*self._policy.history, *job.ids])
                self._post(Analysis(key, meter, job.cause_t, self._now(), provisional=True))
        elif isinstance(job, Generate):  # replaces any generation in progress (its request is stale)
            session = self._session.fork()
            steps = session.generate_steps(**generate_kwargs(job, session))
            self._gen = _Generation(job, steps, bar_plan(job, session))
        elif isinstance(job, CancelGenerate):
            if self._gen is not None and self._gen.job.request_id == job.request_id:
                self._gen = None
        elif isinstance(job, InfillJob):  # a session of its own: the live context is not touched
            try:  # replaces an infill in progress (its request is stale)
                self._fill = infill.start(self._model, job)
            except Exception as err:
                self._fill = None
                self._post(infill.failed(job, err, self._now()))
        elif isinstance(job, Recondition):
            self._apply(self._policy.recondition(job.controls))
        elif isinstance(job, ResetModel):
            self._apply(self._policy.reset())
        else:
            raise AssertionError(f"unknown model job {job!r}")

    def _apply(self, plan: Plan):
        """Carry out a context plan; the model's output when it read music, else None."""
        if plan.rebuild:
            self._session = self._model.session()
        out = self._session.feed(list(plan.tokens))
        if plan.rebuild and isinstance(self._session, decoding.Session):
            # The decoder's time base (stream beats, where a continuation's bar line is) counts every Bar
            # since the stream started, the forgotten ones too, as the engine's does.
            self._session.bars = self._policy.bars
        if plan.rebuild:
            log.debug("context rebuilt: %d tokens", len(plan.tokens))
        return out if plan.has_music else None
