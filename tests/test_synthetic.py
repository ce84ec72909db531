"""The synthetic order-dependent dataset: pairs are exact time reversals, files are consistent
and generation is deterministic."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from tcpnet.data.list_parsers import read_frame_list
from tcpnet.data.clip import load_clip, probe
from tcpnet.tools.synthetic import (
    MAX_CLASSES,
    PAIR_KINDS,
    SyntheticParams,
    default_class_names,
    make_synthetic_dataset,
    render,
    render_clean,
    sample_params,
    write_clip,
)
from tcpnet.data.writer import write_video

SMALL = dict(num_classes=8, train_per_class=2, val_per_class=1, num_frames=16, size=64)
ALL_PAIRS = range(len(PAIR_KINDS))


def _draw(seed: int, class_index: int, **kw) -> SyntheticParams:
    return sample_params(np.random.default_rng(seed), class_index, **kw)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


# ------------------------------------------------------------------------ generator properties
@pytest.mark.parametrize("pair", ALL_PAIRS)
def test_pair_classes_draw_identical_parameters(pair):
    # Same RNG state -> same parameters for class 2k and 2k+1; only the reverse flag differs.
    # So the two classes have the SAME parameter distribution, by construction.
    for seed in range(100):
        fwd, rev = _draw(seed, 2 * pair), _draw(seed, 2 * pair + 1)
        assert fwd.kind == rev.kind == PAIR_KINDS[pair][0]
        assert (fwd.reverse, rev.reverse) == (False, True)
        assert dataclasses.replace(rev, class_index=2 * pair, reverse=False) == fwd


def test_forward_direction_of_each_kind():
    # The forward class of each pair moves the way its name says (screen coords, y down).
    for seed in range(100):
        p = _draw(seed, 0)  # move_right: within 30 deg of +x
        dx, dy = np.subtract(p.center_end, p.center_start)
        assert dx > 0 and abs(dy) <= np.tan(np.radians(30)) * dx + 1e-12 and np.hypot(dx, dy) >= 0.45 - 1e-12
        p = _draw(seed, 2)  # grow
        assert p.radius_end > 3 * p.radius_start
        p = _draw(seed, 4)  # warm -> cool: red channel falls, blue rises
        assert p.color_start[0] > p.color_start[2] and p.color_end[2] > p.color_end[0]
        p = _draw(seed, 6)  # rotate clockwise on screen (angle increases with y down) by 150-270 deg
        assert 150 <= p.angle_end - p.angle_start <= 270 and p.shape == "bar"
        p = _draw(seed, 8)  # orbit clockwise by 180-300 deg
        assert 180 <= p.arc_end - p.arc_start <= 300 and p.trajectory == "arc"
        p = _draw(seed, 10)  # move_down
        dx, dy = np.subtract(p.center_end, p.center_start)
        assert dy > 0 and abs(dx) <= np.tan(np.radians(30)) * dy + 1e-12


@pytest.mark.parametrize("pair", ALL_PAIRS)
def test_reversed_class_is_exact_time_reversal(pair):
    for seed in range(3):
        fwd, rev = _draw(seed, 2 * pair, num_frames=16, size=48), _draw(seed, 2 * pair + 1, num_frames=16, size=48)
        a, b = render(fwd, noise=False), render(rev, noise=False)
        np.testing.assert_array_equal(b, a[::-1])  # exact: the reversed class IS the reversed clip
        # ... so every order-less statistic is identical: the time-averaged (GAP) frame, exactly
        # (integer sums), and the covariance over all space-time positions (fp64 sums in another
        # order: equal to ~1e-12 relative).
        np.testing.assert_array_equal(a.astype(np.int64).sum(0), b.astype(np.int64).sum(0))
        xa = a.reshape(-1, 3).astype(np.float64)
        xb = b.reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(np.cov(xa.T, bias=True), np.cov(xb.T, bias=True), rtol=1e-10)
        # ... while the clips themselves differ (the order carries the class).
        assert np.abs(a.astype(int) - b.astype(int)).max() > 100


def test_noise_is_drawn_after_reversal():
    fwd, rev = _draw(7, 0, num_frames=16, size=48), _draw(7, 1, num_frames=16, size=48)
    clean_rev = render(rev, noise=False).astype(np.float64)
    noisy_rev = render(rev).astype(np.float64)
    resid = (noisy_rev - clean_rev)[(clean_rev > 30) & (clean_rev < 225)]  # away from clipping
    # Gaussian of std noise_std, rounded: std within 5 % (n ~ 1e5 samples), mean ~ 0.
    assert abs(resid.std() / fwd.noise_std - 1) < 0.05 and abs(resid.mean()) < 0.1
    # Not the noisy forward clip reversed: the noise of frame t does not follow its content.
    assert not np.array_equal(noisy_rev, render(fwd)[::-1].astype(np.float64))


def test_coding_commutes_with_time_reversal(tmp_path):
    # The dataset's coding (write_clip: every frame intra-coded at one constant QP) is a per-frame
    # function, so decode(encode(x[::-1])) == decode(encode(x))[::-1] EXACTLY, frame by frame:
    # for the same noisy clip, and (noise off) for the two classes of each pair -- the reversed
    # class's decoded video IS the time reversal of the forward one, and no single decoded frame
    # can carry the order.
    leaky = []
    for pair in ALL_PAIRS:
        fwd, rev = _draw(pair, 2 * pair, num_frames=16, size=48), _draw(pair, 2 * pair + 1, num_frames=16, size=48)
        noisy = render(fwd)
        for name, a, b in (("noisy", noisy, np.ascontiguousarray(noisy[::-1])),
                           ("pair", render(fwd, noise=False), render(rev, noise=False))):
            da = _decode(write_clip(tmp_path / f"{pair}{name}a.mp4", a))
            db = _decode(write_clip(tmp_path / f"{pair}{name}b.mp4", b))
            assert da.shape == (16, 48, 48, 3)
            np.testing.assert_array_equal(db, da[::-1], err_msg=f"pair {pair} ({name})")
        # Control: the old coding (crf 23, P/B frames every 8 frames) does not commute: motion
        # compensation and rate control leave order-dependent traces (measured mean |diff|
        # 2.5-4.5 grey levels on these clips; the threshold is far below, far above 0).
        ca = _decode(write_video(tmp_path / f"{pair}old_a.mp4", noisy, fps=16, crf=23, gop=8, preset="veryfast"))
        cb = _decode(write_video(tmp_path / f"{pair}old_b.mp4", np.ascontiguousarray(noisy[::-1]), fps=16,
                                 crf=23, gop=8, preset="veryfast"))
        leaky.append(np.abs(cb.astype(int) - ca[::-1].astype(int)).mean())
    assert min(leaky) > 0.5, leaky


@pytest.mark.parametrize("class_index", range(MAX_CLASSES))
def test_object_visible_and_moving_over_whole_clip(class_index):
    for seed in range(3):
        p = _draw(seed, class_index, num_frames=32, size=64)
        clean = render_clean(p)
        # background alone: render with the object pushed off-screen
        bg = render_clean(dataclasses.replace(p, trajectory="line", center_start=(5.0, 5.0), center_end=(5.0, 5.0)))[0]
        covered = (np.abs(clean - bg).max(-1) > 20).mean(axis=(1, 2))
        assert covered.min() > 0.01, f"object covers < 1 % of some frame: {covered.min():.4f}"
        # Every step of the clip changes the picture (no static stretch): TSN's 8 segments each see
        # a different state; steps of 4 frames (the gap between segments) change it clearly.
        step1 = np.abs(np.diff(clean, axis=0)).max(axis=(1, 2, 3))
        step4 = np.abs(clean[4:] - clean[:-4]).mean(axis=(1, 2, 3))
        assert step1.min() > 2.0, step1.min()
        assert step4.min() > 0.15, step4.min()


def test_pair_means_equal_but_order_statistics_differ():
    # Independent draws (different seeds per class): the mean time-averaged frame of the two
    # classes of a pair differs only by sampling noise, measured by two disjoint sample sets of
    # the same class (ratio measured 1.5-1.7 for all pairs with these seeds; 1 in expectation),
    # while simple order-aware statistics (late-half minus early-half mean frame, and the same for
    # the absolute frame difference) differ far beyond it (ratios measured >= 4.5).  Rotation and
    # orbit direction leave no trace in such linear pixel averages (checked exactly elsewhere).
    n, kw = 60, dict(num_frames=16, size=32, noise_std=0.0)

    def stats(class_index, seeds):
        gap, late, motion = [], [], []
        for s in seeds:
            v = render_clean(_draw(s, class_index, **kw))
            v = v[::-1] if class_index % 2 else v
            gap.append(v.mean(0))
            late.append(v[8:].mean(0) - v[:8].mean(0))
            d = np.abs(np.diff(v, axis=0))
            motion.append(d[7:].mean(0) - d[:7].mean(0))
        return [np.mean(x, 0) for x in (gap, late, motion)]

    def rms(x):
        return float(np.sqrt(np.mean(x**2)))

    for pair in ALL_PAIRS:
        fwd, rev, fwd2 = stats(2 * pair, range(n)), stats(2 * pair + 1, range(1000, 1000 + n)), \
            stats(2 * pair, range(2000, 2000 + n))
        ratios = [rms(a - b) / rms(a - c) for a, b, c in zip(fwd, rev, fwd2)]
        assert ratios[0] < 2.5, (pair, ratios)
        if PAIR_KINDS[pair][0] not in ("rotate", "orbit"):
            assert max(ratios[1:]) > 3.0, (pair, ratios)


def test_argument_errors():
    with pytest.raises(ValueError, match="even"):
        default_class_names(7)
    with pytest.raises(ValueError, match="class_index"):
        sample_params(np.random.default_rng(0), MAX_CLASSES)
    with pytest.raises(ValueError, match="expected 8 names"):
        make_synthetic_dataset("/nonexistent/x", classes=["a", "b"])
    with pytest.raises(ValueError, match="invalid class name"):
        make_synthetic_dataset("/nonexistent/x", num_classes=2, classes=["a b", "c"])


def test_params_round_trip_json():
    p = _draw(3, 7)
    assert SyntheticParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p


# ------------------------------------------------------------------------------- dataset files
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    return make_synthetic_dataset(out, seed=0, workers=1, progress=False, **SMALL)


def test_files_are_consistent(small):
    root = small.root
    names = small.classes_file.read_text().split("\n")[:-1]
    assert names == default_class_names(8) == small.class_names
    manifest = json.loads(small.manifest_file.read_text())
    assert manifest["complete"] and manifest["seed"] == 0 and manifest["classes"] == names
    params = [json.loads(line) for line in small.params_file.read_text().splitlines()]
    by_path = {r["path"]: r for r in params}
    for split, per_class in (("train", 2), ("val", 1)):
        lines = getattr(small, f"{split}_list").read_text().splitlines()
        assert len(lines) == 8 * per_class == small.num_videos[split]
        records = read_frame_list(getattr(small, f"{split}_list"))  # the TSM-style parser reads it
        assert len(records) == len(lines)
        for line, rec in zip(lines, records):
            rel, nf, label = line.split(" ")
            assert rel.startswith(f"videos/{split}/{names[int(label)]}/") and rel.endswith(".mp4")
            assert (rec.path, rec.num_frames, rec.label) == (rel, int(nf), int(label))
            frames = _decode(root / rel)  # frame count by full decode
            assert frames.shape == (int(nf), 64, 64, 3) and int(nf) == 16
            assert probe(root / rel).num_frames == 16
            row = by_path[rel]
            assert (row["split"], row["label"], row["class_name"]) == (split, int(label), names[int(label)])
            p = SyntheticParams.from_dict(row["params"])
            assert p.class_index == int(label) and p.reverse == bool(int(label) % 2)
            # The video is the rendering of its recorded parameters: intra H.264 at QP 28 of 64x64
            # noisy frames is ~32 dB PSNR from the noise-free render (measured 30.2-34.4); another
            # video's render scores far lower.
            assert _psnr(frames, render(p, noise=False)) > 27.0
    other = SyntheticParams.from_dict(params[0]["params"])
    assert _psnr(_decode(root / params[5]["path"]), render(other, noise=False)) < 22.0
    # the project's reader returns the same frames
    rel = params[3]["path"]
    np.testing.assert_array_equal(load_clip(root / rel, [0, 7, 15]).numpy(), _decode(root / rel)[[0, 7, 15]])


def test_every_frame_is_a_keyframe(small):
    # intra-only coding: each frame is coded (and decodable) on its own
    info = probe(small.root / json.loads(small.params_file.read_text().splitlines()[0])["path"])
    assert info.keyframes == tuple(range(16))
    manifest = json.loads(small.manifest_file.read_text())
    assert (manifest["generator_version"], manifest["coding"], manifest["gop"], manifest["qp"]) == \
        (2, "intra-only", 1, 28)


def test_reuse_and_settings_mismatch(small):
    root = small.root
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = make_synthetic_dataset(root, seed=0, workers=1, progress=False, **SMALL)
    assert again.reused
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes
    with pytest.raises(FileExistsError, match="seed"):
        make_synthetic_dataset(root, seed=1, workers=1, progress=False, **SMALL)


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@pytest.mark.slow
def test_deterministic_across_runs_and_workers(small, tmp_path):
    # Same seed, 2 worker processes instead of 1: byte-identical files (per-video seeds; NumPy
    # YUV conversion; single-threaded x264), hence identical decoded frames.
    b = make_synthetic_dataset(tmp_path / "b", seed=0, workers=2, progress=False, **SMALL)
    assert not b.reused
    assert _digest(small.root) == _digest(b.root)
    # Another seed: other parameters and other pixels, same files and counts.
    c = make_synthetic_dataset(tmp_path / "c", seed=1, workers=1, progress=False, **SMALL)
    assert c.train_list.read_text() == small.train_list.read_text()  # same paths/labels/counts
    rel = small.train_list.read_text().split(" ")[0]
    assert np.abs(_decode(small.root / rel).astype(int) - _decode(c.root / rel).astype(int)).mean() > 10
    # overwrite=True regenerates with the new settings
    d = make_synthetic_dataset(tmp_path / "c", seed=0, overwrite=True, workers=1, progress=False, **SMALL)
    assert not d.reused and _digest(d.root) == _digest(small.root)


def test_dataset_of_older_generator_is_regenerated(small, tmp_path):
    # A cache written by generator version 1 (P/B-frame coding, crf 23, gop 8) with otherwise the
    # same settings is stale: regenerated, not reused (and not an error).
    import shutil

    root = tmp_path / "v1"
    shutil.copytree(small.root, root)
    m = json.loads((root / "manifest.json").read_text())
    for k in ("coding", "qp"):
        del m[k]
    m.update(generator_version=1, crf=23, gop=8)
    (root / "manifest.json").write_text(json.dumps(m))
    stale_video = root / small.val_list.read_text().split(" ")[0]
    stale_video.write_bytes(b"old")
    r = make_synthetic_dataset(root, seed=0, workers=1, progress=False, **SMALL)
    assert not r.reused and _digest(root) == _digest(small.root)
    assert json.loads((root / "manifest.json").read_text())["generator_version"] == 2
    # ... but a version-1 manifest of ANOTHER request (seed) is still refused
    m["seed"] = 5
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FileExistsError, match="seed"):
        make_synthetic_dataset(root, seed=0, workers=1, progress=False, **SMALL)


def test_resume_after_interruption(small, tmp_path):
    # A run that died midway (manifest says incomplete) is resumed: existing videos are kept.
    import shutil

    root = tmp_path / "r"
    shutil.copytree(small.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    missing = root / small.train_list.read_text().split(" ")[0]
    missing.unlink()
    (root / "train.txt").unlink()
    kept = root / small.val_list.read_text().split(" ")[0]
    mtime = kept.stat().st_mtime_ns
    r = make_synthetic_dataset(root, seed=0, workers=1, progress=False, **SMALL)
    assert not r.reused and missing.exists() and kept.stat().st_mtime_ns == mtime
    assert _digest(root) == _digest(small.root)


# ------------------------------------------------------------------ whose files: never delete what we did not write
def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_ours_is_refused_and_left_alone(tmp_path, overwrite):
    """A folder with the user's train.txt / classes.txt / videos and no manifest of ours: refused
    (with or without overwrite), every file as it was; the CLI says so in one line."""
    root = tmp_path / "mine"
    (root / "videos").mkdir(parents=True)
    (root / "train.txt").write_text("my/own.mp4 10 0\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "videos" / "holiday.mp4").write_bytes(b"precious")
    before = _tree(root)
    with pytest.raises(FileExistsError, match=rf"{root}: not empty .*not a synthetic dataset"):
        make_synthetic_dataset(root, seed=0, overwrite=overwrite, workers=1, progress=False, **SMALL)
    (root / "manifest.json").write_text(json.dumps({"format": "someone-else", "videos": 3}))
    before = _tree(root)
    with pytest.raises(FileExistsError, match="not a tcpnet synthetic dataset manifest"):
        make_synthetic_dataset(root, seed=0, overwrite=overwrite, workers=1, progress=False, **SMALL)
    assert _tree(root) == before

    from tcpnet.cli import main

    args = ["synth", str(root), "--num-classes", "8", "--train-per-class", "2", "--val-per-class", "1",
            "--frames", "16", "--size", "64", "--workers", "1"] + (["--overwrite"] if overwrite else [])
    assert main(args) != 0
    assert _tree(root) == before


def test_overwrite_removes_only_the_files_our_manifest_lists(small, tmp_path):
    """Replacing our dataset (other settings, --overwrite) deletes the videos and lists it wrote and
    nothing else: a file the user added under videos/ (and its folders) stays."""
    import shutil

    root = tmp_path / "ours"
    shutil.copytree(small.root, root)
    mine = {"videos/train/grow/my_take.mp4": b"mine", "videos/notes.txt": b"notes", "README": b"readme"}
    for rel, data in mine.items():
        (root / rel).write_bytes(data)
    old_video = "videos/val/rotate_cw/00000.mp4"
    assert (root / old_video).is_file()
    fewer = dict(SMALL, num_classes=4)
    r = make_synthetic_dataset(root, seed=0, overwrite=True, workers=1, progress=False, **fewer)
    assert not r.reused and len(r.train_list.read_text().splitlines()) == 4 * 2
    tree = _tree(root)
    assert all(tree[rel] == data for rel, data in mine.items())
    assert old_video not in tree  # ours, not in the new set: removed
    assert not (root / "videos" / "val" / "rotate_cw").exists()  # emptied class folders go too
    manifest = json.loads((root / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(r for r in tree if r not in mine)


def test_the_demo_data_step_never_deletes_foreign_files(tmp_path):
    """The demo regenerates its own synthetic set of other settings, but a data folder with another
    tool's manifest is refused, its videos untouched (it used to be `rm -rf data/videos`)."""
    from tcpnet.apps.demo import make_demo_data

    data = tmp_path / "out" / "data_quick"
    (data / "videos").mkdir(parents=True)
    (data / "manifest.json").write_text(json.dumps({"format": "my-annotations"}))
    (data / "videos" / "clip.mp4").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not a tcpnet synthetic dataset manifest"):
        make_demo_data(tmp_path / "out", quick=True, data_settings=dict(SMALL, num_classes=2))
    assert (data / "videos" / "clip.mp4").read_bytes() == b"not ours"
