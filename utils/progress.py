"""Progress that reads well both in a terminal and in a log file.

fastprogress redraws its bar with '\\r' on every update, and prints a '█\\r' probe whenever a bar is made,
even when stdout is a file (its `printing()` tests that stdout *has* an `isatty` method, not what it
returns), so `make demo > log` used to be mostly bar fragments. A terminal keeps fastprogress' bars;
anything else gets plain lines: a few per loop with counts and elapsed time, and for training fastai's
metrics table, one line per epoch.
"""
from __future__ import annotations

import functools
import sys
import time
from typing import Callable, Iterable, Iterator, Optional

from .errors import check_interrupted

__all__ = ["interactive", "interruptible", "progress", "master_progress", "child_progress", "PlainProgress",
           "PlainMaster", "PlainProgressCallback", "plain_training_progress"]

PLAIN_EVERY_S = 10.0  # plain lines of one loop come at most this often ...
PLAIN_EVERY_FRAC = 0.05  # ... and 5% of the loop apart, so a long loop writes ~20 lines, a quick one 1


def interactive() -> bool:
    """True when stdout is a terminal, where redrawn bars make sense."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def interruptible(items: Iterable) -> Iterator:
    """`items`, raising KeyboardInterrupt before the next one once Ctrl-C has come, even where the interpreter
    swallowed it (`errors.check_interrupted`): every loop of `progress` runs through this."""
    for item in items:
        check_interrupted()
        yield item


def _length(items: Iterable, total: Optional[int]) -> Optional[int]:
    return total if total is not None else (len(items) if hasattr(items, "__len__") else None)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: a log that is tailed shows the line now


class PlainProgress:
    """Iterate `items`, printing `label: i/n (p%), elapsed, eta` now and then and a last line at the end.

    A line comes when PLAIN_EVERY_S seconds and PLAIN_EVERY_FRAC of the loop have passed since the last
    one (with no known length, time alone), so the line count does not grow with the loop's length."""

    def __init__(self, items: Iterable, total: Optional[int] = None, label: str = "",
                 every_s: float = PLAIN_EVERY_S):
        self.total, self.items = _length(items, total), interruptible(items)
        self.label, self.every_s = label or "progress", every_s

    def _line(self, i: int, elapsed: float, done: bool) -> str:
        if not self.total:
            return f"{self.label}: {i} in {_clock(elapsed)}" if done else f"{self.label}: {i}, {_clock(elapsed)}"
        head = f"{self.label}: {i}/{self.total} ({100 * i // self.total}%)"
        if done:
            return f"{head} in {_clock(elapsed)}"
        return f"{head}, {_clock(elapsed)} elapsed, eta {_clock(elapsed * (self.total - i) / i)}"

    def __iter__(self) -> Iterator:
        start = last_t = time.monotonic()
        last_i = i = 0
        min_step = (self.total or 0) * PLAIN_EVERY_FRAC
        for i, item in enumerate(self.items, 1):
            yield item
            now = time.monotonic()
            if now - last_t >= self.every_s and i - last_i >= min_step and i != self.total:
                _say(self._line(i, now - start, False))
                last_t, last_i = now, i
        _say(self._line(i, time.monotonic() - start, True))


class PlainMaster:
    """The outer loop of a two-level progress (files, then frames): `write` lines carry `[i/n, elapsed]`."""

    def __init__(self, items: Iterable, total: Optional[int] = None):
        self.total, self.items = _length(items, total), interruptible(items)
        self.i, self.start = 0, time.monotonic()

    def __iter__(self) -> Iterator:
        self.start = time.monotonic()
        for self.i, item in enumerate(self.items, 1):
            yield item

    def write(self, line: str) -> None:
        of = f"/{self.total}" if self.total else ""
        _say(f"[{self.i}{of}, {_clock(time.monotonic() - self.start)}] {line}")


def progress(items: Iterable, total: Optional[int] = None, label: str = "") -> Iterable:
    """`items` with a progress bar in a terminal, plain lines otherwise."""
    if not interactive():
        return PlainProgress(items, total, label)
    from fastprogress.fastprogress import progress_bar
    bar = progress_bar(interruptible(items), total=_length(items, total))
    if label:
        bar.prefix = f"{label}:"
    return bar


def master_progress(items: Iterable, total: Optional[int] = None):
    """An outer loop whose `write(line)` prints above the bars (fastprogress' master bar in a terminal)."""
    if not interactive():
        return PlainMaster(items, total)
    from fastprogress.fastprogress import master_bar
    return master_bar(interruptible(items), total=_length(items, total))


def child_progress(master, label: str) -> Callable[[Iterable], Iterable]:
    """A function wrapping an inner loop of `master` (e.g. the frames of one file), labelled `label`."""
    if isinstance(master, PlainMaster):
        return lambda items: PlainProgress(items, label=label)

    def bar(items):
        from fastprogress.fastprogress import progress_bar
        pb = progress_bar(interruptible(items), total=_length(items, None), parent=master)
        pb.prefix = f"{label}:"  # fastprogress' console default would say 'Epoch i/n'
        return pb
    return bar


# --------------------------------------------------------------------------- training (fastai)
# Built on first use: steps 1, 2 and 5 import this module and should not pay for importing fastai.

@functools.lru_cache(maxsize=None)
def _callback_class():
    from fastai.callback.core import Callback
    from fastai.learner import noop  # the one Learner.no_logging sets (fastcore has another)

    class PlainProgressCallback(Callback):
        """fastai's metrics table (header, then one line per epoch) with no progress bars: for log files."""
        order = 60  # where fastai's ProgressCallback runs: after the Recorder has the epoch's values

        def before_fit(self):
            self.old_logger = self.learn.logger
            if self.learn.logger is not noop:
                self.learn.logger = self._write
                self._write(self.recorder.metric_names)

        def after_fit(self):
            if hasattr(self, "old_logger"):
                self.learn.logger = self.old_logger

        def _write(self, log) -> None:
            cells = [f"{v:.6f}" if isinstance(v, float) else str(v) for v in log]
            if len(getattr(self, "widths", ())) != len(cells):
                self.widths = [max(8, len(c)) for c in cells]  # the header fixes the columns, as fastprogress
            _say("  ".join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip())

    PlainProgressCallback.__module__, PlainProgressCallback.__qualname__ = __name__, "PlainProgressCallback"
    return PlainProgressCallback  # found again by name (module __getattr__), so an exported Learner pickles


def __getattr__(name: str):
    if name == "PlainProgressCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plain_training_progress(learn):
    """Swap fastai's ProgressCallback for PlainProgressCallback when stdout is not a terminal; returns `learn`.

    Call it once on each new Learner: logs then get the metrics table as plain lines, terminals keep bars."""
    if interactive():
        return learn
    from fastai.callback.progress import ProgressCallback
    plain = _callback_class()
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
    if not any(isinstance(cb, plain) for cb in learn.cbs):
        learn.add_cb(plain())
    return learn
