"""What a pass returns, and what it says about what it did and did not do."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx


@dataclass(frozen=True)
class Note:
    """One thing a pass did ("applied") or a candidate it left alone and why ("declined")."""

    pass_name: str
    action: str  # "applied" | "declined" | "info"
    message: str
    where: str = ""  # the node (or region) it is about

    def as_dict(self) -> dict:
        return {"pass": self.pass_name, "action": self.action, "message": self.message, "where": self.where}


@dataclass
class PassResult:
    """A pass's output: the (possibly same) module, whether the graph changed, and its notes."""

    module: fx.GraphModule
    modified: bool
    notes: list[Note] = field(default_factory=list)


class Notes(list):
    """A list of Note for one pass: `notes.applied(...)`, `notes.declined(...)`."""

    def __init__(self, pass_name: str):
        super().__init__()
        self.pass_name = pass_name

    def applied(self, message: str, where: str = "") -> None:
        self.append(Note(self.pass_name, "applied", message, where))

    def declined(self, message: str, where: str = "") -> None:
        self.append(Note(self.pass_name, "declined", message, where))

    def info(self, message: str, where: str = "") -> None:
        self.append(Note(self.pass_name, "info", message, where))
