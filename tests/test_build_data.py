"""Data assembly (`tcpnet.data.build`, `tcpnet.data.formats`): the list-format registry and its
config check, a new format registered with one decorator and trained on, the crop/scale
override applied in one place, errors that name the list file and config key, one list of
video extensions, and the runtime data package independent of the offline tools."""
from __future__ import annotations

import ast
import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from videos import make_frames, write_video

from tcpnet.config import ConfigError, DataConfig, load_config
from tcpnet.data import RecordList, VideoRecord, formats
from tcpnet.data.build import (IndexedSubset, build_datasets, build_test_dataset, check_data_config,
                               infer_num_classes, load_class_names, read_lists, resolve_input_config)
from tcpnet.data.formats import ListSource, list_formats, register_list_format
from tcpnet.input_config import InputConfig

BUILT_IN = ["auto", "tsn", "video", "folders", "ssv1", "charades", "hmdb51", "ucf101"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four 8-frame 32x40 mp4 files and a `path label` list over them."""
    root = tmp_path_factory.mktemp("clips")
    lines = []
    for k in range(4):
        write_video(root / f"v{k}.mp4", make_frames(8, 32, 40, seed=k), gop=4)
        lines.append(f"v{k}.mp4 {k % 2}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the format registry, so a test's registrations do not leak."""
    monkeypatch.setattr(formats, "_FORMATS", dict(formats._FORMATS))
    return formats._FORMATS


def test_built_in_formats_are_registered():
    assert list_formats()[:len(BUILT_IN)] == BUILT_IN  # first, in this order; others may follow


def _format_module(name: str) -> str:
    return (f"from tcpnet.data.formats import ListSource, register_list_format\n"
            f"from tcpnet.data.records import RecordList, VideoRecord\n\n"
            f"@register_list_format({name!r})\n"
            f"def read(source: ListSource) -> RecordList:\n"
            f"    return RecordList([VideoRecord('v0.mp4', None, 0)])\n")


def test_a_format_in_a_new_module_under_data_registers_with_no_other_edit(registry, tmp_path, monkeypatch):
    """A new file anywhere under tcpnet/data/ (here: a module and a module of a sub-package, in a
    folder added to the package's path) is found when the registry is asked, and read_lists reads it."""
    import sys

    import tcpnet.data

    (tmp_path / "my_format.py").write_text(_format_module("my_format"))
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "deep_format.py").write_text(_format_module("deep_format"))
    monkeypatch.setattr(tcpnet.data, "__path__", [*tcpnet.data.__path__, str(tmp_path)])
    new = ("tcpnet.data.my_format", "tcpnet.data.my_pkg", "tcpnet.data.my_pkg.deep_format")
    try:
        check_data_config(DataConfig(list_format="my_format"))
        assert {"my_format", "deep_format"} <= set(list_formats())
        (tmp_path / "list.txt").write_text("anything\n")
        records = read_lists(DataConfig(list_format="deep_format", train_list=str(tmp_path / "list.txt"),
                                        check_files=False))
        assert [r.path for r in records["train"]] == ["v0.mp4"]
    finally:
        for name in new:
            sys.modules.pop(name, None)


def test_bad_list_format_names_the_key_and_the_registry():
    cfg = load_config(None, ["data.list_format=kinetics"])  # the config stays a leaf: no data import
    with pytest.raises(ConfigError) as e:
        check_data_config(cfg.data)
    assert "data.list_format" in str(e.value) and "'kinetics'" in str(e.value)
    for name in BUILT_IN:
        assert name in str(e.value)


def test_bad_list_format_stops_train_before_any_work(tmp_path, capsys):
    from tcpnet.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        rc = main(["train", "demo/tcp", "data.list_format=kinetics", f"output_dir={tmp_path / 'run'}",
                   "device=cpu"])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tcpnet: error:")]
    assert len(lines) == 1 and "data.list_format" in lines[0] and "hmdb51" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fmt", ["ucf101", "ssv1"])
def test_format_that_needs_class_names_says_so(fmt):
    with pytest.raises(ConfigError, match=f"data.list_format={fmt} needs data.class_names"):
        check_data_config(DataConfig(list_format=fmt, train_list="x"))


def test_split_must_be_positive():
    with pytest.raises(ConfigError, match="data.split"):
        check_data_config(DataConfig(list_format="hmdb51", split=0))


def test_registering_a_name_twice_is_an_error(registry):
    with pytest.raises(ValueError, match="'tsn' is already registered"):
        register_list_format("tsn")(lambda source: RecordList())


def test_new_format_is_one_decorator_and_trains(registry, clips, tmp_path):
    """A JSON list format, registered with one decorator, read by read_lists and trained on by
    `train` with nothing else changed."""
    @register_list_format("jsonl")
    def read_jsonl(source: ListSource) -> RecordList:
        rows = [json.loads(line) for line in Path(source.path).read_text().splitlines()]
        return RecordList((VideoRecord(r["video"], None, r["label"]) for r in rows), class_names=["even", "odd"])

    for subset in ("train", "val"):
        rows = [{"video": f"v{k}.mp4", "label": k % 2} for k in range(4)]
        (tmp_path / f"{subset}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.root={clips}", "data.list_format=jsonl", f"data.train_list={tmp_path}/train.jsonl",
                 f"data.val_list={tmp_path}/val.jsonl"]
    cfg = load_config(None, overrides + [
        "model.name=tcp_tiny", "model.num_segments=4", "model.kwargs.dim=16", "model.kwargs.mid_channels=32",
        "data.num_workers=0", "data.crop_size=32", "data.scale_size=32", "train.epochs=1", "train.batch_size=2",
        "train.log_every=1", f"output_dir={tmp_path / 'run'}", "device=cpu"])
    records = read_lists(cfg.data)
    assert [r.path for r in records["train"]] == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]
    assert records["val"].class_names == ["even", "odd"]

    from tcpnet.engine.train import train

    result = train(cfg)
    assert result["num_classes"] == 2 and result["class_names"] == ["even", "odd"]
    assert result["final"]["train_clips"] == 4 and result["final"]["val_num_videos"] == 4


def test_crop_scale_override_is_applied_once(clips):
    model_ic = InputConfig(crop_size=224, scale_size=256, num_segments=4)
    data = DataConfig(root=str(clips), train_list=str(clips / "list.txt"), val_list=str(clips / "list.txt"),
                      crop_size=24, scale_size=28)
    ic = resolve_input_config(data, model_ic)
    assert (ic.crop_size, ic.scale_size) == (24, 28) and ic.mean == model_ic.mean
    assert resolve_input_config(data, ic) == ic  # a resolved config passes through unchanged
    assert resolve_input_config(DataConfig(), model_ic) is model_ic
    assert resolve_input_config(DataConfig(crop_size=24), model_ic).scale_size == 256

    records = read_lists(data)
    # training: the trainer resolves once and keeps the result on the model; an unresolved config is refused
    with pytest.raises(ValueError, match=r"input_config.crop_size=224 but data.crop_size=24: pass resolve_input_config"):
        build_datasets(data, records, model_ic, num_classes=2, seed=0)
    sets = build_datasets(data, records, ic, num_classes=2, seed=0)
    assert sets["train"][0][0].shape == (3, 4, 24, 24) and sets["val"][0][0].shape == (3, 4, 24, 24)
    assert sets["train"].input_config == ic
    # testing: the checkpoint's config, resolved here
    test = build_test_dataset(data, records["val"], model_ic, views="1x2", num_classes=2)
    assert test[0][0].shape == (2, 3, 4, 24, 24) and test.input_config == ic
    # without an override the model's own sizes are used
    plain = dataclasses.replace(data, crop_size=None, scale_size=None)
    small = InputConfig(crop_size=16, scale_size=20, num_segments=4)
    assert build_datasets(plain, records, small, num_classes=2, seed=0)["val"][0][0].shape[-1] == 16


def test_t_comes_from_the_input_config_alone(clips):
    """The clip length is the model's input config's num_segments: no second T to pass or to diverge."""
    data = DataConfig(root=str(clips), train_list=str(clips / "list.txt"), val_list=str(clips / "list.txt"))
    records = read_lists(data)
    for t in (3, 5):
        ic = InputConfig(crop_size=16, scale_size=16, num_segments=t)
        sets = build_datasets(data, records, ic, num_classes=2, seed=0)
        assert sets["train"][0][0].shape == (3, t, 16, 16) and sets["val"][0][0].shape == (3, t, 16, 16)
        assert build_test_dataset(data, records["val"], ic, views="1x1", num_classes=2)[0][0].shape == (3, t, 16, 16)


def test_train_resolves_the_input_config_once(clips, tmp_path, monkeypatch):
    """One training run applies the data.crop_size/scale_size override once (the trainer's call),
    wherever resolve_input_config is imported."""
    import sys

    from tcpnet.data import build

    calls = []
    original = build.resolve_input_config

    def counting(data_cfg, input_config):
        calls.append(input_config)
        return original(data_cfg, input_config)

    for module in [m for name, m in sys.modules.items() if name.startswith("tcpnet")]:
        if getattr(module, "resolve_input_config", None) is original:
            monkeypatch.setattr(module, "resolve_input_config", counting)
    cfg = load_config(None, [f"data.root={clips}", "data.list_format=video", f"data.train_list={clips}/list.txt",
                             f"data.val_list={clips}/list.txt", "model.name=tcp_tiny", "model.num_segments=4",
                             "model.kwargs.dim=16", "model.kwargs.mid_channels=32", "data.num_workers=0",
                             "data.crop_size=32", "data.scale_size=32", "train.epochs=1", "train.batch_size=2",
                             f"output_dir={tmp_path / 'run'}", "device=cpu"])
    from tcpnet.engine.train import train

    train(cfg)
    assert len(calls) == 1, calls


def test_indexed_subset_returns_dataset_indices(clips):
    data = DataConfig(root=str(clips), val_list=str(clips / "list.txt"), crop_size=16, scale_size=16)
    ic = resolve_input_config(data, InputConfig(num_segments=2))
    val = build_datasets(data, read_lists(data), ic, num_classes=2, seed=0)["val"]
    sub = IndexedSubset(val, [3, 1])
    assert len(sub) == 2 and sub[0][2] == 3 and sub[1][1] == 1
    assert torch.equal(sub[0][0], val[3][0])


def test_class_names_are_read_the_way_the_format_reads_them(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (tmp_path / "labels.csv").write_text("Pushing something\nHolding something\n")
    (tmp_path / "classes.txt").write_text("b\na\n")
    assert load_class_names(DataConfig(list_format="ucf101", class_names=str(tmp_path / "classInd.txt"))) == \
        ["ApplyEyeMakeup", "Archery"]
    assert load_class_names(DataConfig(list_format="ssv1", class_names=str(tmp_path / "labels.csv"))) == \
        ["Holding something", "Pushing something"]
    assert load_class_names(DataConfig(class_names=str(tmp_path / "classes.txt"))) == ["b", "a"]
    assert load_class_names(DataConfig()) is None


def test_auto_detects_tsn_video_and_charades(tmp_path):
    (tmp_path / "frames.txt").write_text("a 10 0\nb 12 1\n")
    (tmp_path / "videos.txt").write_text("a.mp4 walk\nb.mp4 run\n")
    (tmp_path / "list.csv").write_text('id,actions\nX1,"c001 0 1"\n')
    (tmp_path / "two.txt").write_text("a 0\nb 1\n")
    base = DataConfig(check_files=False, multi_label=True)
    recs = read_lists(dataclasses.replace(base, train_list=str(tmp_path / "frames.txt"),
                                          val_list=str(tmp_path / "videos.txt"),
                                          test_list=str(tmp_path / "list.csv")), num_classes=3)
    assert recs["train"][0] == VideoRecord("a", 10, 0)
    assert recs["val"][1] == VideoRecord("b.mp4", None, 0) and recs["val"].class_names == ["run", "walk"]
    assert recs["test"][0] == VideoRecord("X1.mp4", None, [1])
    # data.format=frames: every plain list is a TSN list (frame folders carry no extension)
    with pytest.raises(ValueError, match="expected 'path num_frames label'"):
        read_lists(dataclasses.replace(base, format="frames", train_list=str(tmp_path / "two.txt")))
    with pytest.raises(ValueError, match="folder formats"):
        read_lists(dataclasses.replace(base, train_list=str(tmp_path)))


def test_list_errors_name_the_file_and_the_key(tmp_path, clips):
    with pytest.raises(FileNotFoundError, match=r"nope.txt \(data.val_list\): not found"):
        read_lists(DataConfig(train_list=str(clips / "list.txt"), val_list=str(tmp_path / "nope.txt"),
                              root=str(clips)))
    (tmp_path / "missing.txt").write_text("gone1.mp4 0\nv0.mp4 1\ngone2.mp4 0\n")
    with pytest.raises(FileNotFoundError) as e:
        read_lists(DataConfig(root=str(clips), train_list=str(tmp_path / "missing.txt")))
    msg = str(e.value)
    assert "missing.txt (data.train_list)" in msg and "2 of 3 videos missing" in msg
    assert "gone1.mp4" in msg and "gone2.mp4" in msg
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"empty.txt \(data.train_list\): no videos"):
        read_lists(DataConfig(train_list=str(tmp_path / "empty.txt")))
    (tmp_path / "c.csv").write_text('id,actions\nX1,"c001 0 1"\n')
    with pytest.raises(ValueError, match=r"c.csv \(data.train_list\): multi-label records; set data.multi_label"):
        read_lists(DataConfig(train_list=str(tmp_path / "c.csv"), check_files=False))


def test_infer_num_classes():
    recs = {"train": [VideoRecord("a", 1, 2), VideoRecord("b", 1, [0, 4])], "val": [VideoRecord("c", 1, 1)]}
    assert infer_num_classes(recs) == 5
    with pytest.raises(ValueError, match="model.num_classes"):
        infer_num_classes({"train": []})


def test_one_list_of_video_extensions(tmp_path):
    """`tcpnet prepare build-list` and the folder reader list the same files."""
    from tcpnet.data.list_parsers import VIDEO_EXTENSIONS, read_class_folders
    from tcpnet.tools import prepare

    assert prepare.VIDEO_EXTENSIONS is VIDEO_EXTENSIONS
    for name in ("a.mp4", "b.mpg", "c.flv", "d.MKV", "notes.txt"):
        (tmp_path / "cls" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "cls" / name).write_bytes(b"x")
    listed = [r.path for r in read_class_folders(tmp_path)]
    assert listed == ["cls/a.mp4", "cls/b.mpg", "cls/c.flv", "cls/d.MKV"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in prepare.find_videos(tmp_path)) == listed


def _imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_data_never_imports_tools_and_readers_do_not_import_clip():
    import tcpnet.data

    data_dir = Path(tcpnet.data.__file__).parent
    for path in data_dir.rglob("*.py"):
        assert not any(m.startswith("tcpnet.tools") for m in _imports(path)), path.name
    for name in ("readers/pyav.py", "readers/torchcodec.py", "readers/frames.py", "errors.py", "records.py"):
        assert "tcpnet.data.clip" not in _imports(data_dir / name), name
    assert not {m for m in _imports(data_dir / "records.py") if m.startswith("tcpnet")}


def test_a_one_based_list_read_as_a_video_list_is_refused(tmp_path, caplog):
    """UCF101's trainlist01.txt with list_format auto and no classInd.txt: its 1-based labels would
    be taken as 0-based (an empty class 0, every class off by one). Refused, naming the file and
    line, while the class count is inferred; a warning once model.num_classes sets it."""
    lines = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "ApplyLipstick/v_ApplyLipstick_g01_c01.avi 2",
             "Archery/v_Archery_g01_c01.avi 3", "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1"]
    (tmp_path / "trainlist01.txt").write_text("\n".join(lines) + "\n")
    data = DataConfig(train_list=str(tmp_path / "trainlist01.txt"), check_files=False)
    with pytest.raises(ValueError, match=r"trainlist01.txt:3 \(data.train_list\): the labels run 1..3 with no 0.*"
                                         r"data.list_format=ucf101 with data.class_names=classInd.txt"):
        read_lists(data)
    with caplog.at_level(logging.WARNING, logger="tcpnet.data.build"):
        records = read_lists(data, num_classes=4)
    assert [r.label for r in records["train"]] == [1, 2, 3, 1]
    assert any("trainlist01.txt:3 (data.train_list): the labels run 1..3 with no 0" in r.getMessage()
               for r in caplog.records)
    (tmp_path / "zero.txt").write_text("a.avi 0\nb.avi 1\nc.avi 2\n")  # 0-based: fine
    assert len(read_lists(DataConfig(train_list=str(tmp_path / "zero.txt"), check_files=False))["train"]) == 3


def test_a_val_label_the_train_list_lacks_is_refused(tmp_path, caplog):
    """A typo label (8 in an 8-class val list) would silently make a 9-class model: refused with
    the file, line and key; with the class count given, a warning."""
    (tmp_path / "train.txt").write_text("".join(f"t{k}.mp4 10 {k % 8}\n" for k in range(16)))
    (tmp_path / "val.txt").write_text("v0.mp4 10 3\nv1.mp4 10 8\nv2.mp4 10 1\n")
    data = DataConfig(train_list=str(tmp_path / "train.txt"), val_list=str(tmp_path / "val.txt"), check_files=False)
    with pytest.raises(ValueError, match=r"val.txt:2 \(data.val_list\): label 8 does not occur in the train list "
                                         r".*train.txt .*fix the label"):
        read_lists(data)
    with caplog.at_level(logging.WARNING, logger="tcpnet.data.build"):
        read_lists(data, num_classes=9)
    assert any("val.txt:2 (data.val_list): label 8 does not occur" in r.getMessage() for r in caplog.records)


def test_input_config_has_no_unused_extra_and_old_checkpoints_still_load(tmp_path):
    """InputConfig.extra was never read: gone. A checkpoint written with it still loads."""
    from tcpnet import build_model
    from tcpnet.checkpoints import build_model_from_checkpoint, save_model

    assert "extra" not in InputConfig().to_dict()
    model = build_model("tcp_tiny", num_classes=3, num_segments=4, dim=8, mid_channels=8)
    model.input_config = InputConfig(crop_size=48, scale_size=56, num_segments=4)
    path = save_model(model, tmp_path / "m.pt")
    old = torch.load(path, map_location="cpu", weights_only=True)
    old["input_config"]["extra"] = {}  # as every checkpoint written before stored it
    torch.save(old, tmp_path / "old.pt")
    assert InputConfig.from_dict(old["input_config"]) == model.input_config
    assert build_model_from_checkpoint(tmp_path / "old.pt").input_config == model.input_config
