"""The evaluation report as a reader gets it: a browser opens the file offline and paints its images."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from arm.evaluate.report import render_report
from arm.evaluate.samples import Samples, summarise

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def _report(tmp_path):
    rng = np.random.default_rng(0)
    s = Samples()
    for i in range(4):
        image = np.full((64, 64, 3), 255, np.uint8)
        image[16:48, 16:48] = rng.integers(0, 255, 3)         # a coloured square on white
        s.add("gen/acc", "single", i % 2, f"r{i // 2}#{i % 2}")
        s.generation.append({"prompt": f"prompt {i}", "image": image, "passed": bool(i % 2)})
    path = tmp_path / "report.html"
    path.write_text(render_report({"test": (summarise(s), s)}, title="arm evaluation", meta={"model": "m"}))
    return path


@pytest.mark.skipif(BROWSER is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_report_opens_in_headless_chromium(tmp_path):
    path = _report(tmp_path)
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=900,700"]
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "arm evaluation" in dom and dom.count("<img") == path.read_text().count("<img") == 4
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # The squares were painted: strongly coloured pixels, which text and table borders do not have.
    saturation = pixels.max(axis=2).astype(int) - pixels.min(axis=2)
    assert (saturation > 60).sum() > 4 * 20 * 20


def test_the_report_is_self_contained(tmp_path):
    page = _report(tmp_path).read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page and 'src="//' not in page
