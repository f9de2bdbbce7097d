"""Progress that suits where the output goes: a tqdm bar on a terminal, a few log lines elsewhere.

In a log file, CI or a ``dvc queue`` worker, tqdm's carriage-return redraws turn into hundreds of lines
per bar. There, :func:`progress` logs one line per ``step`` of the work (10% by default) or every
``every_s`` seconds, whichever comes first, and a last line with the rate.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Iterator

from tqdm import tqdm

log = logging.getLogger("dr_core.progress")


class LoggedProgress:
    """The part of tqdm's interface the library uses (iterate, ``update``, ``set_postfix``, ``close``)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", step: float = 0.1, every_s: float = 60.0) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.step, self.every_s = step, every_s
        self.n, self.postfix = 0, ""
        self.start = self.last_time = time.monotonic()
        self.last_fraction = 0.0
        self.closed = False

    def __iter__(self) -> Iterator:
        assert self.iterable is not None, "LoggedProgress without an iterable: use update()"
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        fraction = self.n / self.total if self.total else 0.0
        if fraction - self.last_fraction >= self.step or now - self.last_time >= self.every_s:
            self._log(now)
            self.last_fraction, self.last_time = fraction, now

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n and self.last_fraction < 1.0:
                self._log(time.monotonic())

    def _log(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        log.info("%s: %d%s %s%s, %.1f %s/s%s", self.desc or "progress", self.n, of, self.unit, pct,
                 self.n / elapsed, self.unit, extra)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             **tqdm_kwargs: Any) -> tqdm | LoggedProgress:
    """A tqdm bar when stderr is a terminal, else :class:`LoggedProgress` (a log line per 10%)."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, **tqdm_kwargs)
    return LoggedProgress(iterable, total, desc, unit)
