"""Progress of long work in a terminal: bars with totals and an ETA, or plain lines.

The stages report through a plain callable taking a message (:data:`shards.progress.Progress`).
:class:`TerminalProgress` is that callable for the ``shardyard`` command: when stderr is a
terminal, each :class:`shards.progress.Step` (landing a file's bytes, evaluating SQLMesh
intervals, writing samples) moves a rich progress bar of its task and other messages print
above the bars; otherwise (a pipe, a log file, CI) messages are plain lines on stderr, a
task's steps one every few seconds, as in a Prefect flow's log.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from shards.progress import Step, Throttled


class _Amount(ProgressColumn):
    """``done/total unit``: bytes as MB/GB, anything else counted."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._counts = DownloadColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if unit == "bytes":
            return self._bytes.render(task)
        return Text(f"{self._counts.render(task)} {unit}")


class TerminalProgress:
    """Shows :class:`Step` messages as progress bars on a terminal, everything as lines
    elsewhere. Use it as a context manager, so that the bars stop with the work."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bars: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.lines = Throttled(self._line)

    def __call__(self, message: str) -> None:
        if isinstance(message, Step) and self.console.is_terminal:
            self._advance(message)
        else:
            self.lines(message)

    def _line(self, message: str) -> None:
        console = self.bars.console if self.bars is not None else self.console
        console.print(f"  {message}", markup=False, highlight=False, soft_wrap=True)

    def _advance(self, step: Step) -> None:
        if step.done == 0 or step.done >= step.total:  # the first and last words of a task
            self._line(step)
        if self.bars is None:
            self.bars = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                _Amount(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.bars.start()
        task = self.tasks.get(step.task)
        if task is None:
            task = self.tasks[step.task] = self.bars.add_task(
                step.task, total=step.total or None, unit=step.unit
            )
        self.bars.update(task, completed=step.done, total=step.total or None)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None
            self.tasks.clear()

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
