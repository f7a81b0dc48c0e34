"""Progress of long work: a bar on a terminal, plain timestamped lines in a log, streamed as the work runs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mechscope.core import progress as P

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_mode_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv("MECHSCOPE_PROGRESS", raising=False)
    assert P.mode(io.StringIO()) == "lines" and P.mode(_Tty()) == "bar"
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "off")
    assert P.mode(_Tty()) == "off"
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "loud")
    with pytest.raises(ValueError, match="MECHSCOPE_PROGRESS must be one of bar, lines, off"):
        P.mode(io.StringIO())


def test_lines_start_report_at_most_every_interval_and_end(monkeypatch):
    monkeypatch.delenv("MECHSCOPE_PROGRESS", raising=False)
    out = io.StringIO()
    now = [100.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: now[0])
    with P.progress_bar(total=10, desc="train x", unit="step", stream=out, initial=2) as bar:
        for _ in range(8):
            now[0] += 4.0  # a report is due every 10 s: after the 3rd and the 6th update
            bar.update(1)
            bar.set_postfix_str("loss 0.5")
    lines = out.getvalue().splitlines()
    assert all(LINE.match(x) for x in lines)
    text = [LINE.sub("", x) for x in lines]
    assert text == ["train x: 2/10 steps",
                    "train x: 5/10 steps (50%), 12.0 s, about 20.0 s left; loss 0.5",
                    "train x: 8/10 steps (80%), 24.0 s, about 8.0 s left; loss 0.5",
                    "train x: done, 10/10 steps in 32.0 s; loss 0.5"]


def test_disabled_or_off_prints_nothing_and_iterates(monkeypatch):
    out = io.StringIO()
    assert list(P.progress_bar(range(3), desc="x", disable=True, stream=out)) == [0, 1, 2]
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "off")
    assert list(P.progress_bar(range(3), desc="x", stream=out)) == [0, 1, 2]
    P.note("hello", stream=out)
    assert out.getvalue() == ""
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "lines")
    assert list(P.progress_bar(iter([5, 6]), desc="y", unit="patch", stream=out)) == [5, 6]
    P.note("hello", stream=out)
    assert [LINE.sub("", x) for x in out.getvalue().splitlines()][1:] == ["y: done, 2 patches in 0.0 s", "hello"]


def test_training_with_output_in_a_pipe_streams_progress_lines_while_it_runs(tmp_path):
    """A zoo run trained in a child process whose output is a pipe: timestamped progress lines
    arrive while it trains, not all at the end (the demo's own lines: tests/test_demo.py)."""
    env = dict(os.environ, MECHSCOPE_CACHE=str(tmp_path / "cache"), MECHSCOPE_PROGRESS_EVERY="0.2",
               OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("MECHSCOPE_PROGRESS", None)
    script = ("import torch; torch.set_num_threads(1); from mechscope import zoo; "
              "zoo.train('tms-quick', steps=60)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    arrivals = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    proc.wait()
    assert proc.returncode == 0, "\n".join(x for _, x in arrivals)
    lines = [(t, x) for t, x in arrivals if LINE.match(x) and "train tms-quick:" in x]
    running = [t for t, x in lines if re.search(r": \d+/60 steps \(\d+%\), [\d.]+ s", x)]
    assert lines[0][1].endswith("train tms-quick: 0/60 steps") and "done, 60/60 steps" in lines[-1][1]
    assert "\r" not in "".join(x for _, x in arrivals)  # no bar redraws in a log
    assert running and lines[-1][0] - running[0] > 0.2  # the first report was read while training went on
