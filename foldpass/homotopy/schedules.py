"""Schedules for the homotopy weight t (paper, Section 5.3): every one ends at exactly 0.0.

    name        t at progress k = 0 .. K (K = the last epoch, or the last step with per="step")
    paper       the paper's per-epoch list 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.025, 0.01, 0
    paper-t05   the paper's t0 = 0.5 list 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.025, 0.01, 0.05, 0
                (printed so; the 0.05 after 0.01 is probably a typo for 0.005, kept as printed)
    linear      t0 * (1 - k / K)
    cosine      t0 * (1 + cos(pi * k / K)) / 2
    exp         t0 * rate**k for k < K, then 0          (rate = 0.5 unless given)
    threshold   start at levels[0]; step to the next level each time the validation accuracy
                reaches the current threshold; 0 at the last epoch whatever the accuracy
    static      t0 throughout (the skip-connection baseline; does not end at 0)

A list shorter than the run holds its last value (0); a longer one is cut at the last epoch,
which is always 0. zero_fraction (0 <= f < 1) keeps the last fraction f of the run at t = 0 and
fits the schedule's shape into the rest: a final phase in which the skip-free network adapts
(linear / cosine / exp; a printed list keeps its own length). `state_dict()` / `load_state_dict()` carry
everything a resumed run needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..defaults import SCHEDULE_NAMES
from ..errors import InputError

PAPER = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.025, 0.01, 0.0)
PAPER_T05 = (0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.025, 0.01, 0.05, 0.0)


@dataclass
class Schedule:
    """t as a function of progress k in [0, total - 1]; `per` says whether k counts epochs or steps."""

    kind: str
    total: int
    t0: float = 0.5
    per: str = "epoch"
    values: tuple[float, ...] = ()
    rate: float = 0.5
    thresholds: tuple[float, ...] = ()
    zero_fraction: float = 0.0
    level: int = 0  # threshold: the current level
    history: list[float] = field(default_factory=list)  # threshold: the accuracies it has seen

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise InputError(f"unknown schedule '{self.kind}'; valid schedules: {', '.join(SCHEDULES)}")
        if self.total < 1:
            raise InputError("a schedule needs at least one epoch (or step)")
        if self.per not in ("epoch", "step"):
            raise InputError(f"per must be 'epoch' or 'step', not '{self.per}'")
        if self.kind == "paper" and not self.values:
            self.values = PAPER
        if self.kind == "paper-t05" and not self.values:
            self.values = PAPER_T05
        if self.kind == "threshold":
            self.values = self.values or (self.t0, self.t0 / 2, self.t0 / 4, 0.0)
            self.thresholds = self.thresholds or (0.8, 0.9, 0.95)[: len(self.values) - 1]
            if len(self.thresholds) != len(self.values) - 1:
                raise InputError("a threshold schedule needs one threshold fewer than levels")
        if not 0.0 <= self.zero_fraction < 1.0:
            raise InputError(f"zero_fraction must lie in [0, 1); got {self.zero_fraction}")
        if not 0.0 <= self.t0 <= 1.0 or any(not 0.0 <= v <= 1.0 for v in self.values):
            raise InputError("t must lie in [0, 1]")

    def value(self, k: int) -> float:
        """t at progress k (an epoch index, or a global step index with per='step')."""
        last = self.total - 1
        k = min(max(k, 0), last)
        if self.kind == "static":
            return self.t0
        if self.kind in ("linear", "cosine", "exp"):  # the shape fits before the final phase at 0
            last = max(1, round(self.total * (1 - self.zero_fraction))) - 1
        if k >= last:
            return 0.0
        if self.kind in ("paper", "paper-t05"):
            return float(self.values[min(k, len(self.values) - 1)])
        if self.kind == "linear":
            return self.t0 * (1 - k / last)
        if self.kind == "cosine":
            return self.t0 * (1 + math.cos(math.pi * k / last)) / 2
        if self.kind == "exp":
            return self.t0 * self.rate**k
        return float(self.values[self.level])  # threshold

    def observe(self, accuracy: float) -> None:
        """A validation accuracy (0..1): a threshold schedule steps down when it is reached."""
        self.history.append(float(accuracy))
        if self.kind == "threshold" and self.level < len(self.thresholds) and accuracy >= self.thresholds[self.level]:
            self.level += 1

    def state_dict(self) -> dict:
        state = asdict(self)
        state["values"], state["thresholds"] = list(self.values), list(self.thresholds)
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> Schedule:
        state = dict(state)
        state["values"], state["thresholds"] = tuple(state["values"]), tuple(state["thresholds"])
        return cls(**state)

    def load_state_dict(self, state: dict) -> None:
        other = Schedule.from_state_dict(state)
        self.__dict__.update(other.__dict__)

    def preview(self) -> list[float]:
        """Every value from k = 0 to the end, for a threshold schedule as if never stepped down."""
        return [self.value(k) for k in range(self.total)]


SCHEDULES = SCHEDULE_NAMES
DEFAULT_T0 = {"paper": 0.9, "paper-t05": 0.5}


def make_schedule(kind: str, epochs: int, t0: float | None = None, per: str = "epoch", steps_per_epoch: int = 1,
                  **options) -> Schedule:
    """A schedule over `epochs` epochs (or epochs * steps_per_epoch steps with per='step')."""
    total = epochs if per == "epoch" else epochs * steps_per_epoch
    if t0 is None:
        t0 = DEFAULT_T0.get(kind, 0.5)
    return Schedule(kind=kind, total=total, t0=t0, per=per, **options)
