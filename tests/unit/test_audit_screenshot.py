"""The HTML audit report as a browser shows it: Debian's chromium, headless, one screenshot.

chromium is a controller package the harness installs (tools/kflab/setup.py APT_COMMANDS).
The screenshot is decoded with Pillow (requirements-dev.txt) and its colours counted: the matrix
must show green and red cells in proportion to the checks, on a page that is not blank.
"""

import io
import shutil
import subprocess
from pathlib import Path

import test_audit
from ansible_collections.kernelfence.isolation.plugins.module_utils.audit import html_report
from PIL import Image

GREEN, RED = (0x2D, 0xA4, 0x4E), (0xCF, 0x22, 0x2E)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB value of every pixel, row by row (decoded by Pillow)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG", image.format
        rgb = image.convert("RGB")
        width, height = rgb.size
        raw = rgb.tobytes()
    return width, height, [raw[i:i + 3] for i in range(0, len(raw), 3)]


def screenshot(page: str, tmp_path: Path) -> Path:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run ./kf setup (tools/kflab/setup.py installs it)"
    (tmp_path / "report.html").write_text(page)
    profile = tmp_path / "profile"
    profile.mkdir()
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    "--window-size=1400,900", f"--screenshot={shot}",
                    (tmp_path / "report.html").as_uri()],
                   check=True, timeout=120, capture_output=True)
    return shot


def test_report_renders_green_and_red_matrix(tmp_path):
    evidences = [test_audit.evidence("kf12", "seccomp"), test_audit.evidence("kf13", "ambient")]
    page = html_report(evidences)
    width, height, pixels = decode_png(screenshot(page, tmp_path).read_bytes())
    assert (width, height) == (1400, 900)
    green = sum(1 for p in pixels if p == bytes(GREEN))
    red = sum(1 for p in pixels if p == bytes(RED))
    white = sum(1 for p in pixels if p == b"\xff\xff\xff")
    checks = [c for e in evidences for c in e["checks"]]
    attacks = [a for e in evidences for a in e["attacks"]]
    passed = sum(c["passed"] for c in checks) + sum(a["passed"] for a in attacks)
    failed = len(checks) + len(attacks) - passed
    # Each cell is at least ~20x20 px of its colour (glyphs aside): the counts follow the checks.
    assert green > 250 * passed, (green, passed)
    assert red > 250 * failed, (red, failed)
    assert white < 0.97 * len(pixels), "page is blank"
    # A failing matrix has more red than green here; the all-green report below flips it.
    assert red > green


def test_all_green_report_has_no_red_cells(tmp_path):
    evidence = test_audit.evidence("kf12", "seccomp")
    evidence["checks"] = [dict(c, passed=True) for c in evidence["checks"]]
    evidence["attacks"] = [dict(a, passed=True) for a in evidence["attacks"]]
    _w, _h, pixels = decode_png(screenshot(html_report([evidence]), tmp_path).read_bytes())
    assert sum(1 for p in pixels if p == bytes(RED)) == 0
    assert sum(1 for p in pixels if p == bytes(GREEN)) > 250 * len(evidence["checks"])
