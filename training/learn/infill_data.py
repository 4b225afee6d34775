"""Fill-in-the-middle training windows, and a model grown to a vocabulary with the infilling tokens.

A window [BOS, *controls, *music] (music opens on a Bar) becomes, with probability cfg.infill_p:

    [BOS, *controls, Infill_Suffix, *suffix, Infill_Bars_<n>, *prefix, Infill_Middle, *middle, Infill_End]

where middle is n whole bars of the window (1 to MAX_SPAN_BARS REMI bars, each opening with its Bar token),
prefix the music before them and suffix everything after them (from the Bar that follows the middle).
Suffix first ("SPM", Bavarian et al. 2022, "Efficient training of language models to fill in the
middle"): the middle follows its prefix as a continuation follows its prompt, one marker between them,
so infilling is continuation with the suffix in view. (Prefix first, the middle sat a whole suffix away
from the music it continues; a 520-step run of that arrangement scored 0.757 Hits@1 on the middle
against 0.763 for plain continuation on the same bars.) The LM loss covers every music token, so the
middle is learnt with the suffix in view, and Infill_End is a
target (the other Infill_* tokens are given, never predicted, like every control token). The key/meter
heads are off on such windows (head_from = the end): the music is out of order there, as they are off on
windows with a control prefix. `undo` restores the original window exactly (tests/test_infill_data.py).

Spans are bars of the REMI grid (4 beats, the performer's grid, typemoe/vocab.py): the data's windows
are phase-shifted against the notated bar anyway. At decoding time typemoe/infill.py lines the grid up
with the file's own bars, so a span of a 4/4 file is exactly its bars.

Determinism: the choices come from np.random.default_rng((seed, g, SALT)), a stream of its own per global
sample g, so turning infilling on leaves every other choice of a window unchanged and resume stays exact.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from typemoe.vocab import INFILL_TOKENS, MAX_INFILL_BARS

MAX_SPAN_BARS = 4  # training spans are 1..4 bars
SALT = 0xF111  # the FIM random stream of a sample: default_rng((seed, g, SALT))
MARKERS = 4  # tokens a window grows by: Infill_Suffix, Infill_Middle, Infill_Bars_n, Infill_End


class FimError(ValueError):
    """A vocabulary without the infilling tokens, or a sequence that is not a FIM window."""


class FimOps:
    """The infilling token ids of one vocabulary (build once)."""

    def __init__(self, vocab) -> None:
        missing = [t for t in INFILL_TOKENS if t not in set(vocab.tokens)]
        if missing:
            raise FimError(
                f"the vocabulary (hash {vocab.hash[:12]}) has no infilling tokens {missing}; it predates "
                "infilling: train or fine-tune with the current vocabulary (--init grows an older model)"
            )
        self.bar = vocab.id("Bar_None")
        self.suffix, self.middle, self.end = (vocab.id(t) for t in INFILL_TOKENS[:3])
        self.bars_id = {n: vocab.id(f"Infill_Bars_{n}") for n in range(1, MAX_INFILL_BARS + 1)}

    def span_token(self, n_bars: int) -> int:
        """Infill_Bars_<n>, capped at MAX_INFILL_BARS."""
        if n_bars < 1:
            raise FimError(f"a middle needs at least one bar, got {n_bars}")
        return self.bars_id[min(n_bars, MAX_INFILL_BARS)]

    def apply(self, ids: np.ndarray, first_bar: int, n_bars: int) -> np.ndarray:
        """The FIM arrangement of `ids` with bars first_bar .. first_bar + n_bars - 1 (0-based, counted
        by the window's Bar tokens) as the middle. The bar after the middle must be in the window."""
        ids = np.asarray(ids, dtype=np.int64)
        bars = np.flatnonzero(ids == self.bar)
        if not (first_bar >= 0 and n_bars >= 1 and first_bar + n_bars < len(bars)):
            raise FimError(f"bars {first_bar}..+{n_bars} do not lie inside a window of {len(bars)} bars")
        h, a, b = int(bars[0]), int(bars[first_bar]), int(bars[first_bar + n_bars])
        return np.concatenate(
            [
                ids[:h],
                [self.suffix],
                ids[b:],
                [self.span_token(n_bars)],
                ids[h:a],
                [self.middle],
                ids[a:b],
                [self.end],
            ]
        ).astype(np.int64)

    def undo(self, ids: np.ndarray) -> np.ndarray:
        """The window a FIM arrangement came from. Raises FimError when `ids` is not one."""
        ids = np.asarray(ids, dtype=np.int64)
        at = {
            k: np.flatnonzero(ids == v) for k, v in (("s", self.suffix), ("m", self.middle), ("e", self.end))
        }
        spans = np.flatnonzero(np.isin(ids, list(self.bars_id.values())))
        if any(len(v) != 1 for v in at.values()) or len(spans) != 1:
            raise FimError(
                "not a FIM window: it needs one Infill_Suffix, one Infill_Bars_n, one Infill_Middle, one "
                "Infill_End"
            )
        s, n, m, e = int(at["s"][0]), int(spans[0]), int(at["m"][0]), int(at["e"][0])
        if not s < n < m < e or e != len(ids) - 1:
            raise FimError("not a FIM window: markers out of order")
        return np.concatenate([ids[:s], ids[n + 1 : m], ids[m + 1 : e], ids[s + 1 : n]]).astype(np.int64)

    def choose_span(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
        """(first_bar, n_bars): n uniform in 1..MAX_SPAN_BARS (as far as the window allows), the start
        uniform over the bars that leave the next bar inside the window; None with fewer than 2 bars."""
        k = int((np.asarray(ids) == self.bar).sum())
        if k < 2:
            return None
        n = int(rng.integers(1, min(MAX_SPAN_BARS, k - 1) + 1))
        return int(rng.integers(0, k - n)), n


def maybe_fim(sample, fim: FimOps | None, p: float, seq_len: int, rng: np.random.Generator):
    """The sample (training.data.Sample) rearranged for infilling with probability p, cut first so that
    it stays within seq_len; heads off. Unchanged when fim is None, p is 0 or the window is too short."""
    if fim is None or p <= 0 or rng.random() >= p:
        return sample
    ids = sample.ids[: seq_len - MARKERS]
    span = fim.choose_span(ids, rng)
    if span is None:
        return sample
    new = fim.apply(ids, *span)
    return replace(sample, ids=new, head_from=len(new))


def loss_targets(vocab) -> np.ndarray:
    """(V,) bool: control-family ids that are still LM targets (Infill_End: the model ends the middle)."""
    out = np.zeros(vocab.size, dtype=bool)
    if vocab.has_infill:
        out[vocab.id("Infill_End")] = True
    return out


# --------------------------------------------------------------------------- an older model, grown


def grow_vocab(model, vocab):
    """`model` (a TypeMoE trained on a vocabulary that `vocab` extends, e.g. before the infilling tokens)
    with embedding/output rows for the new ids; the model itself when the sizes already agree.

    New rows start at the mean embedding of the old control-type ids plus N(0, 0.02) noise (the model's
    init), so they route (control expert) and score like a control token at first, and differ.
    Raises:
        ValueError: the old ids do not keep their types in `vocab` (not an extension).
    """
    import torch

    from typemoe.model import TypeMoE

    v_old, v_new = model.cfg.vocab_size, vocab.size
    if v_old == v_new:
        return model
    old_table = model.router.type_of_id.cpu().numpy()
    if v_old > v_new or not np.array_equal(old_table, vocab.type_of[:v_old]):
        raise ValueError(
            f"the checkpoint's vocabulary ({v_old} ids) is not a prefix of this one ({v_new} ids): "
            "its ids would change meaning"
        )
    grown = TypeMoE(replace(model.cfg, vocab_size=v_new), vocab.type_of)
    state = model.state_dict()
    w = state["wte.weight"]  # (V_old, D)
    control = torch.as_tensor(old_table == vocab.type_names.index("control"))
    g = torch.Generator().manual_seed(v_new)
    extra = w[control].mean(0) + 0.02 * torch.randn(
        v_new - v_old, w.shape[1], generator=g
    )  # (V_new - V_old, D)
    new_w = torch.cat([w, extra.to(w.dtype)], 0)  # (V_new, D)
    state = {k: (new_w if v.shape == w.shape and torch.equal(v, w) else v) for k, v in state.items()}
    state["router.type_of_id"] = torch.as_tensor(vocab.type_of, dtype=torch.long)
    grown.load_state_dict(state, strict=True)
    return grown.train(model.training)
