"""Frame-exact decoding on the streams that trip readers (open GOP, an edit-list cut, variable
frame rate) and the decoder skipping non-reference pictures it does not need.

Reference: decode every frame in order and index (videos.decode_all); every read must be
bit-identical to it (no tolerance: same decoder, same RGB conversion), on both packet sources
(file held in memory, demuxer seeks), every plan, single- and multi-threaded, and without the
fallback to decoding from the start (which would be exact but slow).
"""
from __future__ import annotations

import av
import numpy as np
import pytest

from tcpnet.data import load_clip
from tcpnet.data.readers import pyav as video_mod
from videos import decode_all, make_frames, mp4_edit_lists, write_cut, write_open_gop, write_vfr, write_video

CUT_START = 45  # the cut starts mid-GOP (keyframes every 32 frames in the source)


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    paths = {
        "open_gop.mp4": write_open_gop(root / "open_gop.mp4", make_frames(96, seed=11)),
        "open_gop.mkv": write_open_gop(root / "open_gop.mkv", make_frames(64, seed=12), gop=12),
        "vfr.mp4": write_vfr(root / "vfr.mp4", make_frames(80, seed=13)),
    }
    source = write_video(root / "source.mp4", make_frames(120, seed=14), gop=32, bframes=2)
    paths["cut.mp4"] = write_cut(source, root / "cut.mp4", CUT_START)
    return {name: (path, decode_all(path)) for name, path in paths.items()}


def _packets(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.pts, p.is_keyframe, p.is_discard) for p in container.demux(stream) if p.size]


def test_fixtures_have_the_property_they_test(streams):
    for name in ("open_gop.mp4", "open_gop.mkv"):  # leading pictures: after a keyframe, shown before it
        packets = _packets(streams[name][0])
        leading = [j for j, (pts, key, _) in enumerate(packets) if key and j
                   and any(q[0] < pts for q in packets[j + 1:j + 8])]
        assert leading, name
    pts = sorted(p[0] for p in _packets(streams["vfr.mp4"][0]))
    assert len(set(np.diff(pts).tolist())) >= 4  # several different frame durations
    path, ref = streams["cut.mp4"]
    packets = _packets(path)
    assert any(media_time > 0 for _, media_time in mp4_edit_lists(path))  # the edit list
    assert packets[0][1] and packets[0][2]  # it starts at a keyframe that is never shown...
    shown = [p for p in packets if not p[2]]
    assert not min(shown)[1]  # ...and the first frame shown is not a keyframe
    source = decode_all(path.parent / "source.mp4")
    np.testing.assert_array_equal(ref, source[CUT_START:])  # decode-all shows the cut from its start


def _index_sets(num_frames, rng):
    last = num_frames - 1
    avg = num_frames // 8
    return [[0], [last], [0, last], list(range(num_frames)),
            sorted(rng.choice(num_frames, size=8, replace=False).tolist()),
            rng.integers(0, num_frames, size=12).tolist(),
            (np.arange(8) * avg + rng.integers(0, avg, size=8)).tolist()]


@pytest.mark.parametrize("in_memory", [True, False], ids=["memory", "seeks"])
@pytest.mark.parametrize("name", ["open_gop.mp4", "open_gop.mkv", "vfr.mp4", "cut.mp4"])
def test_exact_on_streams_that_trip_readers(streams, name, in_memory, monkeypatch):
    path, ref = streams[name]
    monkeypatch.setattr(video_mod, "IN_MEMORY_MAX_BYTES", video_mod.IN_MEMORY_MAX_BYTES if in_memory else 0)
    rng = np.random.default_rng(0)
    video_mod.counters.clear()
    for indices in _index_sets(len(ref), rng):
        np.testing.assert_array_equal(load_clip(path, indices).numpy(), ref[indices], err_msg=f"{name} {indices}")
        for strategy, threads in (("seek", 1), ("forward", 0), ("auto", 0)):
            video_mod.clear_index_cache()  # cold and warm reads alike
            got = video_mod.read_video(path, np.asarray(indices), strategy=strategy, threads=threads)
            np.testing.assert_array_equal(got, ref[indices], err_msg=f"{name} {strategy} {indices}")
    assert video_mod.counters["fallbacks"] == 0
    assert video_mod.counters["skipped"] > 0  # B-frames that are not references were skipped


def _reference_pts(path):
    """pts of the reference pictures: what the decoder outputs when told to skip the others."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        return {frame.pts for frame in container.decode(stream)}


@pytest.mark.parametrize("threads", [1, 0])
def test_non_reference_frames_are_skipped_unless_wanted(tmp_path, threads):
    """One GOP, so the decoder goes forward from frame 0: it must decode exactly the reference
    pictures up to the last wanted frame's packet plus the wanted frames, B-frames included."""
    path = write_video(tmp_path / "one_gop.mp4", make_frames(60, seed=3), gop=250, bframes=2)
    ref = decode_all(path)
    order = [p[0] for p in _packets(path)]  # pts in decode order
    shown = sorted(order)
    refs = _reference_pts(path)
    assert 0 < len(refs) < len(order) * 0.8  # the encoder made non-reference B-frames
    nonref_frames = [i for i, pts in enumerate(shown) if pts not in refs]
    for wanted in ([40], [nonref_frames[5]], [3, nonref_frames[3], 30, nonref_frames[-2]]):
        wanted_pts = {shown[i] for i in wanted}
        last = max(order.index(pts) for pts in wanted_pts)
        expected = sum(1 for pts in order[:last + 1] if pts in refs or pts in wanted_pts)
        video_mod.clear_index_cache()
        video_mod.counters.clear()
        np.testing.assert_array_equal(load_clip(path, wanted, threads=threads).numpy(), ref[wanted])
        counters = video_mod.counters
        assert counters["frames"] == expected, wanted  # not one non-reference frame more
        assert counters["packets"] == last + 1 and counters["skipped"] == last + 1 - expected
        assert counters["opens"] == 1
        # the same plan without skipping decodes every packet sent
        counters.clear()
        got = video_mod.read_video(path, np.asarray(wanted), threads=threads, skip_nonref=False)
        np.testing.assert_array_equal(got, ref[wanted])
        assert counters["frames"] == last + 1 > expected and counters["skipped"] == 0


def test_no_skipping_for_codecs_it_does_not_parse(tmp_path):
    path = write_video(tmp_path / "mpeg4.avi", make_frames(40, seed=4), codec="mpeg4", gop=12, bframes=2)
    video_mod.counters.clear()
    np.testing.assert_array_equal(load_clip(path, [30]).numpy(), decode_all(path)[[30]])
    assert video_mod.counters["skipped"] == 0
    assert video_mod.get_index(path).nonref is None


def test_mismatch_after_a_light_open_reprobes_instead_of_falling_back(tmp_path, monkeypatch):
    """MP4s are opened without FFmpeg's probe decode; if the decoder then disagrees with the index
    (as a stream that does not state its reorder delay would), the file is read again with the
    full probe, and kept on the fast path, rather than decoded from the start from then on."""
    path = write_video(tmp_path / "a.mp4", make_frames(60, seed=5), gop=16, bframes=2)
    ref = decode_all(path)
    opened = []
    original_open, original_read = video_mod._open, video_mod._Reader.read_planned
    monkeypatch.setattr(video_mod, "_open", lambda p, light=False, **kw: (opened.append(light), original_open(p, light, **kw))[1])

    def read_planned(self, source, strategy, skip_nonref):
        if opened[-1]:  # pretend a light open misled the decoder
            raise video_mod._IndexMismatch("expected frame 3, the decoder gave frame 4")
        return original_read(self, source, strategy, skip_nonref)

    monkeypatch.setattr(video_mod._Reader, "read_planned", read_planned)
    video_mod.counters.clear()
    np.testing.assert_array_equal(load_clip(path, [40, 7]).numpy(), ref[[40, 7]])
    assert opened == [True, False]
    assert (video_mod.counters["reprobes"], video_mod.counters["fallbacks"]) == (1, 0)
    index = video_mod.get_index(path)
    assert index.reliable and not index.light_probe
    np.testing.assert_array_equal(load_clip(path, [59]).numpy(), ref[[59]])
    assert opened == [True, False, False]  # this file is opened with the full probe from now on


@pytest.mark.parametrize("name", ["open_gop.mp4", "open_gop.mkv", "vfr.mp4", "cut.mp4"])
def test_iter_frames_decodes_once_in_order_and_equals_every_read(streams, name):
    """iter_frames (timeline/stream: one pass, in order) gives decode-all's frames, all of them
    or only the wanted ones, and names an index past the end."""
    path, ref = streams[name]
    frames = list(video_mod.iter_frames(path))
    assert [i for i, _ in frames] == list(range(len(ref)))
    np.testing.assert_array_equal(np.stack([f for _, f in frames]), ref)
    wanted = [0, 3, 4, 17, len(ref) - 1]
    got = list(video_mod.iter_frames(path, wanted, threads=1))
    assert [i for i, _ in got] == wanted
    np.testing.assert_array_equal(np.stack([f for _, f in got]), load_clip(path, wanted).numpy())
    with pytest.raises(video_mod.FrameIndexError, match=str(len(ref) + 5)):
        list(video_mod.iter_frames(path, [len(ref) + 5]))
