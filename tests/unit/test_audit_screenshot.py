"""The HTML audit report as a browser shows it: Debian's chromium, headless, one screenshot.

chromium is a controller package the harness installs (tools/kflab/setup.py APT_COMMANDS).
The screenshot is decoded with Pillow (requirements-dev.txt) and its colours counted: the matrix
must show green and red cells in proportion to the checks, on a page that is not blank. At
1000 px the layout is measured by chromium itself (a script added to a copy of the page, its
result read with --dump-dom): nothing scrolls sideways and no grid cell cuts its content.
"""

import html
import io
import json
import re
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


def screenshot(page: str, tmp_path: Path, width: int = 1400) -> Path:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run ./kf setup (tools/kflab/setup.py installs it)"
    (tmp_path / "report.html").write_text(page)
    profile = tmp_path / "profile"
    profile.mkdir()
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                    f"--window-size={width},900", f"--screenshot={shot}",
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
    # Honest green attack rows: blocked as expected (an entry that says passed while its
    # observed outcome is not the expected one is judged a failure).
    evidence["attacks"] = [dict(a, passed=True, observed=a["expected"])
                           for a in evidence["attacks"]]
    _w, _h, pixels = decode_png(screenshot(html_report([evidence]), tmp_path).read_bytes())
    assert sum(1 for p in pixels if p == bytes(RED)) == 0
    assert sum(1 for p in pixels if p == bytes(GREEN)) > 250 * len(evidence["checks"])


# Measured in the page by chromium itself (no pixel guessing): the window's width, how far the
# document scrolls sideways, each table's right edge, and every grid cell whose content is
# wider than the cell (cut or spilling) or whose text is smaller than 10 px, in every grid
# (the isolation properties and the resource limits).
MEASURE = """<script>
const out = {width: window.innerWidth, scroll: document.documentElement.scrollWidth,
             tables: [], cut: [], small: []};
document.querySelectorAll("table").forEach((t, i) => {
  out.tables.push({index: i, right: Math.ceil(t.getBoundingClientRect().right)});
});
document.querySelectorAll("table.grid").forEach(grid => grid.querySelectorAll("th, td")
.forEach(cell => {
  const box = cell.getBoundingClientRect();
  const text = cell.textContent.trim();
  if (cell.scrollWidth > cell.clientWidth + 1) out.cut.push(text);
  cell.querySelectorAll("*").forEach(inner => {
    const r = inner.getBoundingClientRect();
    if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1
        || r.bottom > box.bottom + 1) out.cut.push(text);
  });
  if (parseFloat(getComputedStyle(cell).fontSize) < 10) out.small.push(text);
}));
document.body.innerHTML = '<pre id="measure">' + JSON.stringify(out) + "</pre>";
</script>"""


def measure(page: str, tmp_path: Path, width: int) -> dict:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run ./kf setup (tools/kflab/setup.py installs it)"
    target = tmp_path / f"measure-{width}.html"
    target.write_text(page.replace("</body>", MEASURE + "</body>"))
    profile = tmp_path / f"profile-{width}"
    profile.mkdir()
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           f"--window-size={width},900", "--dump-dom", target.as_uri()],
                          check=True, timeout=120, capture_output=True, text=True)
    found = re.search(r'<pre id="measure">(.*?)</pre>', done.stdout)
    assert found, done.stdout[-2000:]
    return json.loads(html.unescape(found.group(1)))


def wide_evidences() -> list[dict]:
    """Three hosts with long names, 252 (wrapper: the extra PID namespace column) and 257, the
    failing recorded processes (every failed cell carries a footnote number), and a column per
    resource limit (a loosened, a bounded and a controller-less recorded process)."""
    evidences = []
    for host, role, limits in (("kf-debian12-lab-01.example.internal", "seccomp", "loosened"),
                               ("kf-debian13-lab-02.example.internal", "ambient", "bounded"),
                               ("kf-debian12-lab-03.example.internal", "threads",
                                "nocontrollers")):
        evidence = test_audit.evidence(host, role)
        wrapper = dict(evidence["checks"][0], property="ns pid (workload)",
                       command="readlink /proc/PID/ns/pid (vs PID 1)", passed=False,
                       expected="workload in a private PID namespace", observed=[])
        evidence["checks"] = [dict(c, component="model_backend_inference_server")
                              for c in [*evidence["checks"], wrapper,
                                        *test_audit.limit_evidence(limits)]]
        evidences.append(evidence)
    return evidences


def test_grid_fits_a_1000px_window(tmp_path):
    evidences = wide_evidences()
    got = measure(html_report(evidences), tmp_path, 1000)
    assert got["width"] == 1000, got
    assert got["scroll"] <= got["width"], f"the page scrolls sideways: {got['scroll']} px"
    assert all(t["right"] <= got["width"] for t in got["tables"]), got["tables"]
    assert got["cut"] == [], f"grid cells whose content does not fit: {got['cut']}"
    assert got["small"] == [], f"grid text under 10 px: {got['small']}"


def test_grid_at_1000px_still_shows_the_cells(tmp_path):
    """The measured layout is the one a person sees: the screenshot at 1000 px has the cells."""
    evidences = wide_evidences()
    width, _h, pixels = decode_png(screenshot(html_report(evidences), tmp_path, 1000)
                                   .read_bytes())
    assert width == 1000
    failed = sum(not c["passed"] for e in evidences for c in e["checks"])
    assert sum(1 for p in pixels if p == bytes(RED)) > 150 * failed
