"""Progress of the long steps: a tqdm bar in a terminal, periodic log lines otherwise, nothing
when quiet.

Who shows progress: an estimator's ``verbose`` (0 / False: never; 1 / True or more: always) or,
with ``verbose=None`` (their default), the enclosing :func:`scope`: the command line opens one
(on unless ``--quiet``) and so does ``TransferClustering(progress=True)`` around its steps; plain
library calls outside any scope stay silent, as scikit-learn's estimators do.

How: when stderr is a terminal and tqdm is installed, a bar (shown once the step has run
``BAR_DELAY_S``); otherwise a line such as ``embedcluster: k-means iteration 7/20, 35%`` after the
step has run ``LOG_AFTER_S``, then at each further tenth of the work (at most one a
``LOG_MIN_GAP_S``) or every ``LOG_EVERY_S``, and a last line when it ends. The lines go to the
``embedcluster`` logger when it has a handler that takes INFO, else to stderr.

Native calls report through :meth:`Progress.native`, the callable the ``_core`` functions take as
``progress``: the engine hands it (step, index, count, done, total) from the poll that also
checks for Ctrl-C (see ``run_native`` in ``csrc/bindings/common.hpp``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from typing import Any, Callable, Iterator, Optional

logger = logging.getLogger("embedcluster")

_SHOW = contextvars.ContextVar("embedcluster_progress", default=False)

BAR_DELAY_S = 1.0    # a bar appears once its step has run this long
LOG_AFTER_S = 2.0    # no log line for steps shorter than this
LOG_MIN_GAP_S = 1.0  # at most one line per tenth of the work this often
LOG_EVERY_S = 10.0   # and a line at least this often while the work goes on

#: The type of the ``progress`` argument of the ``_core`` functions.
NativeCallback = Callable[[str, int, int, int, int], None]


@contextlib.contextmanager
def scope(show: bool) -> Iterator[None]:
    """Within the block, work whose ``verbose`` is None shows progress when ``show`` is true."""
    token = _SHOW.set(bool(show))
    try:
        yield
    finally:
        _SHOW.reset(token)


def wanted(verbose: Any = None) -> bool:
    """Whether to show progress: ``verbose`` when given (any value > 0 or True), else the
    enclosing :func:`scope`'s choice (off outside any scope)."""
    if verbose is None:
        return _SHOW.get()
    return bool(verbose)


def check_verbose(verbose: Any, where: str) -> None:
    """Raises ValueError naming ``where`` unless verbose is None, a bool or an int >= 0."""
    ok = verbose is None or isinstance(verbose, bool) or (isinstance(verbose, int) and verbose >= 0)
    if not ok:
        raise ValueError(f"{where}: verbose={verbose!r} should be None (follow the caller), False / 0 "
                         "(silent) or True / an integer >= 1 (show progress)")


def _terminal() -> bool:
    """stderr is a terminal, or this runs in a Jupyter kernel (where tqdm.auto draws a widget)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _bar_class() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: log lines instead
        return None
    return tqdm


class Progress:
    """One step's progress. Count mode: ``Progress("embedding", total=n, unit="row")`` and
    :meth:`update`; native mode: pass :meth:`callback` as a ``_core`` function's ``progress``.
    Use as a context manager (or call :meth:`close`). Does nothing when not :func:`wanted`.

    ``rounds``: native work that runs its steps several times (k-means' ``n_init``); the text
    then says which run it is in.
    """

    def __init__(self, desc: str, total: Optional[int] = None, *, verbose: Any = None, unit: str = "",
                 rounds: int = 1):
        self.desc, self.total, self.unit, self.rounds = desc, total, unit, max(1, int(rounds))
        self.on = wanted(verbose)
        self.done = 0
        self.fraction: Optional[float] = None
        self.text = desc
        self._start = time.monotonic()
        self._last_line: Optional[float] = None
        self._last_tenth = 0
        self._bar: Any = None
        self._steps: list = []  # native step names in the order first seen (finds new rounds)
        self._last_step = (-1, -1)
        self._round = 1
        self.closed = False
        self._begun = False
        if self.on and _terminal():
            self._bar = _make_bar(desc, total, unit)

    # ---------------------------------------------------------------- reporting
    def update(self, n: int = 1, text: Optional[str] = None) -> None:
        """Count mode: n more units done (``text``: what is being done now, optional)."""
        self.done += n
        if self.total:
            self.fraction = min(1.0, self.done / self.total)
        if text is not None:
            self.text = text
        self._show(n)

    def begin(self, text: str) -> None:
        """Count mode over named steps: the step begun before (if any) is done, ``text`` runs now."""
        self.update(1 if self._begun else 0, f"{self.desc}: {text}")
        self._begun = True

    def callback(self) -> Optional[NativeCallback]:
        """The ``progress`` argument for a ``_core`` function: None when not shown (no calls)."""
        return self.native if self.on else None

    def ticker(self) -> Optional[Callable[[], None]]:
        """A call for waits on work elsewhere (Dask tasks) while nothing finishes: it lets the
        log lines say the step goes on (every ``LOG_EVERY_S``) and a bar's clock run. None when
        not shown (the wait then needs no polling)."""
        return (lambda: self.update(0)) if self.on else None

    def native(self, step: str, index: int, count: int, done: int, total: int) -> None:
        """Takes one report of native work (see the module docstring)."""
        if step:
            if step not in self._steps:
                self._steps.append(step)
            pos = (self._steps.index(step), index)
            if pos < self._last_step:  # the steps started again: the next run
                self._round += 1
            self._last_step = pos
        within = done / total if total > 0 else 0.0
        self.fraction = (index - 1 + within) / count if count > 0 else within
        text = step or self.desc
        if count > 0:
            text += f" {index}/{count}"
        if step and not step.startswith(self.desc) and self.rounds == 1:
            text = f"{self.desc}: {text}"  # the caller's context (e.g. which component)
        if self.rounds > 1:
            text = f"{self.desc} run {min(self._round, self.rounds)}/{self.rounds}: {text}"
        self.text = text
        self._show(0)

    def _show(self, n: int) -> None:
        if not self.on or self.closed:
            return
        if self._bar is not None:  # tqdm applies its delay and refresh interval in update()
            if self.text != self._bar.desc:
                self._bar.set_description_str(self.text, refresh=False)
            if self.total is None:
                n = round(100.0 * (self.fraction or 0.0), 1) - self._bar.n
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._start < LOG_AFTER_S:
            return
        tenth = int(10 * self.fraction) if self.fraction is not None else 0
        since = now - (self._last_line if self._last_line is not None else self._start)
        if (tenth > self._last_tenth and since >= LOG_MIN_GAP_S) or since >= LOG_EVERY_S or self._last_line is None:
            self._last_tenth = max(self._last_tenth, tenth)
            self._last_line = now
            _emit(self._line())

    def _line(self) -> str:
        parts = [self.text]
        if self.total is not None:
            parts[0] += f" {self.done}/{self.total}" + (f" {self.unit}s" if self.unit else "")
        if self.fraction is not None:
            parts.append(f"{100.0 * self.fraction:.0f}%")
        return ", ".join(parts)

    def close(self, summary: Optional[str] = None) -> None:
        """Ends the step; in log mode a last line (``summary``, e.g. "27 iterations") when any
        line was written."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.on and self._last_line is not None:
            took = time.monotonic() - self._start
            _emit(f"{self.desc} done in {took:.1f} s" + (f" ({summary})" if summary else ""))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_PERCENT_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"


def _make_bar(desc: str, total: Optional[int], unit: str) -> Any:
    """A tqdm bar over `total` units, or over percent for native work (total None); None
    without tqdm."""
    bar = _bar_class()
    if bar is None:
        return None
    counted = total is not None
    return bar(total=total if counted else 100, desc=desc, unit=unit or "it", file=sys.stderr, delay=BAR_DELAY_S,
               dynamic_ncols=True, leave=False, bar_format=None if counted else _PERCENT_BAR)


def _emit(line: str) -> None:
    if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        logger.info("%s", line)
    else:
        print(f"embedcluster: {line}", file=sys.stderr, flush=True)


def shown_range(n: int, desc: str, *, verbose: Any = None, unit: str = "") -> Iterator[int]:
    """``range(n)`` that reports each finished item (an epoch, a candidate) as progress."""
    with Progress(desc, total=n, verbose=verbose, unit=unit) as shown:
        for i in range(n):
            yield i
            shown.update(1)
