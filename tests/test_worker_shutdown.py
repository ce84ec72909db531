"""DataLoader workers that ignore stop signals (engine.preemption.ignore_stop_signals) survive a
scheduler's SIGTERM during the run, yet never keep a failed run from exiting."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc and signals")

EXIT_LIMIT_S = 30.0  # generous for a loaded CI machine: the run itself takes ~2 s; before the fix it never ended

# A worker error re-raised in the main process keeps the DataLoader iterator alive in a reference
# cycle until interpreter exit (as in `tcpnet train` with an all-bad list); "loop" keeps it in a
# variable while the training step raises; "child" trains inside a forked multiprocessing child.
_FAILING_RUN = """
import sys, torch
from torch.utils.data import DataLoader, Dataset
from tcpnet.engine.preemption import ignore_stop_signals

class Clips(Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        if sys.argv[1] in ("worker", "child"):
            raise RuntimeError("10 consecutive videos failed")
        return torch.zeros(2)

def train():
    batches = iter(DataLoader(Clips(), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals))
    print(*[w.pid for w in batches._workers], flush=True)
    for batch in batches:
        raise RuntimeError("the training step failed")

if sys.argv[1] == "child":
    import multiprocessing
    rank = multiprocessing.get_context("fork").Process(target=train)
    rank.start()
    rank.join()
    sys.exit(rank.exitcode)
train()
"""


def _alive(pid: int) -> bool:
    """Running (a zombie counts as dead)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] not in ("Z", "X")


def _kill_group(proc: subprocess.Popen) -> None:
    """Leave nothing behind from a failed test: SIGKILL the subprocess and its workers."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.parametrize("where", ["worker", "loop", "child"])
def test_a_failed_run_with_workers_exits_promptly(where):
    proc = subprocess.Popen([sys.executable, "-c", _FAILING_RUN, where], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=EXIT_LIMIT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"the run ({where} error) did not exit within {EXIT_LIMIT_S:.0f} s: its workers hang the exit")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, err
    assert ("consecutive videos failed" if where != "loop" else "the training step failed") in err
    workers = [int(p) for p in out.split()]
    assert len(workers) == 2 and not [p for p in workers if _alive(p)]
    print(f"{where}: exited in {elapsed:.1f} s")


_STOPPED_RUN = """
import sys, time
from torch.utils.data import DataLoader, Dataset
from tcpnet.engine.preemption import StopSignals, ignore_stop_signals

class Slow(Dataset):
    def __len__(self):
        return 20
    def __getitem__(self, i):
        time.sleep(0.02)
        return i

with StopSignals() as stop:
    batches = iter(DataLoader(Slow(), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals))
    got = [next(batches), next(batches)]  # one batch from each worker: both ran worker_init_fn
    print(*[w.pid for w in batches._workers], flush=True)
    sys.stdin.readline()  # the test signals the process group meanwhile
    got += list(batches)  # what a checkpointing step still needs from the workers
    print(stop.received, sum(len(b) for b in got), flush=True)
"""


def test_stop_signals_to_the_group_reach_the_main_process_alone():
    """A scheduler's SIGTERM/SIGUSR1 to the process group, and SIGINT to a worker, leave the workers
    running while the main process records the stop, finishes its data and exits."""
    proc = subprocess.Popen([sys.executable, "-c", _STOPPED_RUN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers: List[int] = []
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2, proc.stderr.read()
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGUSR1)
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert all(_alive(p) for p in workers), "a worker died on a stop signal"
        out, err = proc.communicate("go\n", timeout=EXIT_LIMIT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail("the stopped run did not exit")
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert proc.returncode == 0, err
    received, clips = (int(v) for v in out.split())
    assert received in (signal.SIGTERM, signal.SIGUSR1) and clips == 20  # pending signals arrive lowest first
    assert not [p for p in workers if _alive(p)]
