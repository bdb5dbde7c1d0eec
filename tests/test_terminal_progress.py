"""Progress of long work: bars with totals on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from flows.terminal import TerminalProgress
from shards.progress import Step
from shards.publisher import publish
from shards.storage import open_storage
from tests.shards.synthetic import flights_publish_spec, synthetic_gold


def console(*, terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def steps(total: int = 300) -> list[Step]:
    return [
        Step(f"landing x.csv: {done} bytes", task="x.csv", done=done, total=total, unit="bytes")
        for done in (0, 100, 200, total)
    ]


def test_on_a_terminal_a_task_becomes_one_bar_with_its_total():
    screen, out = console(terminal=True)
    with TerminalProgress(screen) as progress:
        for step in steps():
            progress(step)
        assert list(progress.tasks) == ["x.csv"]
        task = progress.bars.tasks[0]
        assert (task.completed, task.total, task.fields["unit"]) == (300, 300, "bytes")
        progress("a plain message")
    text = out.getvalue()
    assert "x.csv" in text and "eta" in text and "a plain message" in text
    assert "100 bytes" not in text  # the steps between the first and the last only move the bar


def test_elsewhere_messages_are_plain_lines_and_a_task_says_how_it_starts_and_ends():
    screen, out = console(terminal=False)
    with TerminalProgress(screen) as progress:
        for step in steps():
            progress(step)
        progress("a plain message")
    assert progress.bars is None
    first, last = steps()[0], steps()[-1]
    assert out.getvalue().splitlines() == [f"  {first}", f"  {last}", "  a plain message"]


def test_a_publication_reports_the_samples_it_writes_out_of_its_total(tmp_path):
    spec = flights_publish_spec(layout="block")
    rows = synthetic_gold(3000, seed=0)
    said: list[str] = []
    storage = open_storage(str(tmp_path))
    result = publish(spec, storage, lambda: rows.to_batches(), progress=said.append)
    counted = [m for m in said if isinstance(m, Step)]
    assert counted[0].done == 0 and counted[0].unit == "samples"
    assert counted[-1].done == counted[-1].total == sum(result.counts.values())
    assert [m.done for m in counted] == sorted(m.done for m in counted)


def test_landing_a_file_reports_bytes_streamed_out_of_its_size(tmp_path, monkeypatch):
    from flows.ingest import files
    from flows.ingest.sources import SourceFile

    monkeypatch.setattr(files, "PROGRESS_EVERY_S", 0.0)
    said: list[str] = []
    source = SourceFile("file:///drops/x.csv", tmp_path / "x.csv", "0" * 64, size=1000)
    streaming = files.StreamProgress(said.append, source)
    for sent in (400, 800, 1000):
        streaming(sent)
    streaming.done(rows=10)
    assert [(s.done, s.total, s.unit) for s in said] == [
        (400, 1000, "bytes"),
        (800, 1000, "bytes"),
        (1000, 1000, "bytes"),
        (1000, 1000, "bytes"),
    ]
    assert said[-1].endswith("10 rows in; the contract gate checks them")


def test_a_log_gets_a_tasks_first_and_last_step_and_one_every_few_seconds():
    from shards.progress import Throttled

    logged: list[str] = []
    log = Throttled(logged.append, every_s=3600)
    for step in steps():
        log(step)
    log("a plain message")
    assert logged == [steps()[0], steps()[-1], "a plain message"]
