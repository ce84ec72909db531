"""See what a model sees in a clip: Grad-CAM of the explained class on the last backbone stage,
TCP's temporal spatial attention (TSA) and channel attention (TCA) per frame, and how much each
sampled frame matters; written as a PNG contact sheet and an MP4 with the overlays.

Everything is read from the model's own forward pass through forward hooks: on ``model.backbone``
(its output maps, and the gradient of the class logit with respect to them), and on the attention
modules the head names in ``head.explain_modules()`` (for TCP: TSA and TCA; their inputs, turned
into attention with the modules' ``affinity``/``gates`` methods). The explained forward is ``model(x)`` itself,
so its logits are the model's.

* **Grad-CAM** (Selvaraju et al. 2017): ``ReLU(sum_c alpha_c A_c)`` over the backbone's last
  stage maps ``A``, with ``alpha_c`` the gradient of the class logit averaged over the clip's
  frames and positions (one channel weighting per clip, so frames are comparable); scaled so that
  the clip's maximum is 1. A 3-D backbone returns ``T' < T`` frames (R(2+1)D: 16 -> 2): sampled
  frame ``t`` shows map ``floor(t * T' / T)`` (:func:`feature_frames`).
* **TSA**: the softmax affinity ``A`` (rows: positions of frame t-1, columns: positions of frame
  t-2) weights frame t's values; the map is the mean weight each position receives (column mean),
  scaled to the clip's maximum; ``tsa_focus`` = that peak times the number of positions
  (1 = uniform attention).
* **TCA**: the mean over channels of the two sigmoid gates' average that scales frame t.
* **Frame importance**: the drop of the explained class's probability when segment t is
  replaced by its neighbour (t-1; frame 0 by frame 1); model-agnostic, one batched forward of the
  T modified clips. When the backbone maps frames independently (a 2-D backbone without temporal
  modules, e.g. TSN) the modified clips' backbone maps are the original maps with row t replaced,
  so only the head runs again; otherwise the whole model does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from tcpnet.input_config import InputConfig

logger = logging.getLogger(__name__)

__all__ = ["Explanation", "ACTIVATIONS", "clip_frames", "explain_clip", "explain_frames", "explain_video",
           "explain_videos", "feature_frames", "neighbour_index", "render_explanation", "resolve_activation",
           "write_explanation"]

ACTIVATIONS = ("softmax", "sigmoid")


# ------------------------------------------------------------------------------ the numbers
@dataclass
class Explanation:
    """What the model saw in V views (clips) of T frames; heat maps are per sampled frame."""

    logits: torch.Tensor                  # (V, K), equal to model(x)
    probs: torch.Tensor                   # (V, K): softmax (or sigmoid) of the logits
    target: torch.Tensor                  # (V,) explained class of each view
    gradcam: torch.Tensor                 # (V, T, h, w) in [0, 1]
    importance: torch.Tensor              # (V, T) drop of p(target) when frame t is replaced
    frames: np.ndarray                    # (V, T, H, W, 3) uint8: the model's input, de-normalised
    feature_frames: List[int]             # (T,) backbone output frame shown for each sampled frame
    tsa: Optional[torch.Tensor] = None    # (V, T, h, w) in [0, 1] (TCP with TSA only)
    tsa_focus: Optional[torch.Tensor] = None  # (V, T) peak / uniform weight, >= 1
    tca: Optional[torch.Tensor] = None    # (V, T) mean channel gate in (0, 1) (TCP with TCA only)
    activation: str = "softmax"
    class_names: Optional[List[str]] = None
    model_name: Optional[str] = None
    video: Optional[str] = None
    frame_indices: Optional[List[List[int]]] = None  # per view: source frame of each segment

    @property
    def num_views(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_segments(self) -> int:
        return int(self.gradcam.shape[1])

    def class_name(self, label: int) -> str:
        names = self.class_names
        return names[label] if names is not None and 0 <= label < len(names) else f"class {label}"

    def scores(self) -> torch.Tensor:
        """(K,) mean over views of the probabilities (``predict``'s default mean-prob fusion)."""
        return self.probs.mean(0)

    def topk(self, k: int = 5) -> List[Dict[str, Any]]:
        """The k best classes of the fused scores: ``{"label", "name", "prob"}``, best first."""
        values, indices = torch.sort(self.scores(), descending=True, stable=True)
        return [{"label": int(c), "name": self.class_name(int(c)), "prob": float(p)}
                for p, c in zip(values[:k], indices[:k])]

    def best_view(self) -> int:
        """The view in which the explained class is most probable (the one a sheet shows)."""
        return int(self.probs.gather(1, self.target.view(-1, 1)).squeeze(1).argmax())

    def to_dict(self, maps: bool = False) -> Dict[str, Any]:
        """JSON-ready numbers; ``maps=True`` adds the (h, w) heat maps of every view and frame."""
        def r(x: torch.Tensor) -> Any:
            return np.round(x.detach().double().cpu().numpy(), 6).tolist()

        target = int(self.target[self.best_view()])
        views = []
        for v in range(self.num_views):
            tv = int(self.target[v])
            d: Dict[str, Any] = {"target": tv, "prob": round(float(self.probs[v, tv]), 6),
                                 "importance": r(self.importance[v]),
                                 "gradcam_mean": r(self.gradcam[v].mean(dim=(1, 2)))}
            if self.tsa_focus is not None:
                d["tsa_focus"] = r(self.tsa_focus[v])
            if self.tca is not None:
                d["tca"] = r(self.tca[v])
            if maps:
                d["gradcam"] = r(self.gradcam[v])
                if self.tsa is not None:
                    d["tsa"] = r(self.tsa[v])
            views.append(d)
        return {"video": self.video, "model": self.model_name, "activation": self.activation,
                "num_segments": self.num_segments, "num_views": self.num_views,
                "target": {"label": target, "name": self.class_name(target),
                           "prob": round(float(self.scores()[target]), 6)},
                "topk": [{**t, "prob": round(t["prob"], 6)} for t in self.topk(5)],
                "feature_frames": list(self.feature_frames), "frame_indices": self.frame_indices,
                "views": views}


def feature_frames(num_segments: int, head_segments: int) -> List[int]:
    """Backbone output frame ``t'`` behind sampled frame ``t``: ``floor(t * T' / T)``.

    A 3-D backbone that strides time gives T' < T output frames, output frame t' summarising the
    block of T/T' input frames starting at ``t' * T / T'``; so each block of sampled frames shares
    its map. For 2-D backbones T' = T and this is the identity."""
    return [t * head_segments // num_segments for t in range(num_segments)]


def neighbour_index(num_segments: int) -> torch.Tensor:
    """(T, T) frame indices of the T modified clips: row t is ``0..T-1`` with frame t replaced
    by its neighbour (t-1, or 1 for t = 0)."""
    t = int(num_segments)
    idx = torch.arange(t).repeat(t, 1)
    if t > 1:
        idx[torch.arange(t), torch.arange(t)] = torch.tensor([1] + list(range(t - 1)))
    return idx


def resolve_activation(model: nn.Module, activation: Optional[str]) -> str:
    """``None`` -> "sigmoid" for a model trained on multi-label data (``model.multi_label``), else
    "softmax"; otherwise checked against :data:`ACTIVATIONS`."""
    if activation is None:
        return "sigmoid" if getattr(model, "multi_label", False) else "softmax"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return activation


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    return logits.float().softmax(-1) if activation == "softmax" else logits.float().sigmoid()


def _scale_to_peak(maps: torch.Tensor) -> torch.Tensor:
    """(V, ...) non-negative maps divided by each view's maximum (all-zero views stay zero)."""
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    peak = maps.flatten(1).amax(1).view(-1, *([1] * (maps.dim() - 1)))
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(maps))


def _frames_independent(model: nn.Module) -> bool:
    """True when the backbone maps each frame on its own: a 'frames' backbone with no temporal
    module (TSM shift, TEA excitation) inside it."""
    from tcpnet.backbones.temporal import TemporalModule

    if getattr(model, "layout", "frames") != "frames":
        return False
    return not any(isinstance(m, TemporalModule) for m in model.backbone.modules() if m is not model.backbone)


def clip_frames(x: torch.Tensor, cfg: InputConfig) -> np.ndarray:
    """(V, 3, T, H, W) normalised clips -> uint8 (V, T, H, W, 3), the inverse of the data pipeline's
    ``normalize`` (exact after rounding for 8-bit input)."""
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1, 1)
    pixels = (x.detach().float().cpu() * std + mean) / float(cfg.value_scale)
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def _call_args(args: tuple, kwargs: dict, names: Sequence[str]) -> List[Any]:
    """The values of ``names`` from a hooked call's positional and keyword arguments."""
    return [args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names)]


class _Probe:
    """Forward hooks that record what explain reads from one forward pass: the backbone's output
    maps, made the leaf of the gradient (no autograd graph through the backbone), and the inputs
    of the attention modules the head names in ``explain_modules()``, turned into TSA affinity and
    TCA gates."""

    def __init__(self, model: nn.Module) -> None:
        self.state: Dict[str, Any] = {}
        explain_modules = getattr(model.head, "explain_modules", None)
        modules = explain_modules() if explain_modules is not None else {}
        self.handles = [model.backbone.register_forward_pre_hook(self._backbone_pre),
                        model.backbone.register_forward_hook(self._backbone_out)]
        readers = {"tsa": self._tsa, "tca": self._tca}
        for key, module in modules.items():
            if key not in readers:
                raise ValueError(f"{type(model.head).__name__}.explain_modules(): unknown map {key!r}; "
                                 f"expected {', '.join(readers)}")
            self.handles.append(module.register_forward_hook(readers[key], with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _backbone_pre(self, module: nn.Module, args: tuple) -> None:
        self.state["grad_enabled"] = torch.is_grad_enabled()
        torch.set_grad_enabled(False)  # no autograd graph through the backbone: the gradient stops at its maps

    def _backbone_out(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(self.state.pop("grad_enabled"))
        self.state["maps"] = out.detach().requires_grad_(True)
        return self.state["maps"]

    def _tsa(self, module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        z, nseg = _call_args(args, kwargs, ("x", "num_segments"))
        with torch.no_grad():
            self.state["affinity"] = module.affinity(z.detach(), nseg)

    def _tca(self, module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        z, _, nseg = _call_args(args, kwargs, ("x", "xa", "num_segments"))
        with torch.no_grad():
            self.state["gates"] = module.gates(z.detach(), nseg) * 0.5


def _forward_with_gradient(model: nn.Module, x: torch.Tensor, activation: str,
                           target: Union[int, torch.Tensor, None]) -> Dict[str, Any]:
    """``model(x)`` in eval mode with the probe attached, and the gradient of the target logits
    with respect to the backbone maps; returns the probe's state plus logits, probs, target, grad."""
    probe = _Probe(model)
    grad_enabled = torch.is_grad_enabled()
    try:
        with torch.enable_grad():
            logits = model(x)
            probs = _activate(logits.detach(), activation)
            if target is None:
                tgt = probs.argmax(1)
            else:
                tgt = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1).expand(x.shape[0])
            score = logits.gather(1, tgt.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, probe.state["maps"])
    finally:
        probe.remove()
        torch.set_grad_enabled(grad_enabled)
    return {**probe.state, "logits": logits.detach(), "probs": probs, "target": tgt.detach().clone(), "grad": grad}


@torch.no_grad()
def _heat_maps(seen: Dict[str, Any], v: int, t: int, t_head: int) -> Dict[str, Any]:
    """Grad-CAM, and the TSA / TCA maps the probe recorded, per sampled frame (see the module doc)."""
    maps = seen["maps"].detach()
    c, h, w = maps.shape[1:]
    alpha = seen["grad"].view(v, t_head, c, h, w).mean(dim=(1, 3, 4))  # (V, C)
    cam = torch.relu(torch.einsum("vc,vtchw->vthw", alpha, maps.view(v, t_head, c, h, w)))
    idx = feature_frames(t, t_head)
    out: Dict[str, Any] = {"gradcam": _scale_to_peak(cam)[:, idx].cpu(), "feature_frames": idx}
    if "affinity" in seen:
        received = seen["affinity"].float().mean(1)  # (V*T', L): mean weight each position of frame t gets
        length = received.shape[-1]  # H*W of the head's maps = the backbone's (1x1 reductions)
        out["tsa"] = _scale_to_peak(received.view(v, t_head, h, w))[:, idx].cpu()
        out["tsa_focus"] = (received.amax(-1) * length).view(v, t_head)[:, idx].cpu()
    if "gates" in seen:
        out["tca"] = seen["gates"].float().mean(dim=(1, 2, 3)).view(v, t_head)[:, idx].cpu()
    return out


def explain_clip(model: nn.Module, clip: torch.Tensor, *, target: Union[int, torch.Tensor, None] = None,
                 activation: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                 frames: Optional[np.ndarray] = None) -> Explanation:
    """Explain normalised clip(s) (3, T, H, W) or (V, 3, T, H, W) for a :class:`Recognizer`.

    ``target``: the class to explain (an int for every view, or one per view); default each
    view's top class. ``activation``: "softmax" or "sigmoid" (default: :func:`resolve_activation`).
    ``frames``: the uint8 (V, T, H, W, 3) frames to show; default the de-normalised input.
    The model is run in eval mode and its mode restored afterwards.
    """
    activation = resolve_activation(model, activation)
    x = clip.unsqueeze(0) if clip.dim() == 4 else clip
    x = x.to(next(model.parameters()).device)
    model.check_input(x)
    v, t = int(x.shape[0]), int(x.shape[2])
    was_training = model.training
    model.eval()
    try:
        seen = _forward_with_gradient(model, x, activation, target)
        heat = _heat_maps(seen, v, t, model.head_segments())
        with torch.no_grad():
            importance = _importance(model, x, seen["maps"].detach(), seen["probs"], seen["target"], activation)
    finally:
        model.train(was_training)
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    return Explanation(
        logits=seen["logits"], probs=seen["probs"], target=seen["target"], importance=importance.cpu(),
        frames=frames if frames is not None else clip_frames(x, model.input_config), activation=activation,
        class_names=list(names) if names is not None else None, model_name=getattr(model, "model_name", None),
        **heat)


def _importance(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, probs: torch.Tensor,
                target: torch.Tensor, activation: str) -> torch.Tensor:
    """(V, T) drop of p(target) when each frame is replaced by its neighbour (one batched forward
    of the T modified clips per view)."""
    v, t = int(x.shape[0]), int(x.shape[2])
    if t < 2:
        return torch.zeros(v, t)
    idx = neighbour_index(t).to(x.device)
    base = probs.gather(1, target.view(-1, 1)).squeeze(1)
    independent = _frames_independent(model)
    rows = []
    for i in range(v):
        if independent:  # the backbone maps of the modified clips are rows of the original maps
            m = maps[i * t:(i + 1) * t][idx.flatten()]
            logits = model.forward_head(model.head(m, t))
        else:
            logits = model(x[i][:, idx].permute(1, 0, 2, 3, 4))  # (T, 3, T, H, W): clip k has frame k replaced
        rows.append(base[i] - _activate(logits, activation)[:, target[i]])
    return torch.stack(rows)


def explain_frames(model: nn.Module, frames: Union[np.ndarray, torch.Tensor], **kwargs: Any) -> Explanation:
    """Explain uint8 frames (T, H, W, 3) or (V, T, H, W, 3), already sampled and cropped to the
    model's input size: normalised with ``model.input_config`` and passed to :func:`explain_clip`."""
    from tcpnet.data.transforms import to_float

    f = torch.as_tensor(np.asarray(frames))
    if f.dtype != torch.uint8 or f.dim() not in (4, 5) or f.shape[-1] != 3:
        raise ValueError(f"explain_frames: expected uint8 (T, H, W, 3) or (V, T, H, W, 3), got "
                         f"{f.dtype} {tuple(f.shape)}")
    f = f.unsqueeze(0) if f.dim() == 4 else f
    return explain_clip(model, to_float(f, model.input_config), frames=f.numpy(), **kwargs)


def explain_video(model: nn.Module, path: Union[str, Path], *, views: str = "1x1", activation: Optional[str] = None,
                  class_names: Optional[Sequence[str]] = None, target: Optional[int] = None) -> Explanation:
    """Explain a video file (or frame folder) through the test pipeline ``predict`` uses (same
    sampling, crops and normalisation, so the probabilities are ``predict``'s). With several
    views the explained class is the top class of the views' mean probability, for every view."""
    from tcpnet.apps.predict import build_predict_dataset

    activation = resolve_activation(model, activation)
    dataset = build_predict_dataset(model, [str(path)], views)
    num_frames = dataset.num_frames(0)
    indices = [int(i) for i in dataset.sampler(num_frames, np.random.default_rng(0))]
    clip = dataset.load(0, np.random.default_rng(0))  # test sampling and crops are deterministic
    clip = clip.unsqueeze(0) if clip.dim() == 4 else clip
    if target is None and clip.shape[0] > 1:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            target = int(_activate(model(clip.to(device)), activation).mean(0).argmax())
        model.train(was_training)
    expl = explain_clip(model, clip, target=target, activation=activation, class_names=class_names)
    t, clips = model.num_segments, dataset.num_clips
    expl.video = str(path)
    expl.frame_indices = [indices[(j % clips) * t:(j % clips + 1) * t] for j in range(expl.num_views)]
    return expl


# ------------------------------------------------------------------------------- rendering
MIN_SIDE = 112  # frames are shown at least this many pixels high (nearest-neighbour upscaling)
SHEET_COLORS = 256  # sheets are stored as palette PNGs (a third of the size of full colour)


def _panels(expl: Explanation, view: int) -> Dict[str, np.ndarray]:
    """uint8 (T, S, S, 3) strips of one view: frames, Grad-CAM overlays and (TCP) TSA overlays."""
    from tcpnet.viz import overlay, upscale

    frames = upscale(expl.frames[view], MIN_SIDE)
    out = {"frames": frames,
           "gradcam": np.stack([overlay(f, m.numpy()) for f, m in zip(frames, expl.gradcam[view])])}
    if expl.tsa is not None:
        out["tsa"] = np.stack([overlay(f, m.numpy(), cmap="viridis") for f, m in zip(frames, expl.tsa[view])])
    return out


def _frame_labels(expl: Explanation, view: int) -> List[str]:
    idx = expl.frame_indices[view] if expl.frame_indices else None
    return [f"t={t}" + (f" (#{idx[t]})" if idx else "") for t in range(expl.num_segments)]


def render_explanation(expl: Explanation, view: Optional[int] = None) -> np.ndarray:
    """The contact sheet of one view (default :meth:`Explanation.best_view`) as uint8 RGB."""
    from tcpnet.viz import BarRow, render_sheet

    v = expl.best_view() if view is None else int(view)
    target = int(expl.target[v])
    name = expl.class_name(target)
    panels = _panels(expl, v)
    rows = [("sampled frames", panels["frames"]), (f"Grad-CAM: {name}", panels["gradcam"])]
    if "tsa" in panels:
        rows.append(("TSA attention (t-1, t-2 affinity)", panels["tsa"]))
    bars = [BarRow(f"drop of p({name}) when the frame is replaced by its neighbour", expl.importance[v].tolist(),
                   fmt="{:+.2g}")]
    if expl.tca is not None:
        vals = np.asarray(expl.tca[v].tolist())
        span = max(float(vals.max() - vals.min()), 1e-3)
        bars.append(BarRow("TCA channel attention (mean gate)", vals.tolist(), fmt="{:.4f}", color="#55a868",
                           ylim=(float(vals.min()) - 0.5 * span, float(vals.max()) + 0.6 * span)))
    title = expl.video or "clip"
    if len(title) > 60:
        title = "…" + title[-59:]
    if expl.model_name:
        title += f"  ·  {expl.model_name}"
    top = "   ".join(f"{i}. {d['name']} {d['prob']:.3f}" for i, d in enumerate(expl.topk(5), 1))
    view_note = f", view {v + 1} of {expl.num_views}" if expl.num_views > 1 else ""
    lines = [f"explained: {name}  (p = {float(expl.probs[v, target]):.3f}{view_note})", f"top-5: {top}"]
    footer = ["Grad-CAM: ReLU of the last backbone stage's maps weighted by the mean gradient of the class "
              "logit; scaled to the clip's maximum.",
              "Bars: probability lost when the frame is replaced by its neighbour (t-1; frame 0 by frame 1)."]
    if expl.tsa is not None:
        footer.append("TSA: mean softmax weight each position of frame t receives from the affinity of "
                      "frames t-1 and t-2 (frames 0 and 1 repeat frame 0).")
    t_head = max(expl.feature_frames) + 1
    if t_head < expl.num_segments:
        footer.append(f"3-D backbone: {t_head} feature frame(s) for {expl.num_segments} sampled frames; "
                      f"frame t shows feature frame floor(t*{t_head}/{expl.num_segments}).")
    return render_sheet(title=title, lines=lines, frame_labels=_frame_labels(expl, v), rows=rows,
                        bars=bars, footer=footer)


def _video_frames(expl: Explanation, view: int) -> np.ndarray:
    """uint8 (T, H, W, 3) video frames: frame | Grad-CAM | TSA side by side under a caption."""
    from tcpnet.viz import caption, even_size, hstack

    panels = _panels(expl, view)
    labels = _frame_labels(expl, view)
    out = []
    for t in range(expl.num_segments):
        row = hstack([panels[k][t] for k in ("frames", "gradcam", "tsa") if k in panels])
        text = f"{labels[t]}  drop {float(expl.importance[view, t]):+.2g}"
        if expl.tca is not None:
            text += f"  TCA {float(expl.tca[view, t]):.4f}"
        out.append(caption(row, text))
    return even_size(np.stack(out))


def write_explanation(expl: Explanation, out_dir: Union[str, Path], stem: Optional[str] = None, *,
                      mp4: bool = True, fps: int = 2, view: Optional[int] = None) -> Dict[str, Path]:
    """Write ``<stem>.png`` (contact sheet) and ``<stem>.mp4`` (H.264, one frame per sampled frame
    at ``fps``) into ``out_dir``; returns their paths (keys ``sheet``, ``mp4``)."""
    from tcpnet.data.writer import write_video
    from tcpnet.viz import to_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or (Path(expl.video).stem if expl.video else "clip")
    v = expl.best_view() if view is None else int(view)
    files = {"sheet": out / f"{stem}.png"}
    files["sheet"].write_bytes(to_png(render_explanation(expl, v), colors=SHEET_COLORS))
    if mp4:
        files["mp4"] = write_video(out / f"{stem}.mp4", _video_frames(expl, v), fps=fps, crf=18,
                                   gop=expl.num_segments)
    return files


def explain_videos(model: nn.Module, videos: Sequence[Union[str, Path]], out_dir: Union[str, Path], *,
                   views: str = "1x1", class_names: Optional[Sequence[str]] = None, mp4: bool = True,
                   activation: Optional[str] = None) -> List[Dict[str, Any]]:
    """Explain each video and write its sheet and MP4 into ``out_dir`` (``<stem>.png``/``.mp4``,
    a numbered stem when two videos share one). Returns one dict per video, in order:
    :meth:`Explanation.to_dict` plus ``files``, or ``{"video", "error"}`` when it cannot be read."""
    from tcpnet.data.errors import DecodeError

    results: List[Dict[str, Any]] = []
    used: Dict[str, int] = {}
    for video in videos:
        try:
            expl = explain_video(model, video, views=views, class_names=class_names, activation=activation)
        except (DecodeError, OSError) as e:
            msg = str(e) if isinstance(e, DecodeError) else f"{video}: {e}"
            logger.debug("cannot explain %s: %s", video, msg)
            results.append({"video": str(video), "error": msg})
            continue
        stem = Path(video).stem or "video"
        n = used.get(stem, 0)
        used[stem] = n + 1
        files = write_explanation(expl, out_dir, stem if n == 0 else f"{stem}_{n}", mp4=mp4)
        results.append({**expl.to_dict(), "files": {k: str(p) for k, p in files.items()}})
    return results
