"""One self-contained HTML report per analysis run: every figure embedded as base64, viewable without a server."""

from __future__ import annotations

import base64
import html
import mimetypes
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cnnlab.io.files import write_text

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { display: inline-block; margin: .6em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; max-width: 60em; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
td, th { border: 1px solid #ccc; padding: .2em .5em; text-align: right; }
.meta { color: #666; font-size: .85em; }
"""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    key: str
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[list[str], list[list]]] = field(default_factory=list)


class Report:
    """Collects sections (one per analysis) of figures, captions, text and small tables; :meth:`write` renders it."""

    def __init__(self, title: str, meta: dict | None = None):
        self.title = title
        self.meta = dict(meta or {})
        self.sections: list[Section] = []

    def section(self, key: str, title: str, text: str = "") -> Section:
        sec = Section(key, title, text)
        self.sections.append(sec)
        return sec

    @staticmethod
    def data_uri(path: str | Path) -> str:
        path = Path(path)
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    def render(self) -> str:
        esc = html.escape
        parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(self.title)}</title>",
                 f"<style>{_CSS}</style></head><body><h1>{esc(self.title)}</h1>"]
        meta = {**self.meta, "written": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
        parts.append("<p class='meta'>" + "<br>".join(f"<b>{esc(str(k))}</b>: {esc(str(v))}" for k, v in meta.items()) + "</p>")
        parts.append("<nav><ul>" + "".join(f"<li><a href='#{esc(s.key)}'>{esc(s.title)}</a></li>" for s in self.sections) + "</ul></nav>")
        for s in self.sections:
            parts.append(f"<section id='{esc(s.key)}' data-analysis='{esc(s.key)}'><h2>{esc(s.title)}</h2>")
            if s.text:
                parts.append(f"<p>{esc(s.text)}</p>")
            for fig in s.figures:
                parts.append(f"<figure><img src='{self.data_uri(fig.path)}' alt='{esc(fig.path.stem)}'>"
                             f"<figcaption>{esc(fig.caption)}</figcaption></figure>")
            for header, rows in s.tables:
                parts.append("<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr>")
                parts.extend("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
                parts.append("</table>")
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | Path) -> Path:
        return write_text(path, self.render())


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
