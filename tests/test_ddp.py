"""DDP under torchrun on CPU (gloo, 2 processes): identical weights on both ranks, and evaluation
counts every validation video exactly once (odd count, so a padding sampler would double one)."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = """
import hashlib, json, os, sys
import torch
from tcpnet.config import load_config
from tcpnet.engine.train import train
from tcpnet.engine.evaluate import evaluate
from tcpnet.data.build import build_datasets, read_lists
cfg = load_config(None, sys.argv[1:])
rank = int(os.environ["RANK"])
result = train(cfg)  # joins and leaves the gloo process group itself
model = result["model"]
h = hashlib.sha256()
for name, p in model.named_parameters():  # parameters only: BN running stats are per rank in DDP
    h.update(name.encode()); h.update(p.detach().contiguous().numpy().tobytes())
record = {"rank": rank, "params_sha256": h.hexdigest(), "final": result["final"]}
if rank == 0:  # single-process evaluation of the same weights, for comparison
    import dataclasses
    cfg1 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=result["num_classes"]))
    val = build_datasets(cfg1.data, {"val": read_lists(cfg1.data)["val"]}, model.input_config,
                         num_classes=cfg1.model.num_classes, seed=cfg1.seed)["val"]
    loader = torch.utils.data.DataLoader(val, batch_size=5)
    res = evaluate(model, loader, device=torch.device("cpu"), num_classes=result["num_classes"])
    record["single"] = {k: v for k, v in res.metrics.items() if k != "confusion_matrix"}
with open(os.path.join(cfg.output_dir, f"rank{rank}.json"), "w") as f:
    json.dump(record, f)
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tcpnet.tools.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(root, seed=1, num_classes=4, train_per_class=4, val_per_class=3,
                           num_frames=16, size=64, progress=False)
    lines = (root / "val.txt").read_text().splitlines()
    (root / "val_odd.txt").write_text("\n".join(lines[:11]) + "\n")  # 11 videos: odd
    return root


def test_torchrun_two_ranks(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    args = ["model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=16", "model.kwargs.mid_channels=32",
            f"data.root={tiny_data}", f"data.train_list={tiny_data}/train.txt",
            f"data.val_list={tiny_data}/val_odd.txt", "data.num_workers=0", "data.crop_size=48",
            "data.scale_size=56", "train.epochs=2", "train.batch_size=4", "train.lr=0.02", "train.log_every=2",
            "test.batch_size=2", f"output_dir={out}", "seed=0", "device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["params_sha256"] == r1["params_sha256"]  # bitwise-identical parameters
    for r in (r0, r1):
        assert r["final"]["val_num_videos"] == 11  # every video once, none padded in
        assert r["final"]["train_clips"] == 16  # 16 videos / (2 per rank x 2 ranks) = 4 iterations
    # the sharded evaluation equals a single-process evaluation of the same weights
    assert r0["single"]["num_videos"] == 11
    assert r0["final"]["val_top1"] == pytest.approx(r0["single"]["top1"], abs=1e-9)
    assert r0["final"]["val_loss"] == pytest.approx(r0["single"]["loss"], rel=1e-5)
    # rank 0 alone writes the log and the checkpoints
    starts = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "start" for r in starts) == 1 and starts[0]["world_size"] == 2
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
