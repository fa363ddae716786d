"""The changelog is kept as antsibull-changelog fragments: every fragment must lint clean,
each release is in changelogs/changelog.yaml and CHANGELOG.rst, and every module's and filter's
`version_added` names the release that lists it (or a release still to come)."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def _releases() -> dict:
    return yaml.safe_load((REPO / "changelogs" / "changelog.yaml").read_text())["releases"] or {}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split("."))


def test_fragments_lint_clean():
    fragments = sorted((REPO / "changelogs" / "fragments").glob("*.y*ml"))
    # A release moves its fragments into changelog.yaml: either is there, never neither.
    assert fragments or _releases(), "no changelog fragments and no release"
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
    (tmp_path / "changelogs" / "fragments").mkdir(exist_ok=True)  # git keeps no empty folder
    (tmp_path / "changelogs" / "fragments" / "bad.yml").write_text(fragment)
    proc = _lint(tmp_path, "lint")
    assert proc.returncode != 0
    assert f"changelogs/fragments/bad.yml:0:0: {message}" in proc.stdout


def test_galaxy_version_is_released_with_a_summary_and_topic_named_fragments():
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    release = _releases().get(galaxy["version"])
    assert release, (f"galaxy.yml version {galaxy['version']} has no release in "
                     f"changelogs/changelog.yaml. Fix: antsibull-changelog release")
    assert release["changes"].get("release_summary")
    # Fragments are named by topic, not by issue, session or version number.
    numbered = [name for rel in _releases().values() for name in rel.get("fragments", [])
                if re.match(r"(issue|session)\d|\d+\.\d+", name)]
    numbered += [path.name for path in (REPO / "changelogs" / "fragments").glob("*.y*ml")
                 if re.match(r"(issue|session)\d|\d+\.\d+", path.name)]
    assert not numbered, f"fragments not named by topic: {numbered}"


def test_changelog_rst_is_what_antsibull_changelog_generates(tmp_path):
    shutil.copy2(REPO / "galaxy.yml", tmp_path / "galaxy.yml")
    shutil.copytree(REPO / "changelogs", tmp_path / "changelogs")
    proc = _lint(tmp_path, "generate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "CHANGELOG.rst").read_text() == (REPO / "CHANGELOG.rst").read_text(), (
        "CHANGELOG.rst is out of date with changelogs/changelog.yaml. Fix: antsibull-changelog "
        "generate")


def _documented_plugins() -> dict[tuple[str, str], str]:
    """(kind, name) -> version_added of every module and filter the collection ships."""
    found = {}
    for path in sorted((REPO / "plugins" / "modules").glob("*.py")):
        tree = ast.parse(path.read_text())
        doc = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", "") == "DOCUMENTATION" for t in node.targets))
        found[("module", path.stem)] = str(yaml.safe_load(doc).get("version_added"))
    for path in sorted((REPO / "plugins" / "filter").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())["DOCUMENTATION"]
        found[("filter", doc["name"])] = str(doc.get("version_added"))
    return found


def test_version_added_names_the_release_that_lists_the_plugin():
    listed = {}
    for version, release in _releases().items():
        for module in release.get("modules", []):
            listed[("module", module["name"])] = str(version)
        for kind, plugins in release.get("plugins", {}).items():
            for plugin in plugins:
                listed[(kind, plugin["name"])] = str(version)
    last = max((_version(v) for v in _releases()), default=(0,))
    wrong = []
    for (kind, name), added in _documented_plugins().items():
        if (kind, name) in listed:
            if added != listed[(kind, name)]:
                wrong.append(f"{kind} {name}: version_added {added}, released in "
                             f"{listed[(kind, name)]}")
        elif added == "None" or _version(added) <= last:
            wrong.append(f"{kind} {name}: version_added {added}, but no release lists it. Fix: "
                         f"set it to the next version, or add it to that release with "
                         f"antsibull-changelog release --version {added} --update-existing")
    assert not wrong, wrong


def test_galaxy_yml_has_no_placeholder_urls():
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    placeholders = {key: value for key, value in galaxy.items() if isinstance(value, str)
                    and re.search(r"https?://[^/]*(example\.|\.invalid|\.test\b|localhost)",
                                  value)}
    assert not placeholders, f"galaxy.yml: placeholder URLs {placeholders}: omit the keys"
