"""Training hyper-parameters: OptimConfig, LossConfig and TrainConfig (which composes a ModelConfig).

Keyword-only dataclasses validated in __post_init__ (torchtitan style), so a bad value fails before any
data is read or any step runs. The whole TrainConfig is JSON-serialisable (to_dict / from_dict): it is
stored in every training checkpoint, and --resume checks that the run it continues is the same run.

Batch arithmetic: `batch_size` sequences make one optimizer step, over all ranks and micro-steps
together. Each rank runs batch_size / world micro-batches of `micro_batch` sequences, accumulating
gradients, so the global batch (and therefore the loss) does not depend on how many ranks there are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from typemoe.config import ModelConfig

OBJECTIVES = ("ssmtp", "clm")
OFF_WHEN_ABSENT = {"infill_p": 0, "own_bars": 0, "clean_rhythm": False}
"""Fields added after runs that must still resume: to_dict leaves each out while it has this value, which is
what a run saved before the field existed did. A new TrainConfig field that defaults to the old behaviour
belongs here."""
TASKS = ("pretrain", "genre", "emotion", "composer", "conditional")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate, reached after warmup_steps of linear warmup."""
    min_lr: float = 3e-5
    """End of the cosine decay (at max_steps)."""
    warmup_steps: int = 200
    """Linear warmup from 0 to lr."""
    weight_decay: float = 0.1
    """AdamW decay on weight matrices only; norms, biases and the tied embedding get 0."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""

    def __post_init__(self) -> None:
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"weight_decay and grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}"
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {self.beta1}, {self.beta2}")


@dataclass(kw_only=True)
class LossConfig:
    """Weights and knobs of the SS-MTP objective (training/learn/losses.py explains each term)."""

    lm: float = 1.0
    key: float = 0.3
    meter: float = 0.3
    semi: float = 0.3
    """Pseudo-label cross-entropy on unlabelled pieces (key and meter heads)."""
    consistency: float = 0.3
    """Transposition consistency of the key head on unlabelled pieces (KL to the shifted teacher)."""
    aux: float = 0.01
    """Switch baseline's load-balancing loss (ffn="switch" only)."""
    cls: float = 1.0
    """Sequence classification (fine-tuning)."""
    pseudo_threshold: float = 0.9
    """A teacher prediction becomes a pseudo-label only at or above this probability."""
    ema_decay: float = 0.999
    """Teacher = exponential moving average of the student's weights."""
    semi_rampup: int = 1000
    """Steps over which semi and consistency weights ramp linearly from 0 (the early teacher is noise)."""
    head_start_bar: int = 2
    """Key/meter heads are trained from the n-th Bar token of a window on (1-based): after one beat group."""

    def __post_init__(self) -> None:
        for name in ("lm", "key", "meter", "semi", "consistency", "aux", "cls"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.pseudo_threshold <= 1:
            raise ValueError(f"pseudo_threshold must be in (0, 1], got {self.pseudo_threshold}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.semi_rampup < 0 or self.head_start_bar < 1:
            raise ValueError(
                f"need semi_rampup >= 0 and head_start_bar >= 1, got {self.semi_rampup}, "
                f"{self.head_start_bar}"
            )


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    task: str = "pretrain"
    """pretrain (SS-MTP or CLM), a classification task (genre, emotion, composer) or conditional."""
    objective: str = "ssmtp"
    """ssmtp: LM + key + meter + semi-supervised terms; clm: language modelling only."""
    seq_len: int = 512
    """Longest training window in tokens, BOS and control tokens included; <= model.context_len."""
    batch_size: int = 32
    """Sequences per optimizer step, all ranks and micro-steps together."""
    micro_batch: int = 8
    """Sequences per rank per forward pass."""
    max_steps: int = 10_000
    labelled_fraction: float = 1.0
    """Keep the key/meter labels of this fraction of pieces (chosen by a hash of the piece id)."""
    transpose: int = 6
    """Random transposition in [-transpose, transpose] semitones (clipped to the piano range); 0 = off."""
    phase_shift: bool = True
    """Shift the music 0-3 beats against the 4-beat Bar grid, so no head can read meter off bar phase."""
    control_dropout: float = 0.5
    """Each known control token of a window that carries controls is dropped with this probability."""
    control_p: float = 0.5
    """Pre-training: the share of windows that carry their piece's control tokens ([BOS] + controls +
    music), so the same model runs conditioned and unconditioned. Conditional fine-tuning: always 1.
    The key/meter heads are not trained on windows with controls (they must read the music, not the
    prefix). Classification tasks never carry controls."""
    control_window: int = 0
    """Pre-training: a window that carries controls holds at most this many tokens (BOS and controls
    included); 0 = seq_len. In a long window the music itself soon tells the key and meter, so the
    controls matter to the loss of its first bars only; short ones make the model use them. On this CPU
    (1,500 steps from the shipped trunk, every window 128 tokens with controls) the bare-prompt key match
    at guidance 2 rose from the shipped model's 0.065 to 0.28 (200 music21 test prompts; docs/GPU.md)."""
    control_start_p: float = 0.0
    """Pre-training: of the windows that carry controls, the share that start at the piece's first bar
    (how a piece in that key and meter begins), instead of at a random bar."""
    key_move_p: float = 0.25
    """Of the windows with a key control, the share whose music starts in another key (the first part
    transposed away) and reaches the control's key at a bar line: "continue this in another key"."""
    minor_share: float = 0.0
    """Pre-training: repeat the pieces labelled with a minor key in every epoch until they make about this
    share of the key-labelled pieces (the training corpora are ~15 % minor, the music people play is not,
    and the shipped key misreads minor pieces as their relative major). 0 = each piece once; a share below
    the data's own never drops pieces. Not yet shown to help: 600 CPU steps at 0.5 from the shipped trunk
    read the minor pieces of unseen classical piano worse (0.727 against 0.864, 22 pieces)."""
    infill_p: float = 0.0
    """Share of windows rearranged for fill-in-the-middle (training/learn/infill_data.py): n = 1-4 whole bars
    moved after the rest, between Infill_* tokens. 0 = off; `typemoe train` uses 0.25. Needs a
    vocabulary with the infilling tokens (typemoe/vocab.py)."""
    own_bars: float = 0.0
    """Pre-training and conditional: the share of windows of a metered piece (3/4, 6/8, 2/4, ...) written in
    REMI bars of its meter, as the decoder writes a continuation in that meter (typemoe.grammar_tables.
    BarPlan; training/learn/data.py meter_bars): 4-beat bars until a bar line of the meter, then bars of
    its length. A model that never saw a 3-beat REMI bar cannot fill one (docs/GPU.md, "Meter: train in
    the music's own bars"). These windows have no phase shift, and their heads learn only from the 4-beat
    bars before the switch: analysis reads music in REMI's 4-beat bars, so no head may learn meter from a
    bar's length. 0 = off (every window in 4-beat bars)."""
    head_only: bool = False
    """Classification fine-tuning: train the classification head alone. Every other weight stays exactly
    as --from had it, so the model keeps its next-token, key and meter heads and one exported graph
    carries them all with the new head (how the shipped model got its emotion head)."""
    controls_only: bool = False
    """Generation: train the control tokens' embedding rows alone (Key_*, Meter_*, Genre_*, Emotion_*).
    Every other weight stays exactly as --init had it, so every answer read without control tokens (the
    next-token distribution over music, the key, meter and emotion heads, their fusions) is unchanged and
    only what the controls ask for is learned (issue 13)."""
    infill_only: bool = False
    """Generation: train the infilling tokens' embedding rows alone (Infill_Suffix, Infill_Middle,
    Infill_End, Infill_Bars_*), on a model --init grows to them. As with controls_only, every other weight
    stays exactly as --init had it, so every answer read without those tokens is unchanged: an existing
    model learns to read the fill-in-the-middle arrangement (issue 16) and nothing else moves."""
    humanize: bool = True
    """Redraw each window as a performer might play it (training/learn/humanize.py: velocity, timing,
    articulation, top voice), so no head can read a source's signature."""
    clean_rhythm: bool = False
    """Learn no Bar, Position or Duration target in a window whose rhythm the humanizer redrew (onsets
    jittered, durations rescaled): the heads and the pitches still learn from it, the decoder does not
    learn to write the jitter (training/learn/data.py, make_sample)."""
    log_every: int = 10
    eval_every: int = 200
    eval_pieces: int = 256
    """Held-out pieces per validation (the first ones of the val split, one window each)."""
    ckpt_every: int = 200
    seed: int = 1337
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    threads: int = 0
    """torch intra-op threads per rank on CPU; 0 = cores / local ranks."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 8 <= self.seq_len <= self.model.context_len:
            raise ValueError(f"seq_len={self.seq_len} must be in 8..context_len={self.model.context_len}")
        if self.micro_batch < 1 or self.batch_size < 1 or self.batch_size % self.micro_batch:
            raise ValueError(
                f"batch_size={self.batch_size} must be a positive multiple of micro_batch={self.micro_batch}"
            )
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if not 0.0 <= self.labelled_fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in [0, 1], got {self.labelled_fraction}")
        if not 0 <= self.transpose <= 11:
            raise ValueError(f"transpose must be in 0..11 semitones, got {self.transpose}")
        if not 0.0 <= self.minor_share < 1.0:
            raise ValueError(f"minor_share must be in [0, 1), got {self.minor_share}")
        if self.control_window and not 16 <= self.control_window <= self.seq_len:
            raise ValueError(
                f"control_window must be 0 or in 16..seq_len={self.seq_len}, got {self.control_window}"
            )
        for name in ("control_dropout", "control_p", "control_start_p", "key_move_p", "infill_p", "own_bars"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.head_only and self.task not in ("genre", "emotion", "composer"):
            raise ValueError(f"head_only trains a classification head; task {self.task!r} has none")
        if self.controls_only and not (
            self.task == "conditional" or (self.task == "pretrain" and self.control_p > 0)
        ):
            raise ValueError("controls_only trains the control tokens; it needs windows that carry them")
        if self.infill_only and self.infill_p == 0:
            raise ValueError("infill_only trains the infilling tokens; it needs infill_p > 0")
        if self.infill_only and self.controls_only:
            raise ValueError("infill_only and controls_only each train their own rows: pick one per run")
        if self.own_bars > 0 and self.task not in ("pretrain", "conditional"):
            raise ValueError(f"own_bars is for generation (pretrain, conditional), not task {self.task!r}")
        if self.infill_p > 0 and self.task not in ("pretrain", "conditional"):
            raise ValueError(f"infill_p is for generation (pretrain, conditional), not task {self.task!r}")
        for name in ("log_every", "eval_every", "ckpt_every", "eval_pieces"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")

    def check_world(self, world: int) -> int:
        """Micro-steps per rank for `world` ranks; raises if the global batch does not split evenly."""
        per_rank, rest = divmod(self.batch_size, world)
        if rest or per_rank % self.micro_batch:
            raise ValueError(
                f"batch_size={self.batch_size} does not split into {world} ranks x micro_batch="
                f"{self.micro_batch}; pick batch_size divisible by world * micro_batch"
            )
        return per_rank // self.micro_batch

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # left out when off, so the configs of runs from before them still match (and --resume takes them)
        for name, off in OFF_WHEN_ABSENT.items():
            if d[name] == off:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        return cls(
            model=ModelConfig.from_dict(d.pop("model")),
            optim=OptimConfig(**d.pop("optim")),
            loss=LossConfig(**d.pop("loss")),
            **d,
        )
