"""The changelog is kept as antsibull-changelog fragments: every fragment must lint clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _antsibull_changelog() -> str:
    beside = Path(sys.executable).parent / "antsibull-changelog"
    found = str(beside) if beside.exists() else shutil.which("antsibull-changelog")
    if not found:
        pytest.fail("antsibull-changelog is not installed; `./kf setup` installs requirements.txt")
    return found


def _lint(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_antsibull_changelog(), *args], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)


def test_fragments_lint_clean():
    fragments = sorted((REPO / "changelogs" / "fragments").glob("*.y*ml"))
    assert fragments, "no changelog fragments"
    proc = _lint(REPO, "lint")
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_changelog_yaml_lints_clean():
    proc = _lint(REPO, "lint-changelog-yaml", "changelogs/changelog.yaml")
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.parametrize(("fragment", "message"), [
    ("---\nmajour_changes:\n  - A typo in the section name.\n", "invalid section: majour_changes"),
    ("---\nminor_changes: not a list\n", 'section "minor_changes" must be type list not str'),
])
def test_bad_fragment_fails_the_lint_naming_file_and_fault(tmp_path, fragment, message):
    shutil.copy2(REPO / "galaxy.yml", tmp_path / "galaxy.yml")
    shutil.copytree(REPO / "changelogs", tmp_path / "changelogs")
    assert _lint(tmp_path, "lint").returncode == 0  # the copy is clean before the bad fragment
    (tmp_path / "changelogs" / "fragments" / "bad.yml").write_text(fragment)
    proc = _lint(tmp_path, "lint")
    assert proc.returncode != 0
    assert f"changelogs/fragments/bad.yml:0:0: {message}" in proc.stdout
