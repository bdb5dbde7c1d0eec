"""Progress messages that can say how far long work is.

Long work (landing a file, evaluating SQLMesh intervals, publishing samples) reports through a
plain callable taking a message. A :class:`Step` is such a message that also carries ``done``
of ``total`` ``unit`` for one ``task``: a terminal draws it as a progress bar with an ETA, a
Prefect flow as a progress artifact, and anything else uses it as the text it is.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


class Step(str):
    """A progress message with ``done`` of ``total`` ``unit`` of ``task``."""

    task: str
    done: float
    total: float
    unit: str

    def __new__(cls, text: str, *, task: str, done: float, total: float, unit: str) -> Step:
        step = super().__new__(cls, text)
        step.task, step.done, step.total, step.unit = task, done, total, unit
        return step

    @property
    def fraction(self) -> float:
        """How much of the task is done, 0 to 1 (1 for a task with nothing to do)."""
        return min(1.0, self.done / self.total) if self.total else 1.0
