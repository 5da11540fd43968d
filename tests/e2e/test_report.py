"""`analyze --annotate` then `report`, looked at as a person would: in a real browser.

The report is opened in headless Chromium (Debian's `chromium`), driven over the DevTools
protocol through a pipe (`--remote-debugging-pipe`: stdlib only, no websocket client), which
lets the test read the page as rendered, collect console errors and take a screenshot.
Skipped, with the reason, when Chromium is not installed; CI installs it (`.ci/run`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(sys.executable).parent / "face-analysis"
CHROMIUM = next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)
WEIRD_NAME = "<b>bold & \"quotes\" 'too'.jpg"  # must show literally, never as markup


def run(*args: object) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return completed


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, group_image: Any, astronaut_path: Path) -> Path:
    """A results folder: a group photo, the astronaut (also under a name full of HTML), an
    image without faces and a broken file (in `inputs` next to it), analysed with --annotate."""
    base = tmp_path_factory.mktemp("report")
    inputs, output = base / "inputs", base / "results"
    inputs.mkdir()
    shutil.copy(group_image.path, inputs / "group.jpg")
    shutil.copy(astronaut_path, inputs / "astronaut.jpg")
    shutil.copy(astronaut_path, inputs / WEIRD_NAME)
    Image.new("RGB", (320, 200), (90, 140, 200)).save(inputs / "sky.png")
    (inputs / "broken.jpg").write_bytes(b"this is text, not a photo\n")
    analysed = run("analyze", inputs, "-o", output, "--annotate")
    assert analysed.returncode == 1, analysed.stderr  # the broken file
    return output


def json_results(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


def test_annotate_writes_an_image_beside_each_analysed_result(results: Path) -> None:
    found = json_results(results)
    assert len(found) == 5
    for name, data in found.items():
        annotated = results / name.replace(".json", ".annotated.jpg")
        if data["error"] is not None:
            assert not annotated.exists(), f"{annotated} drawn for an error result"
            continue
        with Image.open(annotated) as image:
            assert image.format == "JPEG"
            assert image.size == (data["width"], data["height"])
    assert sum(len(d["faces"]) for d in found.values()) >= 6  # 4 in the group, 1 in each astronaut
    # Only the boxes, landmarks and labels differ from the input: the photo is still there.
    with Image.open(results / "sky.annotated.jpg") as sky:
        assert np.abs(np.asarray(sky, np.int16) - (90, 140, 200)).max() < 12


def test_a_missing_annotated_image_is_drawn_again_and_nothing_else(results: Path) -> None:
    (results / "sky.annotated.jpg").unlink()
    again = run("analyze", results.parent / "inputs", "-o", results, "--annotate")
    # Only sky is analysed again: the others are up to date, the broken file's error result too.
    assert again.returncode == 0, again.stderr
    assert "1 images analysed" in again.stderr and "4 up to date" in again.stderr, again.stderr
    assert (results / "sky.annotated.jpg").is_file()


_TRAMPOLINE = """
import fcntl, os, sys
given = [int(fd) for fd in sys.argv[1:3]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in given]  # out of the way of 3 and 4
os.dup2(high[0], 3)
os.dup2(high[1], 4)
for fd in set(given + high) - {3, 4}:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe: JSON messages ending in NUL."""

    def __init__(self, executable: str, profile: Path, window: tuple[int, int]) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # The browser reads commands on fd 3 and writes replies and events on fd 4: a tiny Python
        # trampoline puts the pipe ends there (a POSIX shell cannot name fds above 9).
        self._log = (profile / "stderr.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TRAMPOLINE,
                str(to_browser_read),
                str(from_browser_write),
                executable,
                *flags,
            ],
            pass_fds=(to_browser_read, from_browser_write),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self._receive(lambda m: m.get("id") == self._next_id, timeout)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply.get("result", {})

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._receive(lambda m: m.get("method") == method, timeout)

    def _receive(self, wanted: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return dict(message)
            left = deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, f"Chromium exited: {self._log.name}"
                self._buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; CI installs it)")
    devtools = DevTools(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"), (1280, 2000))
    try:
        yield devtools
    finally:
        devtools.close()


PAGE_FACTS = """(() => {
  const text = (selector) => document.querySelector(selector)?.textContent.trim();
  return {
    title: document.title,
    images: text('#count-images'),
    faces: text('#count-faces'),
    errors: text('#count-errors'),
    faceChips: document.querySelectorAll('#images li.face').length,
    cards: [...document.querySelectorAll('.card')].map((card) => ({
      name: card.querySelector('h3').textContent,
      faces: Number(card.dataset.faces),
      chips: card.querySelectorAll('li.face').length,
      count: card.querySelector('.face-count').textContent,
      picture: card.querySelector('a.picture')?.href ?? null,
      json: card.querySelector('details a').href,
      jsonShown: card.querySelector('details pre').textContent,
    })),
    errorRows: [...document.querySelectorAll('#errors tr.error-row')].map((row) => row.innerText),
    imagesLoaded: [...document.images].map((img) => img.complete && img.naturalWidth > 0),
    ageBars: [...document.querySelectorAll('.age-bar')].map((bar) => Number(bar.dataset.count)),
    genderBars: Object.fromEntries([...document.querySelectorAll('.gender-bar')].map(
      (bar) => [bar.dataset.gender, Number(bar.dataset.count)])),
    injected: document.querySelectorAll('h3 b, td b').length,
    scriptCount: document.scripts.length,
    width: document.documentElement.scrollWidth,
  };
})()"""


def test_report_in_chromium(results: Path, browser: DevTools) -> None:
    reported = run("report", results)
    assert reported.returncode == 0, reported.stderr
    found = json_results(results)
    faces = sum(len(d["faces"]) for d in found.values())
    assert f"{len(found)} images, {faces} faces, 1 errors" in reported.stderr, reported.stderr
    report = results / "report.html"
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.send(f"{domain}.enable", session)
    browser.send("Page.navigate", session, url=report.as_uri())
    browser.wait_for("Page.loadEventFired")
    facts = browser.send(
        "Runtime.evaluate", session, expression=PAGE_FACTS, returnByValue=True, awaitPromise=True
    )["result"]["value"]
    shot = base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"])
    screenshot = results / "report.png"
    screenshot.write_bytes(shot)

    problems = [
        event["params"]
        for event in browser.events
        if event.get("sessionId") == session
        and (
            event["method"] == "Runtime.exceptionThrown"
            or (
                event["method"] == "Runtime.consoleAPICalled"
                and event["params"]["type"] in ("error", "assert")
            )
            or (event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error")
        )
    ]
    assert problems == [], f"console errors in the report: {problems}"

    errors = {d["image_id"]: d["error"] for d in found.values() if d["error"] is not None}
    analysed = {d["image_id"]: d for d in found.values() if d["error"] is None}
    assert (facts["images"], facts["faces"], facts["errors"]) == (
        str(len(found)),
        str(faces),
        str(len(errors)),
    )
    assert facts["faceChips"] == faces, "every face is listed under its picture"
    assert sorted(card["name"] for card in facts["cards"]) == sorted(analysed)
    for card in facts["cards"]:
        data = analysed[card["name"]]
        assert card["faces"] == card["chips"] == len(data["faces"]), card["name"]
        assert card["count"].startswith(f"{len(data['faces'])} face"), card["count"]
        assert json.loads(card["jsonShown"]) == data, "the JSON shown is the result file"
        picture = Path(unquote(urlparse(card["picture"]).path))
        assert picture.is_file() and picture.name.endswith(".annotated.jpg"), picture
        assert Path(unquote(urlparse(card["json"]).path)).is_file()
    assert WEIRD_NAME in {card["name"] for card in facts["cards"]}
    assert facts["injected"] == 0 and facts["scriptCount"] == 0
    assert len(facts["errorRows"]) == len(errors) == 1
    assert "broken.jpg" in facts["errorRows"][0] and "not_an_image" in facts["errorRows"][0]
    assert facts["imagesLoaded"] and all(facts["imagesLoaded"]), "every thumbnail decodes"
    assert sum(facts["ageBars"]) == faces
    assert sum(facts["genderBars"].values()) == faces
    assert facts["width"] <= 1280, "nothing overflows the window sideways"

    # The screenshot shows a page, not a blank or an error: a 1280-wide picture with ink on it.
    with Image.open(io.BytesIO(shot)) as image:
        assert image.width == 1280
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 20, f"the screenshot looks blank: {screenshot}"
    assert report.stat().st_size < 400_000, "thumbnails keep the page small"
