"""A self-contained HTML report of a fit: metrics, coefficients and the plots inlined."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

__all__ = ["render_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}h1{font-size:1.6em}
.muted{color:#777}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, float):
        return f"{v:.6g}"
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def render_report(
    title: str,
    info: list[tuple[str, Any]],
    metrics: dict[str, dict[str, float | None]],
    coef_headers: list[str] | None,
    coef_rows: list[list[Any]] | None,
    images: list[tuple[Path, str]],
    sections: list[tuple[str, str, list[str], list[list[Any]]]] | None = None,
) -> str:
    """The report as one HTML string (images embedded as data URIs).

    ``sections`` adds, after the coefficients, tables as ``(heading, note, headers, rows)``
    (the note, a paragraph above the table, may be empty).
    """
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _table(["", "value"], [[k, v] for k, v in info]),
        "<h2>Test metrics</h2>",
        _table(
            ["model", "R2", "MSE", "RMSE", "MAE"],
            [[name, m["r2"], m["mse"], m["rmse"], m["mae"]] for name, m in metrics.items()],
        ),
    ]
    if coef_headers and coef_rows:
        parts += ["<h2>Coefficients</h2>", _table(coef_headers, coef_rows)]
    for heading, note, headers, rows in sections or []:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            parts.append(f"<p>{html.escape(note)}</p>")
        parts.append(_table(headers, rows))
    parts.append("<h2>Plots</h2>")
    parts += [_img(p, alt) for p, alt in images]
    parts.append("<p class='muted'>Written by regtorch.</p></body></html>")
    return "\n".join(parts)
