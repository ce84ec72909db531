"""`tcpnet demo` reuses or regenerates its own synthetic data: running it again, or after a quick
run, or over a folder with other settings never stops with "pass overwrite=True" (an option the
command does not have)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tcpnet.apps.demo import make_demo_data

TINY = dict(num_classes=2, train_per_class=1, val_per_class=1, num_frames=4, size=16)


def _videos(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*.mp4"))}


def test_second_run_reuses_the_data(tmp_path):
    for quick in (True, False):
        first = make_demo_data(tmp_path, quick, data_settings=TINY)
        before = _videos(first)
        again = make_demo_data(tmp_path, quick, data_settings=TINY)
        assert again == first and _videos(again) == before and len(before) == 4
    assert {p.name for p in tmp_path.iterdir()} == {"data", "data_quick"}  # a quick run keeps to its own


def test_data_of_other_settings_is_regenerated_and_a_broken_manifest_refused(tmp_path, capsys):
    make_demo_data(tmp_path, data_settings=dict(TINY, num_frames=6))  # e.g. written by an older quick run
    data = make_demo_data(tmp_path, data_settings=TINY)
    assert json.loads((data / "manifest.json").read_text())["num_frames"] == 4
    assert "regenerating" in capsys.readouterr().out
    # our manifests are written whole (renamed into place), so an unreadable one is not ours: the
    # folder is refused, naming the file, and nothing in it is deleted
    (data / "manifest.json").write_text("{not json")
    before = _videos(data)
    with pytest.raises(FileExistsError, match=r"manifest.json: not valid JSON .*use another out_dir"):
        make_demo_data(tmp_path, data_settings=TINY)
    assert _videos(data) == before and len(before) == 4


@pytest.mark.slow
def test_quick_demo_cli_twice_in_the_same_folder(tmp_path):
    """`tcpnet demo --quick --out D` (smoke size, 1 iteration per epoch) run outside the repository,
    twice: the first run writes the table, results and picture; the second reuses D/data_quick."""
    cmd = [sys.executable, "-m", "tcpnet", "demo", "--quick", "--out", "D", "train.max_iters_per_epoch=1"]
    for run in range(2):
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "overwrite" not in proc.stdout + proc.stderr and "within-pair" in proc.stdout
        if run == 0:  # from any directory: the results of a whole quick demo
            assert "TCP" in proc.stdout and "GAP" in proc.stdout
            res = json.loads((tmp_path / "D/results.json").read_text())
            assert set(res["results"]) == {"TCP", "GAP"} and res["quick"] is True
            for r in res["results"].values():
                assert 0 <= r["top1"] <= 100 and 0 <= r["within_pair"] <= 100 and r["val_videos"] == 32
            assert (tmp_path / "D/demo.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "D/results.json").read_text())["quick"] is True
