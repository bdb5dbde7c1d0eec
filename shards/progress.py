"""Progress messages that can say how far long work is.

Long work (landing a file, evaluating SQLMesh intervals, publishing samples) reports through a
plain callable taking a message. A :class:`Step` is such a message that also carries ``done``
of ``total`` ``unit`` for one ``task``: a terminal draws it as a progress bar with an ETA, a
Prefect flow as a progress artifact, and anything else uses it as the text it is.
"""

from __future__ import annotations

import time
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


LINE_EVERY_S = 5.0


class Throttled:
    """Passes every message on to ``progress`` but a :class:`Step` only when it starts or
    ends its task or ``every_s`` seconds after the task's last one: fine-grained steps for a
    progress bar, a line every few seconds for a log."""

    def __init__(self, progress: Progress, every_s: float = LINE_EVERY_S):
        self.progress, self.every_s = progress, every_s
        self.last: dict[str, float] = {}

    def __call__(self, message: str) -> None:
        if isinstance(message, Step):
            now = time.monotonic()
            last = self.last.get(message.task)
            ends = message.done >= message.total
            if last is not None and not ends and now - last < self.every_s:
                return
            self.last[message.task] = now
        self.progress(message)
