"""One optional progress bar for long loops (feature extraction, patch mining, cache decoding)."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str | None, total: int | None = None, console=None) -> Iterable[T]:
    """``items`` with a transient rich progress bar titled ``description``; no ``description``: ``items`` untouched.

    With a known ``total`` (or a sized ``items``) the bar shows done/total, the time taken and the time left (ETA);
    otherwise a spinner, a count and the time taken.
    ``console``: a rich Console to draw on (e.g. stderr, where stdout carries results).
    """
    if not description:
        return items
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return _with_bar(items, description, total, console)


def _with_bar(items: Iterable[T], description: str, total: int | None, console) -> Iterator[T]:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()] if total is not None \
        else [TextColumn("{task.completed}"), TimeElapsedColumn()]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), *columns, console=console,
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
