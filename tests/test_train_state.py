"""The training engine as a state object: TrainState is the one list of what a checkpoint holds,
statistics are saved by name, and checkpoints written before either still continue exactly."""
import shutil
from pathlib import Path

import pytest
import torch

from tcpnet.config import load_config
from tcpnet.engine.stats import LEGACY_ORDER, RunningStats
from tcpnet.engine.train import train

LEGACY = Path(__file__).parent / "data" / "legacy_run"


def _legacy_args(data: Path, out: Path, *extra: str) -> list:
    """The settings tests/data/legacy_run/make_legacy.py ran with (at commit e402db3)."""
    return ["model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=8", "model.kwargs.mid_channels=16",
            f"data.root={data}", f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt",
            "data.num_workers=0", "data.crop_size=32", "data.scale_size=32", "train.epochs=2", "train.batch_size=2",
            "train.lr=0.02", "train.lr_steps=[1]", "train.log_every=1", "train.checkpoint_every=1",
            "train.ema_decay=0.9", "test.batch_size=2", f"output_dir={out}", "seed=7", "device=cpu", *extra]


def test_running_stats_by_name_and_legacy_positions():
    s = RunningStats(["loss_sum", "clips", "grad_norm_sum"])
    s.add("loss_sum", torch.tensor(2.5))
    s.add("clips", 4)
    assert s.read() == {"loss_sum": 2.5, "clips": 4.0, "grad_norm_sum": 0.0}
    with pytest.raises(KeyError, match="not declared"):
        s.add("typo", 1.0)
    missing = s.load_state_dict([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # an old positional epoch_sums list
    assert s.read() == {"loss_sum": 1.0, "clips": 4.0, "grad_norm_sum": 0.0}
    assert missing == ["grad_norm_sum"] and LEGACY_ORDER[3] == "clips"


@pytest.fixture
def one_thread():
    """The fixture was made with OMP_NUM_THREADS=1: the same reduction order gives the same bits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_a_checkpoint_of_the_old_engine_continues_exactly(tmp_path, one_thread):
    """A mid-epoch last.pt written by the engine before TrainState (positional epoch sums, no data
    position) resumes and ends with the weights of the old engine's uninterrupted run: bit for bit,
    so the new loop with its hooks computes exactly what the old loop did."""
    data = tmp_path / "data"
    shutil.copytree(LEGACY / "data", data)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(LEGACY / "mid_epoch_last.pt", out / "last.pt")
    old = torch.load(out / "last.pt", weights_only=True)
    assert "epoch_sums" in old and "epoch_stats" not in old and old["iter"] == 3
    res = train(load_config(None, _legacy_args(data, out, "train.force_resume=true")))  # the data folder moved
    assert res["resumed_from"] == str(out / "last.pt")
    ref = torch.load(LEGACY / "uninterrupted_final.pt", weights_only=True)
    got = res["model"].state_dict()
    assert set(got) == set(ref)
    worst = max((got[k].double() - ref[k].double()).abs().max().item() for k in ref)
    assert worst == 0.0, worst
    new = torch.load(out / "last.pt", weights_only=True)
    assert new["epoch"] == 2 and new["iter"] == 0 and new["data_position"]["world_size"] == 1
