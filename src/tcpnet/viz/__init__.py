"""Pure rendering helpers (NumPy, Pillow, Matplotlib; no torch): heat-map overlays, frame layouts,
the explain contact sheet, image encoding and self-contained HTML. Used by
:mod:`tcpnet.apps.explain`, :mod:`tcpnet.apps.report` and :mod:`tcpnet.apps.timeline`."""
from tcpnet.viz.encode import data_uri, decode_image, to_jpeg, to_png
from tcpnet.viz.layout import caption, even_size, hstack, mosaic, upscale
from tcpnet.viz.overlay import colorize, overlay, resize_map
from tcpnet.viz.plots import confusion_summary, sorted_bars
from tcpnet.viz.sheet import BarRow, render_sheet
from tcpnet.viz.timeline import class_colors, render_timeline

__all__ = ["BarRow", "caption", "class_colors", "colorize", "confusion_summary", "data_uri", "decode_image", "even_size", "hstack",
           "mosaic", "overlay", "render_sheet", "render_timeline", "resize_map", "sorted_bars", "to_jpeg", "to_png", "upscale"]
