"""Ctrl-C is not lost when a library swallows the KeyboardInterrupt it raised."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from peftpipe.interrupts import raise_if_interrupted, remembered_interrupts
from peftpipe.local_runner import run_logged


def press_ctrl_c_and_swallow_it() -> None:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs here
    except KeyboardInterrupt:
        pass  # what a library catching BaseException does
    else:
        raise AssertionError("SIGINT did not raise KeyboardInterrupt")


def test_a_swallowed_interrupt_surfaces_again_until_the_block_ends() -> None:
    before = signal.getsignal(signal.SIGINT)
    with remembered_interrupts():
        raise_if_interrupted()  # nothing pressed yet
        press_ctrl_c_and_swallow_it()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    raise_if_interrupted()  # forgotten after the block
    assert signal.getsignal(signal.SIGINT) is before


def test_a_swallowed_interrupt_stops_a_local_stage_and_its_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    program = (f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
               "for i in range(600): print(i, flush=True); time.sleep(0.1)")
    with remembered_interrupts():
        press_ctrl_c_and_swallow_it()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_logged([sys.executable, "-c", program], tmp_path / "log.txt")
    assert time.monotonic() - started < 30
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the stage's process outlived the interrupt")
