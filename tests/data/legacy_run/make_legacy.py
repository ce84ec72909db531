"""Made with tcpnet at commit e402db3 (the engine before TrainState): a tiny run's mid-epoch
training checkpoint (positional 'epoch_sums') and the weights of the same run uninterrupted."""
import os, signal, subprocess, sys, time, json
from pathlib import Path
import torch
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
from tcpnet.tools.synthetic import make_synthetic_dataset
data = out / "data"
if not data.exists():
    make_synthetic_dataset(data, seed=3, num_classes=2, train_per_class=4, val_per_class=1, num_frames=8, size=32, progress=False, workers=1)
SCRIPT = """
import sys, torch, os
from tcpnet.config import load_config
from tcpnet.engine.preemption import Preempted
from tcpnet.engine.train import train
try:
    res = train(load_config(None, sys.argv[1:]))
except Preempted:
    sys.exit(75)
torch.save(res["model"].state_dict(), os.path.join(res["output_dir"], "final.pt"))
"""
(out / "run.py").write_text(SCRIPT)
def args(o):
    return ["model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=8", "model.kwargs.mid_channels=16",
            f"data.root={data}", f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt",
            "data.num_workers=0", "data.crop_size=32", "data.scale_size=32", "train.epochs=2", "train.batch_size=2",
            "train.lr=0.02", "train.lr_steps=[1]", "train.log_every=1", "train.checkpoint_every=1", "train.ema_decay=0.9",
            "test.batch_size=2", f"output_dir={o}", "seed=7", "device=cpu"]
env = {**os.environ, "OMP_NUM_THREADS": "1"}
subprocess.run([sys.executable, str(out / "run.py"), *args(out / "ref")], check=True, env=env)
p = subprocess.Popen([sys.executable, str(out / "run.py"), *args(out / "cut")], env=env)
while True:
    m = out / "cut" / "metrics.jsonl"
    if m.exists() and any(json.loads(l).get("event") == "train" and json.loads(l)["iter"] >= 2 for l in m.read_text().splitlines() if l.strip()):
        break
    time.sleep(0.005)
p.send_signal(signal.SIGTERM); print("rc", p.wait())
ck = torch.load(out / "cut" / "last.pt", weights_only=True)
print("epoch", ck["epoch"], "iter", ck["iter"], "sums", ck["epoch_sums"])
