"""execution-environment.yml: the real `ansible-builder create` makes a complete build context.

No container engine here, so the image is not built. What the build would do without one is
done for real: the galaxy stage's `ansible-galaxy collection install -r requirements.yml` from
the context's own directory, and the builder stage's introspect.py over the installed
collection, which must pick up the collection's own meta/execution-environment.yml.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tools.kflab import setup

REPO = Path(__file__).resolve().parents[2]
EE_FILE = REPO / "execution-environment.yml"
EE = yaml.safe_load(EE_FILE.read_text())
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())


def _venv_tool(name: str) -> str:
    """The tool beside the running interpreter (the controller venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; `./kf setup` installs requirements.txt")
    return found


def _requirement_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def _pins() -> dict[str, str]:
    """name -> version of every `name==version` line of requirements.txt."""
    pins = {}
    for line in _requirement_lines(REPO / "requirements.txt"):
        req = Requirement(line)
        pins[req.name.lower()] = str(req.specifier).removeprefix("==")
    return pins


def build_context(work: Path, *, with_tarball: bool = True) -> Path:
    """Lay out the EE file beside what it refers to, as in the checkout, and run the real
    `ansible-builder create`; the collection tarball is built from this checkout."""
    shutil.copy2(EE_FILE, work / EE_FILE.name)
    python_file = EE["dependencies"]["python"]
    (work / python_file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / python_file, work / python_file)
    if with_tarball:
        subprocess.run([_venv_tool("ansible-galaxy"), "collection", "build", "--force",
                        "--output-path", str(work / "build"), str(REPO)],
                       check=True, capture_output=True, text=True, timeout=300)
    context = work / "context"
    proc = subprocess.run([_venv_tool("ansible-builder"), "create", "-f",
                           str(work / EE_FILE.name), "-c", str(context),
                           "--output-filename", "Containerfile"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return context


def context_problems(context: Path) -> list[str]:
    """What is missing or wrong in a build context for this collection's EE."""
    problems = []
    containerfile = context / "Containerfile"
    if not containerfile.is_file():
        return [f"{containerfile}: missing"]
    text = containerfile.read_text()
    base = EE["images"]["base_image"]["name"]
    if f'ARG EE_BASE_IMAGE="{base}"' not in text:
        problems.append(f"Containerfile: base image is not {base}")
    build = context / "_build"
    galaxy = yaml.safe_load((build / "requirements.yml").read_text())
    tarballs = [c["name"] for c in galaxy.get("collections", []) if c.get("type") == "file"]
    version = GALAXY["version"]
    wanted = f"kernelfence-isolation-{version}.tar.gz"
    if [Path(t).name for t in tarballs] != [wanted]:
        problems.append(f"requirements.yml: collections {tarballs}, expected one file named "
                        f"{wanted} (galaxy.yml version {version}); "
                        "update execution-environment.yml")
    for tarball in tarballs:
        # The galaxy stage runs ansible-galaxy from the context's _build directory (/build).
        if not (build / tarball).is_file():
            problems.append(f"_build/{tarball}: missing (build it first: ansible-galaxy "
                            "collection build --output-path build/)")
            continue
        with tarfile.open(build / tarball) as tar:
            member = tar.extractfile("MANIFEST.json")
            info = json.load(member)["collection_info"] if member else {}
        got = (info.get("namespace"), info.get("name"), info.get("version"))
        if got != ("kernelfence", "isolation", version):
            problems.append(f"_build/{tarball}: holds {got}")
    python = _requirement_lines(build / "requirements.txt")
    if python != _requirement_lines(REPO / "meta" / "ee-requirements.txt"):
        problems.append(f"_build/requirements.txt: {python} is not meta/ee-requirements.txt")
    if "openssh-clients [platform:rpm]" not in _requirement_lines(build / "bindep.txt"):
        problems.append("_build/bindep.txt: no ssh client")
    return problems


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return build_context(tmp_path_factory.mktemp("ee"))


def test_build_context_is_complete(context):
    assert context_problems(context) == []


def test_without_the_tarball_the_context_check_fails(tmp_path):
    # ansible-builder itself only warns about a missing additional_build_files source.
    context = build_context(tmp_path, with_tarball=False)
    problems = context_problems(context)
    assert problems == [f"_build/collections/kernelfence-isolation-{GALAXY['version']}.tar.gz: "
                        "missing (build it first: ansible-galaxy collection build "
                        "--output-path build/)"]


def test_wrong_base_image_python_and_system_requirements_are_found(context, tmp_path):
    broken = tmp_path / "context"
    shutil.copytree(context, broken)
    containerfile = broken / "Containerfile"
    containerfile.write_text(containerfile.read_text().replace(
        EE["images"]["base_image"]["name"], "quay.io/centos/centos:stream10"))
    (broken / "_build" / "requirements.txt").write_text("cryptography\n")
    (broken / "_build" / "bindep.txt").write_text("")
    assert context_problems(broken) == [
        f"Containerfile: base image is not {EE['images']['base_image']['name']}",
        "_build/requirements.txt: ['cryptography'] is not meta/ee-requirements.txt",
        "_build/bindep.txt: no ssh client",
    ]


def test_containerfile_pins_match_the_test_pins(context):
    text = (context / "Containerfile").read_text()
    pins = _pins()
    assert f"ansible-core=={pins['ansible-core']}" in text
    cosign, syft = setup.GO_TOOLS["cosign"][1], setup.GO_TOOLS["syft"][1]
    assert f"COPY --from=ghcr.io/sigstore/cosign/cosign:{cosign} /ko-app/cosign " \
           "/usr/local/bin/cosign" in text
    assert f"COPY --from=docker.io/anchore/syft:{syft} /syft /usr/local/bin/syft" in text
    # The copies land in the final image, after its last FROM.
    final = text.rsplit("\nFROM ", 1)[1]
    assert final.startswith("base AS final") and "/usr/local/bin/cosign" in final


def test_ee_requirements_admit_the_tested_versions():
    pins = _pins()
    names = set()
    for line in _requirement_lines(REPO / "meta" / "ee-requirements.txt"):
        req = Requirement(line)
        names.add(req.name.lower())
        assert req.specifier.contains(pins[req.name.lower()]), (
            f"meta/ee-requirements.txt {line} excludes {pins[req.name.lower()]}, the version "
            "requirements.txt tests")
    assert names == {"cryptography", "sigstore", "cyclonedx-python-lib"}


def test_galaxy_and_builder_stages_without_a_container(context, tmp_path):
    """The galaxy stage's install and the builder stage's introspection, run for real."""
    build = context / "_build"
    collections = tmp_path / "usr-share-ansible-collections"
    # As in the image: no ansible.cfg (this checkout's would call the collection installed).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    proc = subprocess.run([_venv_tool("ansible-galaxy"), "collection", "install", "--offline",
                           "-r", "requirements.yml", "--collections-path", str(collections)],
                          cwd=build, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = collections / "ansible_collections" / "kernelfence" / "isolation"
    assert (installed / "meta" / "execution-environment.yml").is_file()
    assert not (installed / "execution-environment.yml").exists()  # build_ignore'd
    pip_out, bindep_out = tmp_path / "pip.txt", tmp_path / "bindep.txt"
    proc = subprocess.run([sys.executable, str(build / "scripts" / "introspect.py"),
                           "introspect", "--user-pip", str(build / "requirements.txt"),
                           "--user-bindep", str(build / "bindep.txt"),
                           "--write-pip", str(pip_out), "--write-bindep", str(bindep_out),
                           str(collections)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The collection declares its own Python needs, so any EE that installs it gets them.
    pip_lines = pip_out.read_text().splitlines()
    for line in _requirement_lines(REPO / "meta" / "ee-requirements.txt"):
        assert f"{line}  # from collection kernelfence.isolation" in pip_lines, pip_lines
        assert f"{line}  # from collection user" in pip_lines, pip_lines
    assert bindep_out.read_text().splitlines() == [
        "openssh-clients [platform:rpm]  # from collection user"]
