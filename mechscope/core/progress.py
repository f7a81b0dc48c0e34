"""Progress of long work: a bar on a terminal, plain timestamped lines when output goes to a log.

    from mechscope.core.progress import note, progress_bar

    with progress_bar(total=3000, desc="train induction", unit="step") as bar:
        for step in range(3000):
            ...
            bar.update(1)
            bar.set_postfix_str("loss 0.31")          # shown beside the count
    for item in progress_bar(items, desc="explain", unit="feature"):
        ...
    note("wrote out/report.html")                     # one line (above a bar on a terminal)
    echo("network   auc")                             # a line of results on stdout, flushed

Which one is chosen, when the work starts:
- a bar (`tqdm.auto`: a terminal bar, or a widget in a notebook) when stderr is a terminal or the
  code runs in a notebook kernel;
- plain lines on stderr otherwise, each flushed at once and starting with the time of day:

      [12:03:04] train induction: 0/3000 steps
      [12:03:14] train induction: 412/3000 steps (14%), 10 s, about 1 min left; loss 0.31
      [12:04:19] train induction: done, 3000/3000 steps in 1 min 15 s; loss 0.02

  one when the work starts, then at most one every `MECHSCOPE_PROGRESS_EVERY` seconds (default 10)
  while it runs, and one when it ends.

`MECHSCOPE_PROGRESS=bar|lines|off` overrides the choice (`off` prints nothing, notes included).
`disable=True` (the analyses' `progress=False`) silences one piece of work in every mode.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

MODES = ("bar", "lines", "off")
DEFAULT_EVERY_S = 10.0


def mode(stream: TextIO | None = None) -> str:
    """"bar", "lines" or "off": `$MECHSCOPE_PROGRESS` if set, else a bar on a terminal or in a notebook."""
    forced = os.environ.get("MECHSCOPE_PROGRESS", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"MECHSCOPE_PROGRESS must be one of {', '.join(MODES)}, got {forced!r}")
        return forced
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        tty = False
    return "bar" if tty or _in_notebook() else "lines"


def _in_notebook() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - ipykernel without IPython
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _every() -> float:
    raw = os.environ.get("MECHSCOPE_PROGRESS_EVERY", "")
    try:
        every = float(raw) if raw else DEFAULT_EVERY_S
    except ValueError:
        raise ValueError(f"MECHSCOPE_PROGRESS_EVERY must be a number of seconds, got {raw!r}") from None
    if every < 0:
        raise ValueError(f"MECHSCOPE_PROGRESS_EVERY must be >= 0, got {every}")
    return every


def duration(seconds: float) -> str:
    """12.3 s, 4 min 5 s, 1 h 2 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def _stamp() -> str:
    return time.strftime("[%H:%M:%S]")


def note(message: str, *, stream: TextIO | None = None) -> None:
    """Print one line of what is happening: timestamped in a log, above any bar on a terminal."""
    kind = mode(stream)
    if kind == "off":
        return
    out = stream or sys.stderr
    if kind == "bar":
        from tqdm.auto import tqdm

        tqdm.write(message, file=out)
    else:
        out.write(f"{_stamp()} {message}\n")
        out.flush()


def echo(message: str = "") -> None:
    """Print a line of results on stdout at once: flushed, so a log shows it when it happens."""
    print(message, flush=True)


class Lines:
    """A tqdm-like counter that prints plain timestamped lines (see the module docstring)."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, stream: TextIO | None = None, every: float | None = None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.initial = total, desc, unit, initial
        self.n = initial
        self.postfix = ""
        self.stream = stream or sys.stderr
        self.every = _every() if every is None else every
        self.t0 = self.last = time.monotonic()
        self.closed = False
        self._print(self._count())

    def _units(self, n: int | None) -> str:
        if n == 1 or self.unit == "it":
            return self.unit
        return self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")

    def _count(self) -> str:
        if self.total is None:
            return f"{self.n} {self._units(self.n)}"
        return f"{self.n}/{self.total} {self._units(self.total)}"

    def _print(self, text: str) -> None:
        self.stream.write(f"{_stamp()} {self.desc + ': ' if self.desc else ''}{text}"
                          f"{'; ' + self.postfix if self.postfix else ''}\n")
        self.stream.flush()

    def _report(self) -> None:
        elapsed = time.monotonic() - self.t0
        text = self._count()
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {duration(elapsed)}"
        done_here = self.n - self.initial
        if self.total and done_here > 0 and self.n < self.total:
            text += f", about {duration(elapsed / done_here * (self.total - self.n))} left"
        self._print(text)

    def update(self, n: int = 1) -> None:
        """Advance by `n`; print a line when `every` seconds have passed since the last one."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every and not self.closed and (self.total is None or self.n < self.total):
            self.last = now
            self._report()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text shown after the count on the next line (tqdm's method)."""
        self.postfix = s

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """key=value pairs shown after the count on the next line (tqdm's method)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        """Change the description the lines start with (tqdm's method)."""
        self.desc = desc

    def close(self) -> None:
        """Print the closing line (count and elapsed time), once."""
        if self.closed:
            return
        self.closed = True
        self._print(f"done, {self._count()} in {duration(time.monotonic() - self.t0)}")

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress counter was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent(Lines):
    """Counts without printing (disabled work, or MECHSCOPE_PROGRESS=off)."""

    def _print(self, text: str) -> None:
        pass


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, stream: TextIO | None = None, **bar_options: Any) -> Any:
    """A progress counter for long work: tqdm's bar on a terminal or in a notebook, plain lines in a
    log (see the module docstring). Supports the tqdm calls mechscope uses: iteration, `update(n)`,
    `set_postfix(...)`, `set_postfix_str(s)`, `set_description(s)`, `close()`, and `with`.
    `bar_options` go to tqdm (mininterval, say) and mean nothing to the lines."""
    kind = "off" if disable else mode(stream)
    if kind == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, **bar_options)
    cls = Lines if kind == "lines" else _Silent
    return cls(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)


__all__ = ["Lines", "duration", "echo", "mode", "note", "progress_bar"]
