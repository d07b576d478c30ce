"""Self-contained HTML reports: inline PNG figures, plain tables, pluggable sections.

A report is a list of ``Section``s. Each part of vitsam that has something to show
(training, geometry, robustness, ...) provides a function that turns run directories
into a ``Section``; ``render`` joins them into one page that needs no network.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;color:#222;line-height:1.45}
h1{font-size:1.7rem;margin-bottom:.2rem} h2{font-size:1.3rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#666;font-size:.9rem} p.note{color:#444;font-size:.92rem;max-width:60rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.92rem}
th,td{padding:.3rem .7rem;border-bottom:1px solid #e5e5e5;text-align:right}
th{background:#f6f6f6} td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-weight:600;padding-bottom:.3rem}
.good{color:#137333;font-weight:600} .bad{color:#b3261e}
figure{margin:1rem 0;display:inline-block;vertical-align:top} figcaption{font-size:.85rem;color:#555;max-width:52rem}
img{max-width:100%}
"""


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)  # HTML fragments, in order

    def add(self, fragment: str) -> "Section":
        self.parts.append(fragment)
        return self

    def to_html(self) -> str:
        return f"<section><h2>{html.escape(self.title)}</h2>\n" + "\n".join(self.parts) + "</section>"


def paragraph(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def table(headers: Sequence[str], rows: Iterable[Sequence], caption: str = "") -> str:
    """Rows of cells; a cell is text/number or a (text, css_class) pair."""
    def cell(value, tag):
        css = ""
        if isinstance(value, tuple):
            value, css = value
            css = f' class="{css}"'
        if isinstance(value, float):
            value = f"{value:.4g}"
        return f"<{tag}{css}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell(h, "th") for h in headers)
    body = "\n".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def figure(fig, caption: str = "", dpi: int = 110) -> str:
    """A matplotlib figure as an inline PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">{cap}</figure>'


def render(title: str, sections: Sequence[Section], meta: str = "") -> str:
    body = "\n".join(s.to_html() for s in sections)
    meta_html = f'<p class="meta">{html.escape(meta)}</p>' if meta else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{meta_html}\n{body}\n</body></html>\n")


def write(path: str | Path, title: str, sections: Sequence[Section], meta: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render(title, sections, meta))
    tmp.replace(path)
    return path
