"""Freed tensor memory kept in the process (tcpnet.utils.malloc): page faults gone, choice honoured."""
import platform
import subprocess
import sys

import pytest

from tcpnet.utils import malloc

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="retain_freed_memory acts on glibc's malloc only")

# 64 MiB tensors: above glibc's largest dynamic mmap threshold (32 MiB), so by default each one is
# a fresh mmap, unmapped on free, and touching it page-faults every time.
_FAULTS = """
import resource, statistics, torch
from tcpnet.utils.malloc import freed_memory_retained, retain_freed_memory

def faults():  # median over 9 allocations: robust to the odd NUMA-balancing scan of the heap
    counts = []
    for _ in range(9):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 * 2**20).fill_(1.0)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return int(statistics.median(counts))

faults()
before = faults()
applied = retain_freed_memory()
faults()  # the heap grows once
after = faults()
print(before, int(applied), int(freed_memory_retained()), after)
"""


@glibc
def test_retained_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True)
    before, applied, retained, after = (int(v) for v in out.stdout.split())
    assert applied == 1 and retained == 1
    assert before >= 32  # every 64 MiB tensor faulted in again: at least once per 2 MiB (huge pages or not)
    assert after <= 1    # the same memory reused: nothing mapped in again


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(malloc, "_retained", False)
    monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("", ""))
    assert malloc.retain_freed_memory() is False
    assert malloc.freed_memory_retained() is False


@pytest.mark.parametrize("retain", [True, False])
def test_train_and_test_apply_the_config_choice(retain, monkeypatch, tmp_path):
    """`retain_freed_memory` (top-level config key) decides whether train() and run_test() call
    it; it may change on resume (it is not part of the recipe)."""
    from tcpnet.config import load_config
    from tcpnet.apps import test as testing_module
    from tcpnet.engine import setup as setup_module  # where train() calls it
    from tcpnet.engine import train as train_module
    from tcpnet.engine.checkpoint import RESUMABLE_KEYS
    from tcpnet.tools.synthetic import make_synthetic_dataset

    calls = []
    monkeypatch.setattr(setup_module, "retain_freed_memory", lambda: calls.append("train") or True)
    monkeypatch.setattr(testing_module, "retain_freed_memory", lambda: calls.append("test") or True)
    data = tmp_path / "syn"
    make_synthetic_dataset(data, seed=0, num_classes=2, train_per_class=2, val_per_class=1,
                           num_frames=8, size=32, progress=False)
    cfg = load_config(None, [
        "model.name=tcp_tiny", "model.num_segments=2", "model.kwargs.dim=8", "model.kwargs.mid_channels=8",
        f"data.root={data}", f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt",
        "data.num_workers=0", "data.crop_size=32", "data.scale_size=32", "train.epochs=1", "train.batch_size=2",
        f"output_dir={tmp_path / 'run'}", "device=cpu", f"retain_freed_memory={str(retain).lower()}"])
    assert cfg.retain_freed_memory is retain
    result = train_module.train(cfg)
    assert calls == (["train"] if retain else [])
    assert result["final"]["epoch"] == 0
    tested = testing_module.run_test(cfg, progress=False)
    assert calls == (["train", "test"] if retain else [])
    assert tested.metrics["num_videos"] == 2
    assert "retain_freed_memory" in RESUMABLE_KEYS
