"""The ``tcpnet`` command: parses arguments, configures logging and calls the library.

Sub-commands: train, test, predict, timeline, stream, extract, explain, export, flops, convert, prepare, synth,
demo, models.
Errors in the inputs (config keys/types, missing files, undecodable videos, bad checkpoints)
end with one ``tcpnet: error: ...`` message on stderr and a non-zero exit code; ``--debug``
shows the traceback instead. Run ``tcpnet <command> -h`` for each command's options.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


__all__ = ["main", "build_parser"]

from tcpnet.config import FUSIONS
from tcpnet.engine.preemption import EXIT_PREEMPTED, Preempted

EXIT_ERROR = 1
EXIT_USAGE = 2


# ---------------------------------------------------------------------------------- logging
def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """INFO (or DEBUG with -v) to stderr; WARNING only with -q and on all but the first rank of
    each node (under torchrun every node's terminal shows its own progress, once)."""
    level = logging.DEBUG if verbose else logging.INFO
    if quiet or int(os.environ.get("LOCAL_RANK", "0")) > 0:
        level = logging.WARNING
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("matplotlib", "PIL", "torch.onnx", "onnxscript", "onnx_ir", "torch._dynamo", "torch.export",
                  "torch.fx", "torch._subclasses"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # "torchvision is not installed. Skipping torchvision::nms" and alike: irrelevant here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------- commands
def _load_cfg(args: argparse.Namespace, extra: Sequence[str] = ()):
    """The config file plus overrides, with the plugins it names (``imports:``) loaded, so its
    backbone, head and list-format names can be looked up."""
    from tcpnet.config import find_config, load_config
    from tcpnet.utils.plugins import load_plugins

    cfg = load_config(find_config(args.config), list(args.overrides) + list(extra))
    load_plugins(cfg.imports, source=f"{args.config}: imports")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from tcpnet.engine.train import train

    extra = []
    if args.resume is not None:
        if args.resume == "auto":
            cfg0 = _load_cfg(args)
            last = Path(cfg0.output_dir) / "last.pt"
            if not last.is_file():
                raise FileNotFoundError(f"--resume: {last} does not exist (nothing to resume in {cfg0.output_dir})")
            extra.append(f"train.resume={last}")
        else:
            if not Path(args.resume).is_file():
                raise FileNotFoundError(f"--resume: {args.resume}: checkpoint not found")
            extra.append(f"train.resume={args.resume}")
    cfg = _load_cfg(args, extra)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        if result.get("nothing_to_do"):
            print(f"nothing to do: {result['resumed_from']} has finished train.epochs={cfg.train.epochs} "
                  f"(raise train.epochs to train longer, or set another output_dir)")
            return 0
        best = result.get("best_metric")
        metric = result.get("metric_name", "top1")
        print(f"done: {result['output_dir']}  best val {metric} "
              f"{'-' if best is None else f'{best:.2f}'} (epoch {result.get('best_epoch', -1) + 1}); "
              f"checkpoints: {result['best_checkpoint']}, {result['last_checkpoint']}")
    return 0


def _floats(text: Optional[str], what: str) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def cmd_test(args: argparse.Namespace) -> int:
    from tcpnet.apps.test import run_test

    cfg = _load_cfg(args)
    result = run_test(cfg, args.checkpoint, weights=_floats(args.weights, "--weights"), views=args.views,
                      fusion=args.fusion, output_dir=args.out, amp=args.amp, progress=sys.stderr.isatty())
    if result.output_dir is not None:
        m = result.metrics
        if "top1" in m:
            head = f"top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  mean class acc {_fmt(m.get('mean_class_acc'))}"
        else:
            head = f"mAP {_fmt(m.get('mAP'))}"
        print(f"{m['num_videos']} videos, {m['views']} views, {m['fusion']}: {head}")
        print(f"results: {result.output_dir / 'metrics.json'}")
        if args.report:
            from tcpnet.apps.report import write_test_report

            print(f"report: {write_test_report(result, cfg)}")
    return 0


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def _reuse_freed_memory() -> None:
    """predict and explain run one forward per video: with glibc's defaults every forward faults
    its freed activations back in (see benchmarks/isqrt_warmup.py); test and train do the same
    through the ``retain_freed_memory`` config key."""
    from tcpnet.utils.malloc import retain_freed_memory

    retain_freed_memory()


def cmd_predict(args: argparse.Namespace) -> int:
    from tcpnet.checkpoints import build_model_from_checkpoint
    from tcpnet.engine.distributed import resolve_device
    from tcpnet.apps.predict import predict_videos, read_labels

    _reuse_freed_memory()
    if args.list is not None:
        return _predict_list(args)
    if not args.videos:
        raise ValueError("predict: give VIDEO paths, or --list FILE with --out FILE.jsonl")
    if args.out is not None:
        raise ValueError("predict --out: only with --list (VIDEO... print to stdout)")
    device = resolve_device(args.device)
    model = build_model_from_checkpoint(args.checkpoint).to(device)
    names = read_labels(args.labels, int(model.num_classes)) if args.labels else None
    preds = predict_videos(model, args.videos, views=args.views, topk=args.topk, class_names=names,
                           fusion=args.fusion, device=device)
    for p in preds:
        if p.error:
            print(f"tcpnet: error: {p.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        for p in preds:
            if p.error:
                continue
            print(p.video)
            for rank, t in enumerate(p.topk, 1):
                name = t["name"] if t["name"] is not None else f"class {t['label']}"
                print(f"  {rank}. {name:<30} {t['prob']:.4f}")
    return EXIT_ERROR if any(p.error for p in preds) else 0


def cmd_stream(args: argparse.Namespace) -> int:
    from tcpnet.apps.predict import read_labels
    from tcpnet.apps.stream import StreamOptions, format_result, run_stream
    from tcpnet.checkpoints import build_model_from_checkpoint
    from tcpnet.engine.distributed import resolve_device

    model = build_model_from_checkpoint(args.checkpoint).to(resolve_device(args.device))
    names = read_labels(args.labels, int(model.num_classes)) if args.labels else None
    options = StreamOptions(window=args.window, stride=args.stride, topk=args.topk, timeout=args.timeout,
                            realtime=args.realtime, out=args.out)
    stats = run_stream(args.source, model, options, class_names=names,
                       emit=lambda r: print(format_result(r, args.json), flush=True))
    if args.json:
        print(json.dumps({"summary": stats.summary()}), flush=True)
    print(f"tcpnet stream: {args.source}: {stats.line()}", file=sys.stderr, flush=True)
    return 0


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() and not getattr(args, "quiet", False)


def _predict_list(args: argparse.Namespace) -> int:
    """``predict --list FILE --out FILE.jsonl``: sharded over ranks, resumable (tcpnet.apps.predict)."""
    from tcpnet.apps.collection import read_collection
    from tcpnet.apps.predict import ListOptions, predict_list_from_checkpoint, read_labels

    if args.videos:
        raise ValueError("predict: give either VIDEO paths or --list FILE, not both")
    if args.out is None:
        raise ValueError("predict --list: --out FILE.jsonl is required (the resumable output)")
    coll = read_collection(list_file=args.list, root=args.root, list_format=args.list_format)
    names = read_labels(args.labels) if args.labels else None
    options = ListOptions(views=args.views, topk=args.topk, fusion=args.fusion, class_names=names,
                          workers=args.workers, decode_timeout=args.decode_timeout or None, progress=_progress(args))
    result = predict_list_from_checkpoint(args.checkpoint, coll, args.out, options, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        s = result.stats
        if s.nothing_to_do:
            print(f"nothing to do: {result.out_file} is complete ({result.num_videos} videos)")
        else:
            print(f"wrote {result.out_file}: {result.num_videos} videos ({s.total - s.committed_before} now, "
                  f"{s.committed_before} from an earlier run)")
        if result.num_errors:
            print(f"tcpnet: error: {result.num_errors} of {result.num_videos} video(s) could not be predicted; "
                  f"their lines in {result.out_file} have an \"error\"", file=sys.stderr)
    return EXIT_ERROR if result.num_errors else 0


def cmd_extract(args: argparse.Namespace) -> int:
    from tcpnet.apps.collection import looks_like_list, read_collection
    from tcpnet.apps.extract import ExtractOptions, extract_from_checkpoint

    _reuse_freed_memory()
    options = ExtractOptions(level=args.level, views=args.views, shard_size=args.shard_size, workers=args.workers,
                             decode_timeout=args.decode_timeout or None, progress=_progress(args))
    is_list = args.list is not None or looks_like_list(args.inputs)
    if is_list and args.list is not None and args.inputs:
        raise ValueError("extract: give either VIDEO paths or --list FILE, not both")
    coll = read_collection(() if is_list else args.inputs, (args.list or args.inputs[0]) if is_list else None,
                           root=args.root, list_format=args.list_format)
    result = extract_from_checkpoint(args.checkpoint, coll, args.out, options, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        s, nbad = result.stats, len(result.bad)
        if s.nothing_to_do:
            print(f"nothing to do: {result.out_dir} is complete ({result.num_videos} videos, {nbad} bad); "
                  f"index: {result.index}")
        else:
            print(f"wrote {result.out_dir}: {result.num_videos} videos ({s.total - s.committed_before} now, "
                  f"{s.committed_before} from an earlier run), {nbad} bad; index: {result.index}")
        for _, reason in result.bad[:20]:
            print(f"  bad: {reason}", file=sys.stderr)
        if nbad:
            print(f"tcpnet: error: {nbad} of {result.num_videos} video(s) could not be read; each is listed "
                  f"with its reason in {result.index}", file=sys.stderr)
    return EXIT_ERROR if result.bad else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from tcpnet.checkpoints import build_model_from_checkpoint
    from tcpnet.engine.distributed import resolve_device
    from tcpnet.apps.explain import explain_videos
    from tcpnet.apps.predict import read_labels

    _reuse_freed_memory()
    model = build_model_from_checkpoint(args.checkpoint).to(resolve_device(args.device))
    names = read_labels(args.labels, int(model.num_classes)) if args.labels else None
    results = explain_videos(model, args.videos, args.out, views=args.views, class_names=names)
    for r in results:
        if "error" in r:
            print(f"tcpnet: error: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" not in r:
                t = r["target"]
                print(f"{r['video']}: {t['name']} ({t['prob']:.4f}) -> {', '.join(r['files'].values())}")
    return EXIT_ERROR if any("error" in r for r in results) else 0


def cmd_timeline(args: argparse.Namespace) -> int:
    from tcpnet.checkpoints import build_model_from_checkpoint
    from tcpnet.engine.distributed import resolve_device
    from tcpnet.apps.predict import read_labels
    from tcpnet.apps.timeline import TimelineOptions, json_lines, output_stem, timeline_videos, write_timeline

    _reuse_freed_memory()
    device = resolve_device(args.device)
    model = build_model_from_checkpoint(args.checkpoint).to(device)
    names = read_labels(args.labels, int(model.num_classes)) if args.labels else None
    options = TimelineOptions(window=args.window, stride=args.stride, topk=args.topk, smooth=args.smooth,
                              progress=sys.stderr.isatty())
    failed, stems = 0, set()
    for tl in timeline_videos(model, args.videos, options, class_names=names, device=device):
        if tl.error:
            print(f"tcpnet: error: {tl.error}", file=sys.stderr)
            failed += 1
            continue
        files = write_timeline(tl, args.out, stem=output_stem(tl.video, stems), topk=args.topk, segments=args.segments)
        if args.json:
            for line in json_lines(tl, args.topk, args.segments):
                print(json.dumps(line), flush=True)
        else:
            print(f"{tl.video}: {len(tl.windows)} windows of {tl.window:g} s every {tl.stride:g} s in {tl.seconds:.1f} s "
                  f"({tl.duration / max(tl.seconds, 1e-9):.1f}x real time) -> {files['html']}")
    return EXIT_ERROR if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from tcpnet.checkpoints import build_model_from_checkpoint, check_not_same_file
    from tcpnet.apps.export import export_model

    check_not_same_file(args.checkpoint, args.output)
    model = build_model_from_checkpoint(args.checkpoint)
    fmt = args.format
    res = export_model(model, args.output, fmt, exporter=args.exporter, opset=args.opset, rtol=args.rtol)
    print(f"wrote {res.path} ({fmt}, dynamic batch); max |{fmt} - torch| = {res.max_abs_diff:.3g} "
          f"(tolerance {res.tolerance:.3g})")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from tcpnet.models import build_model
    from tcpnet.utils.complexity import complexity

    model = build_model(args.model, num_classes=args.num_classes, num_segments=args.segments)
    t, size = int(model.num_segments), args.size or model.input_config.crop_size
    c = complexity(model, (1, 3, t, size, size))
    print(f"{args.model}: T={t} frames of {size}x{size} (input 1x3x{t}x{size}x{size}), {c['params'] / 1e6:.2f} M "
          f"params, {c['gflops']:.2f} GFLOPs ({c['gmacs']:.2f} GMACs, the unit papers call GFLOPs) per clip")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from tcpnet.checkpoints import convert_checkpoint
    from tcpnet.apps.predict import read_labels

    names = read_labels(args.classes) if args.classes else None
    report = convert_checkpoint(args.src, args.dst, args.model, num_classes=args.num_classes,
                                num_segments=args.segments, class_names=names, **_model_args(args.set))
    print(f"wrote {args.dst}: {report}")
    return 0


def _model_args(items: Sequence[str]) -> Dict[str, Any]:
    """``["dim=64", "last_stride=2"]`` -> build_model overrides, values parsed as YAML scalars."""
    import yaml

    out: Dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set dim=64")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_prepare(args: argparse.Namespace) -> int:
    from tcpnet.tools import prepare

    progress = sys.stderr.isatty()
    if args.tool == "extract-frames":
        s = prepare.extract_frames(args.video_root, args.frame_root, short_side=args.short_side or None,
                                   quality=args.quality, workers=args.workers, progress=progress)
    elif args.tool == "reencode":
        s = prepare.reencode_videos(args.src_root, args.dst_root, short_side=args.short_side or None, gop=args.gop,
                                    crf=args.crf, workers=args.workers, progress=progress)
    elif args.tool == "build-list":
        s = prepare.build_list(args.root, args.out, kind=args.kind, label_file=args.labels,
                               class_file=args.classes_out, workers=args.workers, progress=progress)
    elif args.tool == "mini-k200":
        s = prepare.make_mini_kinetics200(args.k400_list, args.ytids, args.out, args.class_map_out,
                                          class_map_in=args.class_map_in, k400_classes=args.k400_classes,
                                          classes_out=args.classes_out)
    else:  # scan
        bad = prepare.scan_videos(args.root, full_decode=args.full_decode, workers=args.workers, progress=progress)
        for path, err in bad:
            print(f"{path}\t{err}")
        print(f"{len(bad)} unreadable video(s) under {args.root}", file=sys.stderr)
        return EXIT_ERROR if bad else 0
    print(s)
    for path, err in s.failed_paths[:20]:
        print(f"  failed: {path}: {err}", file=sys.stderr)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from tcpnet.tools.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(args.out_dir, seed=args.seed, num_classes=args.num_classes,
                                train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                                num_frames=args.frames, size=args.size, overwrite=args.overwrite,
                                workers=args.workers, progress=sys.stderr.isatty())
    print(f"{'reused' if ds.reused else 'wrote'} {ds.root}: {ds.num_videos['train']} train / "
          f"{ds.num_videos['val']} val videos, {len(ds.class_names)} classes ({ds.train_list}, {ds.val_list})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tcpnet.apps.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, device=args.device, overrides=args.overrides,
             num_workers=args.workers)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from tcpnet.config import list_configs
    from tcpnet.models import list_models

    for name in list_models():
        print(name)
    if args.configs:
        print("\nconfigs:")
        for name in list_configs():
            print(f"  {name}")
    return 0


# ---------------------------------------------------------------------------------- parser
def _common(suppress: bool) -> argparse.ArgumentParser:
    """--debug / -v / -q, accepted before or after the sub-command."""
    p = argparse.ArgumentParser(add_help=False)
    d = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors", **d)
    p.add_argument("-v", "--verbose", action="count", help="debug logging", **({"default": argparse.SUPPRESS}
                   if suppress else {"default": 0}))
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only", **d)
    return p


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue from PATH, or (no PATH) from <output_dir>/last.pt")


def _test_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--checkpoint", metavar="PATH[,PATH2...]",
                   help="model file(s); several = ensemble (default: test.checkpoint, else <output_dir>/best.pt)")
    p.add_argument("--weights", metavar="W1,W2...", help="ensemble weights, one per checkpoint (default 1)")
    p.add_argument("--views", metavar="CxN", help="crops x clips: 1x1 (centre crop), 3x10 (published 30 views); "
                   "C in {1,3,5,10} (default: test.views)")
    p.add_argument("--fusion", choices=FUSIONS,
                   help="how views are combined (default: test.fusion; auto = max-prob, the authors', "
                        "or max-sigmoid for multi-label data)")
    p.add_argument("--out", metavar="DIR", help="output directory for metrics.json, scores.npz and the "
                   "confusion matrix (default <output_dir>/test_<views>)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="autocast for the forward pass")
    p.add_argument("--report", action="store_true",
                   help="also write report.html: metrics, confusions, worst videos with explain sheets")


def _collection_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that run over a collection (predict --list, extract)."""
    p.add_argument("--root", default="", metavar="DIR", help="the list's paths are relative to DIR (default: .)")
    p.add_argument("--list-format", default="auto", metavar="NAME",
                   help="a registered list format (auto: detected; a plain list of paths also works)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: in the main process)")
    p.add_argument("--decode-timeout", type=float, default=60.0, metavar="S",
                   help="seconds one video may take to decode before it counts as bad (0: no limit)")
    p.add_argument("--device", default="auto")


def _predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="*", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: from the checkpoint)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--views", default="1x1", metavar="CxN")
    p.add_argument("--fusion", choices=FUSIONS, default="auto",
                   help="auto: mean-prob, or max-sigmoid for a model trained on multi-label data")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--list", metavar="FILE", help="predict every video of a list file (any registered format, "
                   "or paths one per line) into --out; torchrun-aware, resumable")
    p.add_argument("--out", metavar="FILE.jsonl", help="with --list: one JSON line per video; a rerun after a "
                   "stop adds only the missing videos")
    _collection_options(p)


def _extract_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="LIST|VIDEO", help="a list file (.txt/.csv/...) or video paths")
    p.add_argument("--list", metavar="FILE", help="the list file (when its name does not end in .txt, .csv, ...)")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="shards, index.json; a rerun resumes here")
    p.add_argument("--level", choices=("head", "backbone"), default="head",
                   help="head: the TCP vector (model.forward_features); backbone: the backbone maps averaged "
                        "over time and space")
    p.add_argument("--views", default="1x1", metavar="CxN", help="test views, kept apart: (V, D) per video")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="videos per shard file")
    _collection_options(p)


def _stream_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="'-' (a container stream on stdin, e.g. mpegts), /dev/videoN "
                   "(v4l2), FORMAT:DEVICE (avfoundation:0, dshow:video=NAME), a URL FFmpeg reads (rtsp://, "
                   "udp://, tcp://, http://) or a file")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--window", type=float, default=2.0, help="seconds per window (default 2.0)")
    p.add_argument("--stride", type=float, default=0.5, help="seconds between windows, rounded to whole "
                   "segments of window/T (default 0.5)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per window, and a last one with the summary")
    p.add_argument("--out", metavar="FILE.mp4", help="also write the stream with the current label drawn on it")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the first frame (then exit 1), "
                   "and for the next one before the stream counts as ended (default 10)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="a file plays at its own pace (default); --no-realtime reads it as fast as possible "
                        "and scores every window")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: from the checkpoint)")
    p.add_argument("--device", default="auto")


def _explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--out", default="explain", metavar="DIR", help="where <video>.png/.mp4 go (default ./explain)")
    p.add_argument("--views", default="1x1", metavar="CxN",
                   help="test views; the sheet shows the one most confident in the explained class")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: from the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--device", default="auto")


def _timeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--window", type=float, default=2.0, metavar="SECONDS", help="window length (default 2.0)")
    p.add_argument("--stride", type=float, default=0.5, metavar="SECONDS",
                   help="time between window starts, rounded to a whole number of window/T segments (default 0.5)")
    p.add_argument("--out", default="timeline", metavar="DIR",
                   help="where <video>.csv/.json/.png/.html go (default ./timeline)")
    p.add_argument("--json", action="store_true", help="print one JSON object per window (and segment) per line")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: from the checkpoint)")
    p.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="moving average of the probabilities over N windows, centred (default 1: none)")
    p.add_argument("--segments", action="store_true",
                   help="merge consecutive windows with the same top class into segments (<video>.segments.csv/.json)")
    p.add_argument("--device", default="auto")


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--output", required=True, metavar="FILE", help="must not be the checkpoint")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="ONNX exporter: torch.export-based (default) or the older tracing one")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="fail if max|exported - torch| > rtol * max(1, max|torch logits|)")


def _flops_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--segments", type=int, default=None, help="frames per clip T (default: the model's own T)")
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's crop size)")
    p.add_argument("--num-classes", type=int, default=400)


def _convert_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST", help=".safetensors for a safetensors file, else a torch model file "
                   "(must not be SRC)")
    p.add_argument("--model", metavar="NAME", help="the model of a file that is not ours (e.g. the authors'); "
                   "a tcpnet file is converted as the model it records")
    p.add_argument("--num-classes", type=int, default=None, help="default: from the classifier weight")
    p.add_argument("--segments", type=int, default=None, help="default: the file's T, else the model's own T")
    p.add_argument("--classes", metavar="FILE", help="class names to store, one per line "
                   "(default: those the file records)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="build_model override, repeatable (e.g. --set dim=64)")


def _prepare_media_tools(tools: Any, common: List[argparse.ArgumentParser]) -> None:
    """``prepare extract-frames`` and ``prepare reencode``."""
    t = tools.add_parser("extract-frames", parents=common, help="videos -> frame folders (img_00001.jpg ...)")
    t.add_argument("video_root")
    t.add_argument("frame_root")
    t.add_argument("--short-side", type=int, default=256, help="0 keeps the size")
    t.add_argument("--quality", type=int, default=95)
    t.add_argument("--workers", type=int, default=None)
    t = tools.add_parser("reencode", parents=common, help="re-encode videos to H.264 mp4, short side, short GOP")
    t.add_argument("src_root")
    t.add_argument("dst_root")
    t.add_argument("--short-side", type=int, default=256, help="0 keeps the size")
    t.add_argument("--gop", type=int, default=16)
    t.add_argument("--crf", type=int, default=23)
    t.add_argument("--workers", type=int, default=None)


def _prepare_list_tools(tools: Any, common: List[argparse.ArgumentParser]) -> None:
    """``prepare build-list``, ``prepare mini-k200`` and ``prepare scan``."""
    t = tools.add_parser("build-list", parents=common, help="class-per-folder tree -> list file")
    t.add_argument("root")
    t.add_argument("out")
    t.add_argument("--kind", choices=("video", "frames"), default="video")
    t.add_argument("--labels", metavar="FILE", help="class names, one per line (default: sorted folder names)")
    t.add_argument("--classes-out", metavar="FILE", help="where to write classes.txt (default: beside OUT)")
    t.add_argument("--workers", type=int, default=1)
    t = tools.add_parser("mini-k200", parents=common, help="Mini-Kinetics-200 list from a Kinetics-400 list")
    t.add_argument("k400_list")
    t.add_argument("ytids", help="YouTube ids, one per line")
    t.add_argument("out")
    t.add_argument("--class-map-out", default=None)
    t.add_argument("--class-map-in", default=None, help="the train split's map, when making the val list")
    t.add_argument("--k400-classes", default=None)
    t.add_argument("--classes-out", default=None)
    t = tools.add_parser("scan", parents=common, help="list unreadable videos (exit 1 if any)")
    t.add_argument("root")
    t.add_argument("--full-decode", action="store_true")
    t.add_argument("--workers", type=int, default=1)


def _prepare_options(p: argparse.ArgumentParser) -> None:
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    common = [_common(True)]
    _prepare_media_tools(tools, common)
    _prepare_list_tools(tools, common)


def _synth_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to both demo configs")
    p.add_argument("--out", default="demo_output", metavar="DIR")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds; accuracies mean nothing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers")


def _models_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", action="store_true", help="also list the shipped configs")


_TEST_FILES = ("Writes into --out: metrics.json (top-1/top-5, mean class accuracy, per-class accuracy, or mAP "
               "for multi-label data), scores.npz (per-view logits, fused scores, targets, paths, class names; "
               "re-fuse offline with tcpnet.apps.test.fuse_scores) and, for single-label data, "
               "confusion_matrix.csv/.png.")

# name, function, one-line help, longer description (None: the help), options
_COMMANDS: Tuple[Tuple[str, Callable[[argparse.Namespace], int], str, Optional[str],
                       Callable[[argparse.ArgumentParser], None]], ...] = (
    ("train", cmd_train, "train a model from a config (torchrun-aware)", None, _train_options),
    ("test", cmd_test, "multi-view test of one checkpoint or an ensemble (torchrun-aware)",
     "multi-view test of one checkpoint or an ensemble (torchrun-aware). " + _TEST_FILES, _test_options),
    ("predict", cmd_predict, "top-k classes of video files, or of a list into JSON lines (--list)", None,
     _predict_options),
    ("timeline", cmd_timeline, "label a long video window by window: CSV, JSON, a picture and an HTML page "
     "per video", None, _timeline_options),
    ("extract", cmd_extract, "features of every video of a list (TCP vector or backbone), sharded "
     "safetensors + index.json; torchrun-aware, resumable", None, _extract_options),
    ("stream", cmd_stream, "label a live stream (camera, URL, stdin, file) window by window, dropping frames "
     "rather than lagging", None, _stream_options),
    ("explain", cmd_explain, "what the model looks at: Grad-CAM, TCP attention, frame importance "
     "(a PNG sheet and an MP4 per video)", None, _explain_options),
    ("export", cmd_export, "export a model to ONNX or TorchScript (dynamic batch) and verify it", None,
     _export_options),
    ("flops", cmd_flops, "parameters and FLOPs of a registered model at its own T (or --segments)", None,
     _flops_options),
    ("convert", cmd_convert, "convert an authors' (or other) checkpoint to a tcpnet model file, or a tcpnet "
     "file to another format (.pt <-> .safetensors)", None, _convert_options),
    ("prepare", cmd_prepare, "dataset tools", None, _prepare_options),
    ("synth", cmd_synth, "generate the synthetic order-dependent video dataset", None, _synth_options),
    ("demo", cmd_demo, "CPU demo: TCP vs GAP on synthetic time-reversal classes", None, _demo_options),
    ("models", cmd_models, "list registered models", None, _models_options),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``tcpnet`` parser: global options, then one sub-command per :data:`_COMMANDS` row."""
    from tcpnet import __version__

    parser = argparse.ArgumentParser(
        prog="tcpnet", parents=[_common(False)],
        description="TCPNet video recognition: train, test, predict, export and tools.",
        epilog="CONFIG is a YAML file or a shipped config name (e.g. demo/tcp, k400/tcp_tsn_r50_8f); "
               "key=value arguments override config entries (e.g. train.lr=0.01 data.num_workers=2).")
    parser.add_argument("--version", action="version", version=f"tcpnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, fn, help_text, description, options in _COMMANDS:
        p = sub.add_parser(name, parents=[_common(True)], help=help_text, description=description or help_text)
        p.set_defaults(func=fn)
        options(p)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """parse_known_args, then take stray ``key=value`` tokens (given after options) as overrides."""
    args, rest = parser.parse_known_args(argv)
    stray = [r for r in rest if "=" in r and not r.startswith("-")]
    unknown = [r for r in rest if r not in stray]
    if unknown or (stray and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or stray)}")
    if stray:
        args.overrides = list(args.overrides) + stray
    return args


def _error_message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, KeyError):
        return f"missing key {e}"
    text = str(e) or type(e).__name__
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the worker's error line
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        kind, _, message = last.partition(": ")
        return message if message and kind.split(".")[-1] == type(e).__name__ else last
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tcpnet`` console script; returns the exit code."""
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    setup_logging(getattr(args, "verbose", 0) or 0, getattr(args, "quiet", False))
    try:
        from tcpnet.utils.plugins import load_entry_points

        load_entry_points()  # installed plugins' models, heads, formats: for every command
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tcpnet: interrupted", file=sys.stderr)
        return 130
    except Preempted as e:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one stop line per node, not one per rank
            print(f"tcpnet: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except BrokenPipeError:  # stdout closed early (e.g. `tcpnet predict ... | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - every error becomes one message unless --debug
        if getattr(args, "debug", False):
            raise
        from tcpnet.checkpoints import CheckpointError
        from tcpnet.config import ConfigError
        from tcpnet.data.errors import DecodeError

        expected = (ConfigError, CheckpointError, DecodeError, OSError, ValueError, TypeError, KeyError,
                    FloatingPointError, ImportError)
        msg = _error_message(e)
        if not isinstance(e, expected):
            msg = f"{type(e).__name__}: {msg} (run with --debug for the traceback)"
        print(f"tcpnet: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
