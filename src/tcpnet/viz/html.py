"""Self-contained HTML: a page with its CSS inline, tables, in-cell bars and embedded images.

No JavaScript, no external fonts, styles or images: the file opens offline and can be mailed.
The CSS is responsive (fluid images, tables that scroll sideways on a phone)."""
from __future__ import annotations

from html import escape
from typing import Iterable, Optional, Sequence

from tcpnet.viz.encode import data_uri

__all__ = ["escape", "page", "table", "image", "bar", "section"]

CSS = """
:root { --fg: #1d2329; --muted: #5b6570; --line: #d9dee3; --accent: #2f6db5; --bad: #c44e52; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 12px 16px 48px; color: var(--fg);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 1.45em; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.15em; margin: 1.6em 0 0.5em; padding-bottom: 0.2em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1em; margin: 0.2em 0; word-break: break-all; }
p.muted, .muted { color: var(--muted); font-size: 0.9em; }
img { max-width: 100%; height: auto; display: block; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: 0.92em; min-width: 280px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { position: relative; min-width: 120px; width: 40%; }
.bar span { display: block; height: 0.9em; background: var(--accent); border-radius: 2px; }
.bar span.low { background: var(--bad); }
.cards { display: grid; gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; word-break: break-all; }
@media (max-width: 640px) {
  body { font-size: 14px; padding: 8px 8px 32px; }
  th, td { padding: 3px 6px; }
  .bar { min-width: 70px; }
}
"""


def page(title: str, body: str, lang: str = "en") -> str:
    """A complete HTML5 document with the inline stylesheet."""
    return (f"<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def section(title: str, body: str, note: Optional[str] = None) -> str:
    """An ``<h2>`` section, with an optional muted note under the heading."""
    extra = f"<p class=\"muted\">{escape(note)}</p>\n" if note else ""
    return f"<section>\n<h2>{escape(title)}</h2>\n{extra}{body}\n</section>\n"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = (),
          raw: Sequence[int] = (), bars: Sequence[int] = ()) -> str:
    """A scrollable table. Cells are escaped except in the ``raw`` and ``bars`` columns (already
    HTML, e.g. from :func:`bar`); ``numeric`` columns are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = str(cell) if i in raw or i in bars else escape(str(cell))
            cls = " class=\"num\"" if i in numeric else " class=\"bar\"" if i in bars else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"scroll\"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody></table></div>\n")


def image(data: bytes, alt: str, mime: str = "image/png", width: Optional[int] = None) -> str:
    """An ``<img>`` with the image embedded as a base64 ``data:`` URI."""
    w = f" width=\"{int(width)}\"" if width else ""
    return f"<img src=\"{data_uri(data, mime)}\" alt=\"{escape(alt)}\"{w} loading=\"lazy\">"


def bar(fraction: float, low: bool = False) -> str:
    """An in-cell horizontal bar of ``fraction`` (0-1) of the cell width (put in a ``raw`` column)."""
    pct = max(0.0, min(1.0, float(fraction))) * 100.0
    cls = " class=\"low\"" if low else ""
    return f"<span{cls} style=\"width:{pct:.1f}%\"></span>"
