"""Worker processes of the data tools die with their parent, even when it is SIGKILLed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _stat(pid: int) -> List[str]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def _children(pid: int) -> List[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, counts as dead)."""
    try:
        os.kill(pid, 0)
        return _stat(pid)[0] not in ("Z", "X")
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True


def test_synth_workers_die_when_the_parent_is_sigkilled(tmp_path):
    cmd = [sys.executable, "-m", "tcpnet", "synth", str(tmp_path / "data"), "--num-classes", "8",
           "--train-per-class", "40", "--val-per-class", "0", "--frames", "16", "--size", "32",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: List[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in _children(proc.pid) if _alive(p)]
            if len(workers) >= 2:
                break
            time.sleep(0.05)
        assert len(workers) >= 2, "tcpnet synth never started its worker processes"
        time.sleep(0.3)  # let the workers reach their initializer and take jobs
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        survivors = [p for p in workers if _alive(p)]
        assert not survivors, f"worker processes {survivors} outlived their SIGKILLed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:  # do not leave the survivors of a failed run behind
            if _alive(p):
                os.kill(p, signal.SIGKILL)


_POOL_SCRIPT = """
import os, sys, time
from multiprocessing import get_context
from tcpnet.tools import prepare
if sys.argv[2] == "watchdog":
    prepare._PR_SET_PDEATHSIG = -1  # an invalid prctl option (inherited by fork): only the watchdog is left
with prepare.process_pool(2, get_context(sys.argv[1])) as ex:
    [f.result() for f in [ex.submit(time.sleep, 0.2) for _ in range(4)]]
    print(" ".join(str(p) for p in ex._processes), flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("start_method, guard", [("fork", "watchdog"), ("spawn", "prctl")])
def test_pool_workers_die_with_the_parent(start_method, guard):
    """Both guards work alone: the parent-pid watchdog (prctl disabled) and prctl (spawned workers)."""
    proc = subprocess.Popen([sys.executable, "-c", _POOL_SCRIPT, start_method, guard], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    workers: List[int] = []
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
