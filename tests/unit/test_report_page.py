"""The HTML report, read as text (the browser test in tests/e2e looks at it rendered)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from face_analysis.report import find_results, write_report

FACE = {
    "bbox": [10, 10, 50, 60],
    "confidence": 0.9,
    "landmarks": None,
    "age": "30-40",
    "age_years": 33.0,
    "age_confidence": 0.25,
    "gender": "Male",
    "gender_confidence": 0.7,
}


def result(image_id: str, faces: int = 1, error: dict[str, str] | None = None) -> str:
    return json.dumps(
        {"image_id": image_id, "width": 80, "height": 80, "faces": [FACE] * faces, "error": error}
    )


def test_report_counts_escapes_and_embeds(tmp_path: Path) -> None:
    nasty = '<img src=x onerror=alert(1)> & "q"'
    (tmp_path / "a.json").write_text(result(nasty + ".jpg", faces=2), encoding="utf-8")
    Image.new("RGB", (80, 80), "white").save(tmp_path / "a.annotated.jpg")
    (tmp_path / "b.json").write_text(
        result("b.jpg", 0, {"code": "not_an_image", "message": "<oops>"}), "utf-8"
    )
    (tmp_path / "c.json").write_text(result("c.jpg", faces=1), encoding="utf-8")  # no annotated image
    (tmp_path / "settings.json").write_text('{"something": "else"}', encoding="utf-8")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")

    summary = write_report(tmp_path)

    assert (summary.images, summary.faces, summary.errors) == (3, 3, 1)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert nasty not in page and "<oops>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot;.jpg" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 1
    assert 'href="a.annotated.jpg"' in page and "no annotated image" in page
    assert re.search(r'id="count-faces">3<', page)


def test_links_are_relative_to_where_the_report_is_written(tmp_path: Path) -> None:
    results = tmp_path / "results" / "sub dir"
    results.mkdir(parents=True)
    (results / "p#1.json").write_text(result("p#1.jpg"), encoding="utf-8")
    Image.new("RGB", (80, 80), "white").save(results / "p#1.annotated.jpg")
    write_report(tmp_path / "results", tmp_path / "elsewhere" / "r.html")
    page = (tmp_path / "elsewhere" / "r.html").read_text(encoding="utf-8")
    assert 'href="../results/sub%20dir/p%231.annotated.jpg"' in page
    assert [r.path.name for r in find_results(tmp_path / "results")] == ["p#1.json"]
