"""Code outside the package: a backbone, a head (with its own optimizer groups) and a list format
registered by a module in a temporary folder, used from a YAML config's ``imports:`` through the
CLI (train, then test), and the same module found as an installed ``tcpnet.plugins`` entry point."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tcpnet.config import ConfigError, load_config
from tcpnet.utils.plugins import PluginError, load_imports

pytestmark = pytest.mark.slow

PLUGIN = '''
"""A third-party tcpnet plugin: one backbone, one head, one list format."""
import torch
from torch import nn

from tcpnet.backbones import FrameBackbone, register_backbone
from tcpnet.data.formats import ListSource, register_list_format
from tcpnet.data.records import RecordList, VideoRecord
from tcpnet.engine.hooks import Hook, register_hook
from tcpnet.heads import Head, ParamGroupSpec, check_frame_batch, register_head


class PluginNet(FrameBackbone):
    def __init__(self, num_segments: int = 8, width: int = 8) -> None:
        super().__init__()
        self._num_segments = num_segments
        self.num_features = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=4, padding=1)
        self.bn1 = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(self.bn1(self.conv1(x)))


@register_backbone
def plugin_net(num_segments: int = 8, width: int = 8) -> PluginNet:
    return PluginNet(num_segments, width)


@register_head("plugin_max")
class PluginMax(Head):
    def __init__(self, in_channels: int, hidden: int = 6) -> None:
        super().__init__()
        self.in_channels, self.out_dim = in_channels, hidden
        self.proj = nn.Linear(in_channels, hidden)

    def forward(self, x, num_segments):
        n = check_frame_batch(x, num_segments, self.in_channels, "PluginMax")
        return self.proj(x.reshape(n, num_segments, self.in_channels, -1).amax(dim=(1, 3)))

    def param_groups(self, pretrained_dim=None):
        return [ParamGroupSpec("PLUG", ("proj",), lr_mult=3.0)]


@register_hook("plugin_counter")
class StepCounter(Hook):
    """Counts optimizer steps into its own statistic; options come from the config's hooks: key."""
    stats = ("plugin_steps",)

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def after_step(self, step, stats):
        stats.add("plugin_steps", self.weight)

    def on_epoch_end(self, totals, record):
        record["plugin_steps"] = totals["plugin_steps"]


@register_list_format("plugin_csv")
def read_plugin_csv(source: ListSource) -> RecordList:
    rows = [line.split(",") for line in open(source.path).read().splitlines() if line.strip()]
    return RecordList((VideoRecord(p, None, int(label), line=i + 1) for i, (p, label) in enumerate(rows)),
                      class_names=source.class_names)
'''

CONFIG = '''
imports: [tcpnet_test_plugin]
hooks: {{plugin_counter: {{weight: 2.0}}}}
model:
  backbone: plugin_net
  head: plugin_max
  num_segments: 4
  kwargs: {{width: 8, hidden: 6}}
  dropout: 0.0
data:
  root: {data}
  list_format: plugin_csv
  train_list: {data}/train.csv
  val_list: {data}/val.csv
  class_names: {data}/classes.txt
  num_workers: 0
  crop_size: 32
  scale_size: 32
train: {{epochs: 2, batch_size: 4, lr: 0.05, lr_steps: [], log_every: 1}}
test: {{batch_size: 4}}
output_dir: {out}
device: cpu
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugin")
    (d / "tcpnet_test_plugin.py").write_text(PLUGIN)
    return d


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    from tcpnet.tools.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, seed=4, num_classes=2, train_per_class=4, val_per_class=2, num_frames=8, size=32,
                           progress=False)
    for subset in ("train", "val"):
        rows = [line.split() for line in (root / f"{subset}.txt").read_text().splitlines() if line.strip()]
        (root / f"{subset}.csv").write_text("".join(f"{r[0]},{r[-1]}\n" for r in rows))
    return root


def _env(*paths: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _tcpnet(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcpnet", *args], capture_output=True, text=True, env=env)


def test_plugin_from_outside_the_package_trains_and_tests_through_the_cli(plugin_dir, csv_data, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "plugin.yaml"
    cfg.write_text(CONFIG.format(data=csv_data, out=out))
    env = _env(plugin_dir)
    trained = _tcpnet("train", str(cfg), env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "group PLUG_weight" in trained.stderr and "lr_mult 3" in trained.stderr  # the head's own group
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["model_name"] == "plugin_net+plugin_max" and ckpt["epoch"] == 2
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    groups = {g["name"]: g for g in start["groups"]}
    assert "plugin_counter" in start["hooks"]
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    assert [r["plugin_steps"] for r in epochs if r["event"] == "epoch"] == [4.0, 4.0]  # 2 steps x weight 2
    assert groups["PLUG_weight"]["num_tensors"] == 1 and groups["PLUG_bias"]["lr_mult"] == 3.0
    tested = _tcpnet("test", str(cfg), "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "test"),
                     env=env)
    assert tested.returncode == 0, tested.stderr[-3000:]
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["num_videos"] == 4 and 0 <= metrics["top1"] <= 100
    # without the plugin on the path: one line naming the module and the config key
    missing = _tcpnet("train", str(cfg), "output_dir=" + str(tmp_path / "other"), env=_env())
    assert missing.returncode != 0 and "cannot import 'tcpnet_test_plugin'" in missing.stderr
    assert "imports" in missing.stderr and "Traceback" not in missing.stderr


def test_plugin_as_an_installed_entry_point(plugin_dir, tmp_path):
    """A package that declares ``[tcpnet.plugins]`` is loaded by every command without ``imports:``."""
    site = tmp_path / "site"
    dist = site / "tcpnet_test_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tcpnet-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tcpnet.plugins]\nplugin = tcpnet_test_plugin\n")
    code = textwrap.dedent("""
        from tcpnet.models import build_model, check_model_name
        from tcpnet.utils.plugins import load_plugins
        print(load_plugins())
        m = build_model("plugin_net+plugin_max", num_classes=3, num_segments=2)
        print(type(m.backbone).__name__, m.head.out_dim)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(site, plugin_dir))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "plugin=tcpnet_test_plugin" in res.stdout and "PluginNet 6" in res.stdout
    # every command, not only those that read a config: the plugin's model is known to `flops`
    flops = _tcpnet("flops", "plugin_net+plugin_max", "--segments", "2", "--size", "32", env=_env(site, plugin_dir))
    assert flops.returncode == 0 and "plugin_net+plugin_max" in flops.stdout, flops.stderr[-2000:]


def test_an_unimportable_module_names_itself_and_the_key():
    with pytest.raises(PluginError, match=r"my\.yaml: imports: cannot import 'no_such_tcpnet_plugin'"):
        load_imports(["no_such_tcpnet_plugin"], source="my.yaml: imports")


def test_model_name_and_backbone_head_are_one_choice(tmp_path):
    with pytest.raises(ConfigError, match="model.backbone and model.head go together"):
        load_config(None, ["model.backbone=resnet_tiny"])
    with pytest.raises(ConfigError, match="name two models"):
        load_config(None, ["model.name=tcp_tiny", "model.backbone=resnet_tiny", "model.head=gap"])
    cfg = load_config(None, ["model.backbone=resnet_tiny", "model.head=gap"])
    from tcpnet.config import model_name
    assert model_name(cfg.model) == "resnet_tiny+gap" and model_name(load_config(None, []).model) == "tcp_tsn_r50"


def test_a_factory_default_t_is_honoured_when_the_config_sets_none():
    """``model.num_segments`` unset: R(2+1)D's own T=16, not the 2-D zoo's 8."""
    from tcpnet.models import build_model
    cfg = load_config(None, ["model.name=r2plus1d_r18"])
    assert cfg.model.num_segments is None
    assert build_model(cfg.model.name, num_classes=3, num_segments=cfg.model.num_segments).num_segments == 16
    assert build_model("r2plus1d_18+tcp", num_classes=3).num_segments == 16
    assert build_model("resnet_tiny+tcp", num_classes=3).num_segments == 8
