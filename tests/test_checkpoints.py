"""tcpnet.checkpoints: safe loading, key conversion of every accepted layout, strict errors,
pretraining files (ImageNet GCP, torchvision, another dataset's TCP model), our model files.

Small models (tcp_tiny, tsn_tiny) stand in for the zoo: the rules are about key names and shapes,
and the full-size layouts are exercised by tests/test_reference.py and the key-only tests below.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from tcpnet import build_model
from tcpnet.checkpoints import (
    CheckpointError,
    build_model_from_checkpoint,
    convert_checkpoint,
    export_safetensors,
    load_checkpoint,
    load_pretrained,
    map_old_keys,
    save_model,
)
from tcpnet.checkpoints.convert import ours_to_authors

REF = Path(__file__).parent / "data" / "reference"
T = 8


def tiny(name: str = "tcp_tiny", num_classes: int = 5, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=num_classes, num_segments=T, **kw)


def randomized(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every tensor (BN statistics and fc included) set to non-default values, so a key that is
    not loaded cannot go unnoticed by a value comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) * 0.2 + (0.9 if "running_var" in k else -0.1))
    return model


def clip(seed: int = 0, size: int = 48) -> torch.Tensor:
    return torch.randn(2, 3, T, size, size, generator=torch.Generator().manual_seed(seed))


def authors_state(model: torch.nn.Module, module: bool = True) -> Dict[str, torch.Tensor]:
    prefix = "module." if module else ""
    return {prefix + ours_to_authors(k): v.clone() for k, v in model.state_dict().items()}


def released(sd: Dict[str, torch.Tensor], path: Path, **extra) -> Path:
    torch.save({"epoch": 3, "arch": "resnet50", "state_dict": sd, "best_prec1": 12.5,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "name": "first_conv_weight",
                                                             "lr_mult": 1, "decay_mult": 1, "params": [0]}]},
                **extra}, path)
    return path


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


# ----------------------------------------------------------------------------- safety
class _Payload:
    """Unpickling this runs ``exec``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    # Control: the payload is real (plain unpickling does create its marker).
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    marker = tmp_path / "marker"
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps({"state_dict": {}, "x": _Payload(marker)}, protocol=2))
    zipped = tmp_path / "evil_zip.pth.tar"
    torch.save({"state_dict": tiny().state_dict(), "best_prec1": _Payload(marker)}, zipped)
    for path in (raw, zipped):
        for load in (lambda p: load_checkpoint(tiny(), p), lambda p: load_pretrained(tiny(), p),
                     build_model_from_checkpoint):
            with pytest.raises(CheckpointError) as err:
                load(path)
            msg = str(err.value)
            assert str(path) in msg and "refused" in msg and "unpickling" in msg
            assert err.value.__cause__ is None  # no chained pickle traceback with the payload
    assert not marker.exists()


def test_numpy_scalars_in_released_files_are_allowed(tmp_path):
    src = randomized(tiny())
    path = released(authors_state(src), tmp_path / "np.pth", best_prec1=np.float64(71.25))
    dst = tiny(seed=3)
    report = load_checkpoint(dst, path)
    assert report.ok and same_state(src, dst)


def test_missing_or_corrupt_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tiny(), tmp_path / "absent.pth")
    bad = tmp_path / "truncated.pth"
    torch.save(tiny().state_dict(), bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(tiny(), bad)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_checkpoint(tiny(), {"state_dict": {"fc.weight": "oops"}})


# ----------------------------------------------------------------------------- strictness
def test_strict_mismatch_names_keys_and_loads_nothing(tmp_path):
    src = randomized(tiny())
    sd = authors_state(src)
    del sd["module.base_model.TCP.TCP_att.TSA.norm.weight"]
    sd["module.base_model.TCP.extra_layer.weight"] = torch.zeros(3)
    sd["module.new_fc.weight"] = torch.zeros(7, sd["module.new_fc.weight"].shape[1])
    path = released(sd, tmp_path / "bad.pth")

    dst = tiny(seed=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, path)
    msg = str(err.value)
    assert "head.TCP_att.TSA.norm.weight" in msg  # missing
    assert "module.base_model.TCP.extra_layer.weight" in msg  # unexpected (the file's own name)
    assert "fc.weight file (7, " in msg and "model (5, " in msg  # shape mismatch
    # fc.weight is both mismatched and (hence) missing: "missing" = left at initialisation.
    assert "2 missing" in msg and "1 unexpected" in msg and "1 shape mismatches" in msg
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())  # all-or-nothing

    report = load_checkpoint(dst, path, strict=False)
    assert not report.ok
    assert report.missing == ["head.TCP_att.TSA.norm.weight", "fc.weight"]
    assert report.unexpected == ["module.base_model.TCP.extra_layer.weight"]
    assert [k for k, _, _ in report.shape_mismatch] == ["fc.weight"]
    assert len(report.loaded) == len(before) - 2
    for k in report.loaded:
        assert torch.equal(dst.state_dict()[k], src.state_dict()[k]), k


def test_strict_error_caps_long_lists_but_gives_counts():
    dst = tiny()
    sd = {k: v for k, v in dst.state_dict().items() if k.startswith("head.")}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, sd)
    n_missing = len(dst.state_dict()) - len(sd)
    assert f"{n_missing} missing" in str(err.value)
    assert f"(+{n_missing - 12} more)" in str(err.value)


# ----------------------------------------------------------------------------- authors' layouts
@pytest.mark.parametrize("variant", ["dataparallel", "single", "classifier", "dropout0"])
def test_authors_file_variants(tmp_path, variant):
    src = randomized(tiny())
    sd = authors_state(src, module=variant == "dataparallel")
    if variant == "classifier":  # the legacy TSN classifier name
        sd = {k.replace("new_fc.", "base_model.classifier."): v for k, v in sd.items()}
    if variant == "dropout0":  # --dropout 0 keeps the classifier as base_model.fc
        sd = {k.replace("new_fc.", "base_model.fc."): v for k, v in sd.items()}
    dst = tiny(seed=5)
    report = load_checkpoint(dst, released(sd, tmp_path / "r.pth"))
    assert report.ok and report.converted_from == "authors-tcp"
    assert same_state(src, dst)


def _old_names(style: str) -> Dict[str, str]:
    """Current authors' head sub-keys -> old iSQRT ones for both styles (hand-written)."""
    att = {"TCP_att.TCA.g1.": "att_module.conv_1.", "TCP_att.TCA.g2.": "att_module.conv_2.",
           "TCP_att.TSA.conv_phi_1.": "att_module.sp_att.conv_theta.",
           "TCP_att.TSA.conv_phi_2.": "att_module.sp_att.conv_phi.",
           "TCP_att.TSA.conv_phi0.": "att_module.sp_att.conv_g.",
           "TCP_att.TSA.norm.": "att_module.sp_att.norm.", "TCP_att.conv_1d.": "att_module.conv_1d."}
    if style == "tea":
        att.update({"layer_reduce1.": "layer_reduce1.0.", "layer_reduce_bn1.": "layer_reduce1.1.",
                    "layer_reduce2.": "layer_reduce2.0.", "layer_reduce_bn2.": "layer_reduce2.1."})
    return att


def _to_old(key: str, style: str) -> str:
    head = "base_model.TCP."
    i = key.find(head)
    if i < 0:
        return key
    sub = key[i + len(head):]
    for new, old in _old_names(style).items():
        if sub.startswith(new):
            sub = old + sub[len(new):]
            break
    base = "base_model.layer4.iSQRT." if style == "resnet50" else "base_model.iSQRT."
    return key[:i] + base + sub


@pytest.mark.parametrize("fixture", ["tcp_tsn_r50_8f", "tcp_tea_r50_8f"])
@pytest.mark.parametrize("style", ["resnet50", "tea"])
def test_old_isqrt_mapping_on_published_key_sets(fixture, style):
    """Key-only check on the full published key sets (349 / 813 keys): old names map back
    exactly, and a second call gives the same answer (no state kept between calls)."""
    keys = [k[len("module."):] for k in json.loads((REF / f"{fixture}.json").read_text())["state_dict_shapes"]]
    old = [_to_old(k, style) for k in keys]
    assert sum("iSQRT" in k for k in old) == 29
    example = "base_model.layer4.iSQRT.att_module.sp_att.conv_theta.bias" if style == "resnet50" \
        else "base_model.iSQRT.att_module.sp_att.conv_theta.bias"
    assert example in old  # the documented example
    for _ in range(2):
        mapping, unmatched = map_old_keys(old, set(keys))
        assert unmatched == []
        assert [mapping[k] for k in old] == keys


def test_old_isqrt_file_loads_into_tiny_model(tmp_path):
    src = randomized(tiny())
    for style in ("resnet50", "tea"):
        sd = {_to_old(k, style): v for k, v in authors_state(src).items()}
        dst = tiny(seed=6)
        report = load_checkpoint(dst, released(sd, tmp_path / f"{style}.pth"))
        assert report.converted_from == "authors-tcp (old iSQRT keys)" and report.ok
        assert same_state(src, dst)
    bad = {_to_old(k, "tea"): v for k, v in authors_state(src).items()}
    bad["module.base_model.iSQRT.att_module.no_such.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"iSQRT\.att_module\.no_such\.weight"):
        load_checkpoint(tiny(), bad)


# ----------------------------------------------------------------------------- pretraining files
def _gcp_file(model: torch.nn.Module, layout: str, path: Path, seed: int = 2) -> Dict[str, torch.Tensor]:
    """An ImageNet GCP file as the authors' main.py expects it: ``module.<backbone
    key>``, the reduction layers at top level (ResNet-50) or as ``module.iSQRT.layer_reduceN.{0,1}``
    (TEA/R152), and the ImageNet classifier ``module.fc``."""
    g = torch.Generator().manual_seed(seed)
    sd: Dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            name = "module." + k[len("backbone."):]
        elif k.startswith("head.layer_reduce"):
            sub = k[len("head."):]
            if layout == "tea":
                part, rest = sub.split(".", 1)
                idx = part[-1]
                sub = f"iSQRT.layer_reduce{idx}.{'1' if '_bn' in part else '0'}.{rest}"
            name = "module." + sub
        else:
            continue  # attention module and fc do not exist in an ImageNet model
        sd[name] = torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone()
    d = model.head.layer_reduce2.weight.shape[0]
    sd["module.fc.weight"] = torch.randn(1000, d * (d + 1) // 2, generator=g)
    sd["module.fc.bias"] = torch.randn(1000, generator=g)
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": sd, "best_prec1": 78.0}, path)
    return sd


@pytest.mark.parametrize("layout,label", [("resnet50", "imagenet-gcp (ResNet-50 layout)"),
                                          ("tea", "imagenet-gcp (TEA/R152 layout)")])
def test_gcp_pretrained_layouts(tmp_path, layout, label):
    sd = _gcp_file(tiny(), layout, tmp_path / "gcp.pth.tar")
    dst = tiny(seed=7)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_pretrained(dst, tmp_path / "gcp.pth.tar")
    assert report.converted_from == label
    n_backbone = sum(k.startswith("backbone.") for k in before)
    assert len(report.loaded) == n_backbone + 12  # 2 convs + 2 BNs x 5 entries
    assert all(k.startswith("head.TCP_att.") or k.startswith("fc.") for k in report.missing)
    assert len(report.missing) == len(before) - n_backbone - 12
    assert sorted(k for k, _ in report.dropped) == ["module.fc.bias", "module.fc.weight"]
    assert report.unexpected == [] and report.shape_mismatch == []
    assert sorted(report.unused) == ["module.fc.bias", "module.fc.weight"]
    state = dst.state_dict()
    assert torch.equal(state["backbone.conv1.weight"], sd["module.conv1.weight"])
    bn1 = "module.iSQRT.layer_reduce1.1.running_var" if layout == "tea" else "module.layer_reduce_bn1.running_var"
    assert torch.equal(state["head.layer_reduce_bn1.running_var"], sd[bn1])
    for k in report.missing:  # left exactly at initialisation
        assert torch.equal(state[k], before[k]), k
    assert "missing (left at initialisation)" in str(report) and "head.TCP_att" in str(report)


def test_gcp_pretrained_with_different_tcp_dim(tmp_path):
    """TCP_dim != pretrained_dim: layer_reduce2 / layer_reduce_bn2 keep their init."""
    sd = _gcp_file(tiny(), "tea", tmp_path / "gcp.pth.tar")  # pretrained dim 32
    dst = tiny(seed=8, dim=16)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_pretrained(dst, tmp_path / "gcp.pth.tar")
    reduce2 = sorted(k for k, why in report.dropped if "TCP_dim 16 != pretrained dim 32" in why)
    assert reduce2 == sorted(k for k in sd if "layer_reduce2." in k)  # conv (.0.) and BN (.1.): 6
    assert len(reduce2) == 6
    assert report.shape_mismatch == [] and report.unexpected == []
    state = dst.state_dict()
    assert torch.equal(state["head.layer_reduce1.weight"], sd["module.iSQRT.layer_reduce1.0.weight"])
    for k in ("head.layer_reduce2.weight", "head.layer_reduce_bn2.running_mean"):
        assert k in report.missing and torch.equal(state[k], before[k])


def _torchvision_state(model: torch.nn.Module, num_classes: int = 1000, seed: int = 3) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k[len("backbone."):]: torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone()
          for k, v in model.state_dict().items() if k.startswith("backbone.")}
    c = model.fc.weight.shape[1]
    sd["fc.weight"] = torch.randn(num_classes, c, generator=g)
    sd["fc.bias"] = torch.randn(num_classes, generator=g)
    return sd


def test_torchvision_state_dict_into_resnet_model(tmp_path):
    sd = _torchvision_state(tiny("tsn_tiny"))
    torch.save(sd, tmp_path / "resnet.pth")

    dst = tiny("tsn_tiny", num_classes=10)
    with pytest.raises(CheckpointError, match="fc.weight"):  # strict: fc cannot come from ImageNet
        load_checkpoint(dst, tmp_path / "resnet.pth")
    report = load_checkpoint(dst, tmp_path / "resnet.pth", strict=False)
    assert report.converted_from == "torchvision-imagenet"
    assert sorted(k for k, _ in report.dropped) == ["fc.bias", "fc.weight"]
    assert "ImageNet classifier" in str(report) and sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.backbone.conv1.weight, sd["conv1.weight"])

    report = load_pretrained(tiny("tcp_tiny"), tmp_path / "resnet.pth")  # backbone of a TCP model
    assert sorted(report.unused) == ["fc.bias", "fc.weight"] and not report.unexpected
    assert all(k.startswith(("head.", "fc.")) for k in report.missing)

    # Same classes and an old file without BN step counters: strict load still succeeds.
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    dst = tiny("tsn_tiny", num_classes=1000)
    report = load_checkpoint(dst, old)
    assert report.ok and report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)
    assert torch.equal(dst.fc.weight, sd["fc.weight"])


def test_load_pretrained_from_another_datasets_tcp_model(tmp_path):
    """--load_TCP_from semantics: everything but the classifier, which stays fresh."""
    src = randomized(tiny(num_classes=400))
    path = released(authors_state(src), tmp_path / "k400.pth")
    dst = tiny(num_classes=51, seed=9)
    fc_before = dst.fc.weight.clone()
    report = load_pretrained(dst, path)
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert sorted(k for k, _ in report.dropped) == ["module.new_fc.bias", "module.new_fc.weight"]
    assert torch.equal(dst.fc.weight, fc_before)
    assert torch.equal(dst.head.TCP_att.TSA.conv_phi0.weight, src.head.TCP_att.TSA.conv_phi0.weight)


def test_build_then_load_pretrained_weights(tmp_path):
    """Pretrained weights are loaded after building (build_model has no ``pretrained``)."""
    src = build_model("tcp_tiny", num_classes=5, num_segments=4)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(123)
    model = build_model("tcp_tiny", num_classes=9, num_segments=4)
    load_pretrained(model, str(path))
    got = model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (9, model.head.out_dim)  # classifier is the new task's
    assert "pretrained" not in model.model_kwargs
    with pytest.raises(TypeError, match="pretrained"):
        build_model("tcp_tiny", pretrained=str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile imports torch.jit
def test_loaders_see_through_training_wrappers(tmp_path):
    src = randomized(tiny("tsn_tiny"))
    for wrap in (torch.nn.DataParallel, torch.compile):
        dst = tiny("tsn_tiny", seed=3)
        report = load_checkpoint(wrap(dst), src.state_dict())
        assert report.ok and same_state(dst, src)
        dst = tiny("tsn_tiny", seed=3)
        load_pretrained(wrap(dst), src.state_dict())
        assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)


# ----------------------------------------------------------------------------- our files
def test_save_model_round_trip(tmp_path):
    model = randomized(tiny()).eval()
    path = save_model(model, tmp_path / "sub" / "model.pt", class_names=list("abcde"))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind
    rebuilt = build_model_from_checkpoint(path)
    assert rebuilt.model_name == "tcp_tiny" and not rebuilt.training
    assert rebuilt.class_names == list("abcde") and rebuilt.input_config == model.input_config
    x = clip()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(CheckpointError, match="class_names has 2 entries"):
        save_model(model, tmp_path / "x.pt", class_names=["a", "b"])


def test_training_checkpoint_is_a_model_file(tmp_path):
    model = randomized(tiny()).eval()
    save_model(model, tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt.update(optimizer={"state": {}, "param_groups": []}, epoch=4, best_metric=0.5)
    torch.save(ckpt, tmp_path / "train.pt")
    rebuilt = build_model_from_checkpoint(tmp_path / "train.pt")
    assert same_state(model, rebuilt)
    with pytest.raises(CheckpointError, match="not a tcpnet model file"):
        build_model_from_checkpoint(released(authors_state(model), tmp_path / "authors.pth"))


def test_save_is_atomic(tmp_path, monkeypatch):
    model = tiny()
    path = save_model(model, tmp_path / "m.pt")
    good = path.read_bytes()

    def boom(obj, f, *a, **k):  # torch.save writes into a Python file object
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_safetensors_export_round_trip(tmp_path):
    from safetensors import safe_open

    model = randomized(tiny()).eval()
    path = export_safetensors(model, tmp_path / "m.safetensors", class_names=list("vwxyz"))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["model_name"] == "tcp_tiny"
    assert json.loads(meta["model_kwargs"])["num_classes"] == 5
    assert json.loads(meta["input_config"])["crop_size"] == model.input_config.crop_size
    rebuilt = build_model_from_checkpoint(path)
    assert rebuilt.class_names == list("vwxyz")
    x = clip(1)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    other = tiny(seed=11)
    assert load_checkpoint(other, path).ok and same_state(model, other)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_convert_checkpoint_from_authors_file(tmp_path, suffix):
    src = randomized(tiny(num_classes=7))
    sd = {_to_old(k, "resnet50"): v for k, v in authors_state(src).items()}
    path = released(sd, tmp_path / "authors.pth.tar")
    report = convert_checkpoint(path, tmp_path / f"ours{suffix}", "tcp_tiny", num_segments=T)
    assert report.ok and report.converted_from == "authors-tcp (old iSQRT keys)"
    rebuilt = build_model_from_checkpoint(tmp_path / f"ours{suffix}")
    assert rebuilt.num_classes == 7  # inferred from new_fc
    src.eval()
    x = clip(2)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), src(x))
    # A 16-frame model has a longer temporal kernel: the strict load names the clash.
    with pytest.raises(CheckpointError, match=r"head\.TCP_att\.conv_1d\.weight file \(32, 32, 5, 1, 1\)"):
        convert_checkpoint(path, tmp_path / "bad.pt", "tcp_tiny", num_segments=16)
    assert not (tmp_path / "bad.pt").exists()


def test_tsm_repo_shift_wrapper_names(tmp_path):
    """TSM-style files name a shifted conv ``layerL.b.conv1.net.weight``; the shift has no
    parameters, so it is the same tensor as our ``conv1.weight``."""
    src = randomized(tiny("tsn_tiny", temporal_shift="blockres"))
    sd = {re.sub(r"(layer\d\.\d+\.conv1)\.", r"\1.net.", k): v for k, v in authors_state(src).items()}
    assert any(".net." in k for k in sd)
    dst = tiny("tsn_tiny", temporal_shift="blockres", seed=12)
    assert load_checkpoint(dst, released(sd, tmp_path / "tsm.pth")).ok and same_state(src, dst)


def test_text_file_is_refused_with_a_clear_error(tmp_path):
    """torch's legacy reader raises KeyError on arbitrary bytes; the user must see which file
    is not a checkpoint instead of 'KeyError: 101'."""
    from tcpnet.checkpoints import CheckpointError, load_checkpoint
    from tcpnet.models import build_model

    path = tmp_path / "notes.pth"
    path.write_text("evaluation notes, not weights\n")
    with pytest.raises(CheckpointError, match="notes.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(build_model("tsn_tiny", num_classes=4, num_segments=2), path)


# ----------------------------------------------------------------------------- messages
class _SystemPayload:
    """Unpickling this calls ``os.system`` (torch 2.13 reports "unsupported GLOBAL posix.system
    whose module posix is blocked", lower case, which a case-sensitive check missed)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_os_system_payload_is_refused_as_unsafe(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny().state_dict(), "x": _SystemPayload(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        build_model_from_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refused as unsafe: the file needs arbitrary Python unpickling (")
    assert "system" in msg and "damaged" not in msg
    assert not marker.exists()


def test_truncated_file_keeps_our_sentence_and_torchs_first_one(tmp_path):
    bad = tmp_path / "cut.pt"
    save_model(tiny(), bad)
    bad.write_bytes(bad.read_bytes()[:-300])  # the zip's central directory is gone
    with pytest.raises(CheckpointError) as err:
        build_model_from_checkpoint(bad)
    assert str(err.value) == (f"{bad}: not a readable PyTorch checkpoint (truncated, corrupt or not a checkpoint): "
                              "RuntimeError: PytorchStreamReader failed reading zip archive: "
                              "failed finding central directory")


def test_class_count_mismatch_says_what_to_do_in_tcpnet_terms(tmp_path):
    """A 5-class file converted to an 8-class model: the advice names the command-line option and
    the config key, not ``strict=False`` (which no command offers)."""
    path = released(authors_state(randomized(tiny())), tmp_path / "five.pth")
    with pytest.raises(CheckpointError) as err:
        convert_checkpoint(path, tmp_path / "eight.pt", "tcp_tiny", num_classes=8, num_segments=T)
    msg = str(err.value)
    assert "strict=False" not in msg and not (tmp_path / "eight.pt").exists()
    assert "The file's classifier has 5 classes and the model 8." in msg
    assert "tcpnet convert --num-classes 5" in msg and f"model.pretrained={path}" in msg


# ----------------------------------------------------------------------------- writing
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    import os

    old = os.umask(umask)
    try:
        paths = [save_model(tiny(), tmp_path / "m.pt"), export_safetensors(tiny(), tmp_path / "m.safetensors")]
    finally:
        os.umask(old)
    for p in paths:
        assert p.stat().st_mode & 0o777 == mode, p


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # torch's path writer
    OSError(28, "No space left on device"),                                                   # a Python file's write
])
def test_full_disk_is_named_and_leaves_no_temporary_file(tmp_path, monkeypatch, failure):
    model = tiny()
    path = save_model(model, tmp_path / "last.pt")
    good = path.read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as err:
        save_model(model, path)
    assert str(err.value) == f"no space left on device ({path}); nothing was written"
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------- converting our files
def test_convert_of_our_file_keeps_what_it_records(tmp_path):
    """convert .pt -> .safetensors -> .pt: model, T, trained input config (crop 48, not the
    factory's), class names and multi_label all survive; the weights are identical."""
    model = randomized(tiny()).eval()
    model.input_config = type(model.input_config)(crop_size=48, scale_size=56, num_segments=T)
    model.class_names, model.multi_label = list("abcde"), True
    src = save_model(model, tmp_path / "a.pt")
    convert_checkpoint(src, tmp_path / "b.safetensors")
    convert_checkpoint(tmp_path / "b.safetensors", tmp_path / "c.pt", model_name="tcp_tiny", num_segments=T)
    for path in (src, tmp_path / "b.safetensors", tmp_path / "c.pt"):
        rebuilt = build_model_from_checkpoint(path)
        assert rebuilt.class_names == list("abcde") and rebuilt.multi_label is True
        assert rebuilt.input_config == model.input_config and rebuilt.input_config.crop_size == 48
        assert same_state(model, rebuilt)
    with pytest.raises(CheckpointError, match=r"--segments 16: .* tcpnet model file of tcp_tiny with segments = 8"):
        convert_checkpoint(src, tmp_path / "d.pt", num_segments=16)
    with pytest.raises(CheckpointError, match="not a tcpnet model file, so the model must be named"):
        convert_checkpoint(released(authors_state(model), tmp_path / "authors.pth"), tmp_path / "e.pt")
    assert not (tmp_path / "d.pt").exists() and not (tmp_path / "e.pt").exists()


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["convert", "export"])
def test_output_equal_to_input_is_refused_before_writing(tmp_path, monkeypatch, capsys, spelling, command):
    import os

    from tcpnet.cli import main

    monkeypatch.chdir(tmp_path)
    save_model(tiny(), tmp_path / "m.pt")
    before = ((tmp_path / "m.pt").read_bytes(), (tmp_path / "m.pt").stat().st_mtime_ns)
    out = {"same": "m.pt", "dot": "./m.pt", "symlink": "link.pt", "hardlink": "hard.pt"}[spelling]
    if spelling == "symlink":
        os.symlink("m.pt", "link.pt")
    if spelling == "hardlink":
        os.link("m.pt", "hard.pt")
    listing = sorted(p.name for p in tmp_path.iterdir())
    if command == "convert":
        rc = main(["convert", "m.pt", out])
    else:
        rc = main(["export", "--checkpoint", "m.pt", "--format", "torchscript", "--output", out])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tcpnet: error:")]
    assert rc == 1 and err == [f"tcpnet: error: {out}: the output is the input file m.pt; choose another "
                               "output path (nothing was written)"]
    assert ((tmp_path / "m.pt").read_bytes(), (tmp_path / "m.pt").stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


@pytest.mark.parametrize("layout,model_name,fixture", [
    ("videomae", "tcp_videomae_vit_small", "videomae/tiny_plain.safetensors"),
    ("x3d", "tcp_x3d_s", "x3d/tiny.safetensors"),
    ("swin3d", "tcp_swin3d_tiny", "swin3d/tiny.safetensors"),
    ("tcpnet", "tcp_tiny", None),
])
def test_two_file_keys_for_one_model_key_are_refused_naming_both(layout, model_name, fixture):
    """Every key map (our files, VideoMAE, X3D, Video Swin) places keys through one step that
    refuses, naming both, a file whose two keys land on one model key (``x`` and ``module.x``)
    instead of letting the later one overwrite the earlier silently."""
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = build_model(model_name, num_classes=3)
    sd = load_file(str(REF / fixture)) if fixture else dict(build_model(model_name, num_classes=3).state_dict())
    key = next(k for k in sd if k.endswith("weight"))
    sd["module." + key] = sd[key]
    with pytest.raises(CheckpointError, match=rf"file keys '{re.escape(key)}' and 'module\.{re.escape(key)}' both map"):
        load_pretrained(model, sd)
