"""One optional progress bar for long loops (feature extraction, patch mining, cache decoding)."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str | None, total: int | None = None) -> Iterable[T]:
    """``items`` with a transient rich progress bar titled ``description``; no ``description``: ``items`` untouched.

    With a known ``total`` (or a sized ``items``) the bar shows done/total; otherwise a spinner and a count.
    """
    if not description:
        return items
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return _with_bar(items, description, total)


def _with_bar(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    counter = MofNCompleteColumn() if total is not None else TextColumn("{task.completed}")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), counter, TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
