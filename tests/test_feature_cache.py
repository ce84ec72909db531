"""Frozen-backbone probing with a feature cache (``data.cache_features``): the cache holds exactly
the backbone's maps of each fixed view (float32 bit for bit, float16 as the rounding of those),
views are seeded and picked per (seed, epoch, video), a cache made for another run is refused in
one line, a killed build leaves nothing that reads as complete, the config refuses what cannot
work on cached maps, and training on the cache ends with the weights of training on the decoded
views, also after a SIGKILL and resume. Real models and real H.264 mp4s (PyAV)."""
import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tcpnet.config import ConfigError, load_config
from tcpnet.data.build import read_lists
from tcpnet.data.dataset import VideoDataset
from tcpnet.data.feature_cache import (CachedMapsDataset, CacheMismatch, FeatureStore, FixedViews, cache_key,
                                       pick_view)
from tcpnet.engine.feature_cache import build_feature_cache, clip_maps
from tcpnet.engine.train import train
from tcpnet.models import build_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 train videos (4 classes), 4 val videos: 16 frames of 64x64 H.264."""
    from tcpnet.tools.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, seed=2, num_classes=4, train_per_class=2, val_per_class=1, num_frames=16, size=64,
                           progress=False)
    return root


def _views(data: Path, model, num_views: int, seed: int = 3, num_videos: int = 8) -> FixedViews:
    cfg = load_config(None, [f"data.root={data}", f"data.train_list={data}/train.txt"])
    records = read_lists(cfg.data)["train"][:num_videos]
    return FixedViews.from_config(records, str(data), model.input_config, num_views=num_views, seed=seed, flip=True)


def _tiny(name: str = "tcp_tiny"):
    torch.manual_seed(0)
    kwargs = dict(dim=8, mid_channels=16)
    model = build_model(name, num_classes=4, num_segments=4, **kwargs)
    crop = 48 if name == "tcp_tiny" else 32
    model.input_config = dataclasses.replace(model.input_config, crop_size=crop, scale_size=crop + 8)
    return model.freeze_backbone().eval()


@pytest.mark.parametrize("name,num_videos,dtypes", [("tcp_tiny", 8, ("float32", "float16")),
                                                    ("tcp_videomae_vit_small", 3, ("float32",))])
def test_cache_holds_the_backbone_maps_of_every_view(data, tmp_path, name, num_videos, dtypes):
    """float32: array[i, k] == backbone(clip of view k of video i), bit for bit; float16: exactly
    those values rounded to float16 (rounding error <= 2^-11 relative). View 0 is the validation
    pipeline's clip; train views are reproducible and differ from each other. A frames model and
    a video one (VideoMAE, T' = T/2)."""
    model = _tiny(name)
    views = _views(data, model, num_views=2, num_videos=num_videos)
    centre = VideoDataset.from_config(views.records, str(data), model.input_config, mode="val")
    assert torch.equal(views.clip(2, 0), centre[2][0])
    again = _views(data, model, num_views=3, num_videos=num_videos)
    assert torch.equal(views.clip(1, 1), again.clip(1, 1)) and not torch.equal(again.clip(1, 1), again.clip(1, 2))
    refs = {(i, k): clip_maps(model, torch.stack([views.clip(i, k)]))[0]  # a collated batch of one
            for i in range(len(views)) for k in range(2)}
    for dtype in dtypes:
        store = FeatureStore(tmp_path / dtype)
        key = cache_key(views, model=name, backbone=model.backbone, dtype=dtype, flip=True)
        build_feature_cache(model, views, store, key, device=torch.device("cpu"), batch_size=1)
        assert store.check(key)
        array = store.open()
        assert array.shape == (len(views), 2, *refs[0, 0].shape) and array.dtype == np.dtype(dtype)
        for (i, k), ref in refs.items():
            assert torch.equal(torch.from_numpy(np.array(array[i, k])), ref.to(getattr(torch, dtype))), (dtype, i, k)
    assert refs[0, 0].shape[0] == (4 if name == "tcp_tiny" else 2)  # T' of a frames / video backbone


def test_views_are_picked_per_seed_epoch_and_video(data, tmp_path):
    """pick_view is a function of (seed, epoch, video) alone, uses every view, and the dataset
    returns the cached maps of the picked view in float32, also after a pickle (a worker)."""
    model = _tiny()
    views = _views(data, model, num_views=3)
    picks = [[pick_view(3, e, i, 3) for i in range(8)] for e in range(6)]
    assert picks == [[pick_view(3, e, i, 3) for i in range(8)] for e in range(6)]
    assert {p for row in picks for p in row} == {0, 1, 2} and picks[0] != picks[1]
    assert picks != [[pick_view(4, e, i, 3) for i in range(8)] for e in range(6)]
    assert all(pick_view(3, e, i, 1) == 0 for e in range(3) for i in range(8))
    store = FeatureStore(tmp_path)
    key = cache_key(views, model="tcp_tiny", backbone=model.backbone, dtype="float16", flip=True)
    build_feature_cache(model, views, store, key, device=torch.device("cpu"), batch_size=4)
    dataset = pickle.loads(pickle.dumps(CachedMapsDataset(views, store)))
    array = store.open()
    for epoch in (0, 5):
        dataset.set_epoch(epoch)
        for i in range(8):
            maps, label = dataset[i]
            assert maps.dtype == torch.float32 and label == views.target(i)
            assert torch.equal(maps, torch.from_numpy(np.array(array[i, picks[epoch][i]], dtype=np.float32)))


def test_a_cache_of_another_run_is_refused_in_one_line_or_rebuilt(data, tmp_path):
    model = _tiny()
    views = _views(data, model, num_views=2)
    store = FeatureStore(tmp_path)
    key = cache_key(views, model="tcp_tiny", backbone=model.backbone, dtype="float16", flip=True)
    build_feature_cache(model, views, store, key, device=torch.device("cpu"), batch_size=8)
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1e-3)  # another weights file
    other = cache_key(views, model="tcp_tiny", backbone=model.backbone, dtype="float16", flip=True)
    with pytest.raises(CacheMismatch) as err:
        store.check(other)
    line = str(err.value)
    assert "\n" not in line and "weights (cache '" in line and "data.cache_rebuild=true" in line
    assert "num_segments" not in line and "videos" not in line
    shorter = _views(data, build_model("tcp_tiny", num_classes=4, num_segments=2, dim=8, mid_channels=16), 2)
    with pytest.raises(CacheMismatch, match=r"num_segments \(cache 4, run 2\).*videos"):
        store.check({**cache_key(shorter, model="tcp_tiny", backbone=model.backbone, dtype="float16", flip=True),
                     "videos": "7 videos, list sha256 0"})
    assert store.check(other, rebuild=True) is False  # rebuild: the caller builds it again
    assert store.check(key) is True


def test_a_killed_build_leaves_nothing_that_reads_as_complete(data, tmp_path):
    """A build that dies while filling leaves no index and no data; a temporary file left by a
    SIGKILL is removed before the next build; data renamed into place without its index (a kill
    between the two renames) is not a cache."""
    model = _tiny()
    views = _views(data, model, num_views=1)
    store = FeatureStore(tmp_path)
    key = cache_key(views, model="tcp_tiny", backbone=model.backbone, dtype="float32", flip=True)

    def dies(array):
        array[0] = 1.0
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.write(key, (8, 1, 4, 128, 3, 3), dies)
    assert sorted(os.listdir(tmp_path)) == [] and store.index() is None and not store.check(key)
    (tmp_path / ".train.bin.999.tmp").write_bytes(b"x" * 100)  # SIGKILL inside the fill
    (tmp_path / "train.bin").write_bytes(b"\0" * 8 * 4 * 128 * 9 * 4)  # SIGKILL between the renames
    assert store.check(key) is False
    build_feature_cache(model, views, store, key, device=torch.device("cpu"), batch_size=8)
    assert sorted(os.listdir(tmp_path)) == ["train.bin", "train.json"] and store.check(key)


def _args(data: Path, out: Path, *extra: str) -> list:
    """8 videos, batch 4: 2 iterations per epoch, 2 epochs, frozen backbone, K=1 fixed view; 4 val
    videos validated every epoch, with the EMA weights as well."""
    return ["model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=8", "model.kwargs.mid_channels=16",
            "model.dropout=0.3", f"data.root={data}", f"data.train_list={data}/train.txt",
            f"data.val_list={data}/val.txt", "train.ema_decay=0.5", "data.num_workers=0",
            "data.crop_size=48", "data.scale_size=56", "data.cache_views=1", "train.epochs=2", "train.batch_size=4",
            "train.lr=0.05", "train.lr_steps=[1]", "train.log_every=1", "train.freeze_backbone=true",
            "train.checkpoint_every=1", "test.batch_size=4", f"output_dir={out}", "seed=5", "device=cpu", *extra]


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _val_records(out: Path) -> list:
    """The validation metrics of each epoch record of a run (every ``val_*`` field but the time)."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k.startswith("val_") and k != "val_time"}
            for r in map(json.loads, lines) if r["event"] == "epoch"]


def _record_diff(a: list, b: list) -> float:
    """Max |difference| of the numbers of two runs' val records (same epochs, same fields)."""
    assert len(a) == len(b) and all(set(x) == set(y) for x, y in zip(a, b)) and "val_ema_top1" in a[0]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x)


def _result(res: dict) -> dict:
    return {"weights": {k: v.clone() for k, v in res["model"].state_dict().items()},
            "val": _val_records(Path(res["output_dir"])), "logits": res["last_eval"].view_logits.clone()}


@pytest.fixture(scope="module")
def uncached(data, tmp_path_factory):
    """The reference: frozen probing on the decoded fixed views, validated on decoded clips (no cache)."""
    out = tmp_path_factory.mktemp("plain") / "run"
    return _result(train(load_config(None, _args(data, out))))


@pytest.fixture(scope="module")
def cached16(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("c16")
    res = train(load_config(None, _args(data, out / "run", f"data.cache_features={out / 'cache'}")))
    return out, _result(res)


def test_cached_training_ends_with_the_weights_of_uncached_training(data, tmp_path, uncached, cached16):
    """2 epochs, K=1, seed 5: a float32 cache gives the uncached run's weights within 1e-6 (measured:
    0, bit for bit); a float16 cache within 1e-3 (measured max |diff| about 6e-5: the maps carry
    2^-11 relative rounding). Validation on the cached val maps (model and EMA) gives the uncached
    run's val records (top-1/top-5/loss/mean class acc per epoch) and last val logits within 1e-6
    with float32 (measured: 0, bit for bit); float16 within 1e-3 (measured: val records 9e-6, the
    losses; logits 5e-5). The result is a whole model that predicts on clips."""
    done = train(load_config(None, _args(data, tmp_path / "run", f"data.cache_features={tmp_path / 'c32'}",
                                         "data.cache_dtype=float32")))
    res = _result(done)
    assert _max_diff(res["weights"], uncached["weights"]) <= 1e-6
    assert _record_diff(res["val"], uncached["val"]) <= 1e-6
    assert _max_diff({"l": res["logits"]}, {"l": uncached["logits"]}) <= 1e-6
    assert sorted(os.listdir(tmp_path / "c32")) == ["train.bin", "train.json", "val.bin", "val.json"]
    d16 = _max_diff(cached16[1]["weights"], uncached["weights"])
    assert 0 < d16 <= 1e-3, d16
    assert _max_diff({"l": cached16[1]["logits"]}, {"l": uncached["logits"]}) <= 1e-3
    assert _record_diff(cached16[1]["val"], uncached["val"]) <= 1e-3
    assert done["model"].eval()(torch.zeros(1, 3, 4, 48, 48)).shape == (1, 4)
    with pytest.raises(CacheMismatch, match=r"^data.cache_features=.*made for another weights .*; "
                       r"seed \(cache 5, run 6\): set data.cache_rebuild"):
        train(load_config(None, _args(data, tmp_path / "other", f"data.cache_features={tmp_path / 'c32'}",
                                      "data.cache_dtype=float32", "seed=6")))  # seed 6 draws other random weights
    (tmp_path / "val3.txt").write_text("".join((data / "val.txt").read_text().splitlines(True)[:3]))
    with pytest.raises(CacheMismatch, match=r"^data.cache_features=.*: val.json was made for another videos "
                       r"\(cache '4 videos, .*run '3 videos, [^;]*: set data.cache_rebuild"):
        train(load_config(None, _args(data, tmp_path / "val3", f"data.cache_features={tmp_path / 'c32'}",
                                      "data.cache_dtype=float32", f"data.val_list={tmp_path / 'val3.txt'}")))
    assert not (tmp_path / "val3" / "last.pt").exists()  # refused before any work
    train(load_config(None, _args(data, tmp_path / "val3", f"data.cache_features={tmp_path / 'c32'}",
                                  "data.cache_dtype=float32", f"data.val_list={tmp_path / 'val3.txt'}",
                                  "data.cache_rebuild=true")))
    assert json.loads((tmp_path / "c32" / "val.json").read_text())["shape"][:2] == [3, 1]


def test_cached_validation_names_the_videos_of_nonfinite_logits(data, tmp_path):
    """Validation on cached maps keeps evaluate's checks: a NaN classifier is an error naming the
    val videos (their paths, from the cached dataset's records)."""
    from tcpnet.data.build import IndexedSubset
    from tcpnet.engine.evaluate import NonFiniteLogitsError, evaluate
    model = _tiny()
    cfg = load_config(None, [f"data.root={data}", f"data.val_list={data}/val.txt"])
    views = FixedViews.from_config(read_lists(cfg.data)["val"], str(data), model.input_config, num_views=1, seed=0)
    store = FeatureStore(tmp_path, "val")
    build_feature_cache(model, views, store, cache_key(views, model="tcp_tiny", backbone=model.backbone,
                                                       dtype="float32", flip=True), device=torch.device("cpu"))
    loader = torch.utils.data.DataLoader(IndexedSubset(CachedMapsDataset(views, store), range(len(views))),
                                         batch_size=2)
    clips = torch.utils.data.DataLoader(IndexedSubset(VideoDataset.from_config(views.records, str(data),
                                        model.input_config, mode="val"), range(len(views))), batch_size=2)
    cpu = torch.device("cpu")
    assert torch.equal(evaluate(model.head_classifier(), loader, device=cpu).view_logits,
                       evaluate(model, clips, device=cpu).view_logits)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match=rf"for 4 of 4 video\(s\): {views.records[0].path}, "):
        evaluate(model.head_classifier(), loader, device=cpu)


SCRIPT = """
import sys, time, torch, os
from tcpnet.config import load_config
from tcpnet.engine import loop
from tcpnet.engine.train import train
update = loop._update
def slow_update(step, state, ctx):  # leave the test time to kill in epoch 2 after its mid-epoch checkpoint
    time.sleep(1.0 if (step.epoch, step.iteration) == (1, 1) else 0.0)
    update(step, state, ctx)
loop._update = slow_update
res = train(load_config(None, sys.argv[1:]))
torch.save(res["model"].state_dict(), os.path.join(res["output_dir"], "final.pt"))
"""


def test_sigkill_and_resume_with_the_cache_is_exact(data, tmp_path, cached16):
    """SIGKILL inside epoch 2 (a checkpoint every iteration) and rerun: the weights of the
    uninterrupted cached run within 1e-6 (as tests/test_cluster.py: that run ran in this process
    with its thread count, these with one thread, so sums may round differently; measured 4e-9). The killed run's cache directory starts with what a
    build killed between its renames leaves; the first run rebuilds it."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out, cache = tmp_path / "run", tmp_path / "cache"
    cache.mkdir()
    (cache / ".train.bin.123.tmp").write_bytes(b"partial")
    (cache / "train.bin").write_bytes(b"partial")
    args = _args(data, out, f"data.cache_features={cache}")
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=ENV, start_new_session=True)
    _wait_for_checkpoint(out / "last.pt", epoch=1, it=1, proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _max_diff(torch.load(out / "final.pt", weights_only=True), cached16[1]["weights"]) <= 1e-6
    assert sorted(os.listdir(cache)) == ["train.bin", "train.json", "val.bin", "val.json"]
    assert _record_diff(_val_records(out), cached16[1]["val"]) <= 1e-6


def _wait_for_checkpoint(path: Path, *, epoch: int, it: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` (written atomically) is the checkpoint of ``epoch`` at iteration ``it``."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file():
            ckpt = torch.load(path, weights_only=True)
            if (ckpt["epoch"], ckpt["iter"]) == (epoch, it):
                return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of epoch {epoch} iteration {it}: {proc.stdout.read().decode()[-3000:]}")


@pytest.mark.parametrize("extra,match", [
    (["data.cache_features=c"], r"data.cache_features=c needs train.freeze_backbone=true"),
    (["data.cache_features=c", "train.freeze_backbone=true", "train.mixup_alpha=0.2"],
     r"train.mixup_alpha/train.cutmix_alpha mix pixels.*data.cache_features"),
    (["data.cache_features=c", "train.freeze_backbone=true", "train.cutmix_alpha=1"], r"cutmix_alpha"),
    (["data.cache_rebuild=true"], r"data.cache_rebuild=true needs data.cache_features"),
    (["data.cache_dtype=bfloat16"], r"data.cache_dtype must be one of \['float16', 'float32'\]"),
    (["data.cache_views=0"], r"data.cache_views must be"),
])
def test_config_refuses_what_cannot_train_on_cached_maps(extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, extra)
