"""One self-contained HTML page summarising a folder of results.

Usage::

    summary = write_report(Path("output"))          # -> output/report.html
    print(summary.images, summary.faces, summary.errors)

The page needs no network and no other file to show: CSS and SVG charts are inline and each
annotated image is embedded as a small JPEG thumbnail (a data URI). Only the links to the
full-size annotated images and to the JSON files point at the files next to it. No scripts.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from .annotate import ANNOTATED_SUFFIX, annotated_path, gender_colour, label_text
from .results import write_atomic

__all__ = ["ReportSummary", "ResultFile", "find_results", "render_report", "write_report"]

THUMBNAIL_SIDE = 320


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + bytes(rgb).hex()


# The colours of the labels drawn on the images.
_GENDER_COLOURS = {gender: _hex(gender_colour(gender)) for gender in ("Female", "Male")}
_OTHER_COLOUR = _hex(gender_colour(""))


@dataclass(frozen=True, slots=True)
class ResultFile:
    """One result JSON, what it holds, and its annotated image if there is one."""

    path: Path
    data: dict[str, Any]
    annotated: Path | None

    @property
    def faces(self) -> list[dict[str, Any]]:
        faces = self.data.get("faces")
        return [f for f in faces if isinstance(f, dict)] if isinstance(faces, list) else []

    @property
    def error(self) -> dict[str, Any] | None:
        error = self.data.get("error")
        return error if isinstance(error, dict) else None


@dataclass(frozen=True, slots=True)
class ReportSummary:
    path: Path
    images: int
    faces: int
    errors: int


def find_results(folder: Path) -> list[ResultFile]:
    """Every result JSON under `folder` (sub-folders too; hidden files and other JSON skipped)."""
    results = []
    for path in sorted(folder.rglob("*.json"), key=lambda p: _natural(p.relative_to(folder).as_posix())):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not (isinstance(data, dict) and "image_id" in data and isinstance(data.get("faces"), list)):
            continue
        annotated = annotated_path(path)
        results.append(ResultFile(path, data, annotated if annotated.is_file() else None))
    return results


def write_report(folder: Path, output: Path | None = None, title: str | None = None) -> ReportSummary:
    """Write the report of the results in `folder` to `output` (default `folder/report.html`)."""
    output = output or folder / "report.html"
    results = find_results(folder)
    text = render_report(results, output.parent, title or f"Face analysis: {folder.resolve().name}")
    write_atomic(output, lambda f: f.write(text.encode("utf-8")))
    return ReportSummary(
        path=output,
        images=len(results),
        faces=sum(len(r.faces) for r in results),
        errors=sum(r.error is not None for r in results),
    )


def render_report(results: Sequence[ResultFile], link_base: Path, title: str) -> str:
    """The HTML page; links to files are relative to `link_base` (the page's folder)."""
    faces = [face for r in results for face in r.faces]
    errors = [r for r in results if r.error is not None]
    analysed = [r for r in results if r.error is None]
    without_faces = sum(not r.faces for r in analysed)
    e = _escape
    counts = "".join(
        f'<div class="count"><b id="{key}">{value}</b><span>{e(label)}</span></div>'
        for key, value, label in (
            ("count-images", len(results), "images"),
            ("count-faces", len(faces), "faces"),
            ("count-errors", len(errors), "errors"),
            ("count-no-faces", without_faces, "images without faces"),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{e(title)}</h1>
<p class="sub">{len(results)} results · made {datetime.now().strftime("%Y-%m-%d %H:%M")}</p>
</header>
<main>
<section class="counts" aria-label="Counts">{counts}</section>
<section class="charts">
<figure><figcaption>Ages of the faces (by decade)</figcaption>{_age_chart(faces)}</figure>
<figure><figcaption>Gender split</figcaption>{_gender_chart(faces)}</figure>
</section>
{_errors_section(errors, link_base)}
<section id="images">
<h2>Images <small>({len(analysed)})</small></h2>
<p class="hint">Click a picture to open it full size; each lists its faces as labelled on it
(gender and its confidence · age decade and its confidence).</p>
<div class="grid">
{"".join(_card(r, link_base) for r in analysed)}
</div>
</section>
</main>
</body>
</html>
"""


# Nothing may load from anywhere: the page shows only what it embeds.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
:root { --ink: #1d2330; --muted: #5d6675; --line: #dde1e8; --card: #fff; --bg: #f4f5f8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); background: var(--bg); }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
h1 { margin: 0; font-size: 22px; font-weight: 600; overflow-wrap: anywhere; }
.sub { margin: 4px 0 0; color: #b8c0cf; font-size: 13px; }
main { padding: 20px 28px 40px; max-width: 1400px; margin: 0 auto; }
h2 { font-size: 18px; margin: 28px 0 10px; }
h2 small { color: var(--muted); font-weight: normal; }
.counts { display: flex; flex-wrap: wrap; gap: 12px; }
.count { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 18px;
  min-width: 130px; }
.count b { display: block; font-size: 28px; line-height: 1.1; }
.count span { color: var(--muted); font-size: 13px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px;
  margin-top: 12px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 16px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 12px system-ui, "DejaVu Sans", sans-serif; fill: var(--ink); }
.empty { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; width: 100%; background: var(--card); border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef0f4; font-size: 13px; }
td.file { overflow-wrap: anywhere; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; background: #fbe9e9; color: #9a1c1c;
  padding: 1px 5px; border-radius: 4px; }
.hint { color: var(--muted); font-size: 13px; margin: -4px 0 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
  display: flex; flex-direction: column; }
.card > a.picture { display: flex; align-items: center; justify-content: center; background: #2a303c;
  aspect-ratio: 4 / 3; }
.card img { max-width: 100%; max-height: 100%; object-fit: contain; }
.card .missing { color: #b8c0cf; font-size: 13px; padding: 12px; text-align: center; }
.card .body { padding: 8px 12px 10px; }
.card h3 { margin: 0; font-size: 14px; overflow-wrap: anywhere; }
.meta { color: var(--muted); font-size: 13px; margin: 2px 0 6px; }
ol.faces { list-style: none; margin: 0 0 6px; padding: 0; display: flex; flex-wrap: wrap; gap: 4px; }
ol.faces li { font-size: 12px; padding: 1px 7px; border-radius: 10px; background: var(--chip); color: #101010;
  white-space: nowrap; }
details { font-size: 13px; }
summary { cursor: pointer; color: var(--muted); }
details pre { max-height: 320px; overflow: auto; background: #f6f7f9; border: 1px solid var(--line);
  padding: 8px; font: 11px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre; }
a { color: #2456b3; }
"""


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _natural(text: str) -> list[Any]:
    """Sort key: `img2` before `img10`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _href(target: Path, base: Path) -> str:
    """A relative URL from the page's folder to `target`, escaped for an attribute."""
    try:
        url = quote(Path(os.path.relpath(target, base)).as_posix())
    except ValueError:  # another drive (Windows): an absolute file URL
        url = target.resolve().as_uri()
    return _escape(url)


def _thumbnail(path: Path) -> tuple[str, int, int] | None:
    """A JPEG data URI of the image scaled to THUMBNAIL_SIDE, with its size; None if unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a reduced scale
            small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=70, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/jpeg;base64,{data}", small.width, small.height


def _face_chip(face: dict[str, Any]) -> str:
    gender = str(face.get("gender", "?"))
    try:
        text = label_text(
            gender, float(face["gender_confidence"]), str(face["age"]), float(face["age_confidence"])
        )
    except (KeyError, TypeError, ValueError):
        text = gender
    colour = _GENDER_COLOURS.get(gender, _OTHER_COLOUR)
    return f'<li class="face" style="--chip: {colour}">{_escape(text)}</li>'


def _card(result: ResultFile, base: Path) -> str:
    data, faces = result.data, result.faces
    image_id = str(data.get("image_id", result.path.stem))
    thumbnail = None if result.annotated is None else _thumbnail(result.annotated)
    if result.annotated is not None and thumbnail is not None:
        uri, width, height = thumbnail
        picture = (
            f'<a class="picture" href="{_href(result.annotated, base)}" target="_blank" '
            f'title="Open the annotated image full size">'
            f'<img src="{uri}" width="{width}" height="{height}" alt="{_escape(image_id)}, annotated"></a>'
        )
    else:
        why = (
            "annotated image unreadable"
            if result.annotated is not None
            else f"no annotated image (run analyze with --annotate to get {ANNOTATED_SUFFIX})"
        )
        picture = f'<div class="picture missing">{_escape(why)}</div>'
    size = f"{data.get('width')}&times;{data.get('height')} px · " if data.get("width") else ""
    count = f"{len(faces)} face" + ("" if len(faces) == 1 else "s")
    chips = f'<ol class="faces">{"".join(_face_chip(f) for f in faces)}</ol>' if faces else ""
    pretty = json.dumps(data, indent=2, ensure_ascii=False)
    return (
        f'<article class="card" data-faces="{len(faces)}">{picture}<div class="body">'
        f'<h3 title="{_escape(image_id)}">{_escape(image_id)}</h3>'
        f'<p class="meta">{size}<span class="face-count">{count}</span></p>{chips}'
        f"<details><summary>Result (JSON)</summary><pre>{_escape(pretty)}</pre>"
        f'<a href="{_href(result.path, base)}">{_escape(result.path.name)}</a></details>'
        f"</div></article>\n"
    )


def _errors_section(errors: Sequence[ResultFile], base: Path) -> str:
    if not errors:
        return '<section id="errors"><h2>Errors</h2><p class="empty">Every image was analysed.</p></section>'
    rows = "".join(
        f'<tr class="error-row"><td class="file">{_escape(r.data.get("image_id", r.path.name))}</td>'
        f"<td><code>{_escape((r.error or {}).get('code', '?'))}</code></td>"
        f"<td>{_escape((r.error or {}).get('message', ''))}</td>"
        f'<td><a href="{_href(r.path, base)}">{_escape(r.path.name)}</a></td></tr>'
        for r in errors
    )
    return (
        f'<section id="errors"><h2>Images with errors <small>({len(errors)})</small></h2>'
        f"<table><thead><tr><th>Image</th><th>Error</th><th>Why</th><th>Result</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _decade(face: dict[str, Any]) -> int | None:
    """The decade's lower bound, from `age` ("20-30") or else `age_years`."""
    match = re.match(r"^(\d+)-\d+$", str(face.get("age", "")))
    if match:
        return int(match.group(1)) // 10 * 10
    years = face.get("age_years")
    return int(years // 10 * 10) if isinstance(years, (int, float)) and years >= 0 else None


def _age_chart(faces: Sequence[dict[str, Any]]) -> str:
    decades = Counter(d for d in map(_decade, faces) if d is not None)
    if not decades:
        return '<p class="empty">No faces.</p>'
    bins = list(range(0, max(70, *decades) + 10, 10))  # the same axis for every report: 0-9 to 70-79+
    top = max(decades.values())
    width, height, bottom, top_pad = 480, 180, 26, 18
    slot = width / len(bins)
    bar = slot * 0.72
    scale = (height - bottom - top_pad) / top
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="Histogram of ages by decade">',
        f'<line x1="0" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" stroke="#9aa3b2"/>',
    ]
    for i, low in enumerate(bins):
        n = decades.get(low, 0)
        x = i * slot + (slot - bar) / 2
        h = n * scale
        y = height - bottom - h
        label = f"{low}&ndash;{low + 9}"
        parts.append(
            f'<g class="age-bar" data-decade="{low}" data-count="{n}"><title>{label}: {n} faces</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" rx="2" fill="#6b8fd6"/>'
            f'<text x="{x + bar / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{n if n else ""}</text>'
            f'<text x="{x + bar / 2:.1f}" y="{height - 8}" text-anchor="middle">{label}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _gender_chart(faces: Sequence[dict[str, Any]]) -> str:
    genders = Counter(str(f.get("gender", "unknown")) for f in faces)
    if not genders:
        return '<p class="empty">No faces.</p>'
    total = sum(genders.values())
    order = sorted(genders, key=lambda g: (g not in _GENDER_COLOURS, g))
    width, bar_height, legend_row = 480, 34, 22
    height = bar_height + 16 + legend_row * len(order)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="Gender split">']
    x = 0.0
    for gender in order:
        n = genders[gender]
        w = width * n / total
        colour = _GENDER_COLOURS.get(gender, _OTHER_COLOUR)
        share = f"{n / total:.0%}"
        parts.append(
            f'<g class="gender-bar" data-gender="{_escape(gender)}" data-count="{n}">'
            f"<title>{_escape(gender)}: {n} faces ({share})</title>"
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{bar_height}" fill="{colour}"/>'
            + (
                f'<text x="{x + w / 2:.1f}" y="{bar_height / 2 + 4:.1f}" text-anchor="middle">{share}</text>'
                if w >= 40
                else ""
            )
            + "</g>"
        )
        x += w
    for i, gender in enumerate(order):
        y = bar_height + 16 + i * legend_row
        colour = _GENDER_COLOURS.get(gender, _OTHER_COLOUR)
        n = genders[gender]
        parts.append(
            f'<rect x="0" y="{y}" width="14" height="14" rx="2" fill="{colour}"/>'
            f'<text x="22" y="{y + 11}">{_escape(gender)}: {n} face{"" if n == 1 else "s"} '
            f"({n / total:.0%})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
