"""Atomic install on the host side: staged copies must match the pin, current switches last,
the previous version is kept, a failure changes nothing."""

import hashlib
import json
import os
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.verified_install import (
    InstallFailed,
    Item,
    install,
    plan,
    refresh_inventory,
)


def staged(tmp_path, name, content):
    path = tmp_path / "stage" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return Item(component="executor", name="tool", version=name, staged=str(path),
                sha256=hashlib.sha256(content).hexdigest(), sbom={"bomFormat": "CycloneDX"},
                evidence={"artifact": "executor/tool", "verified_at": f"t-{name}"})


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                out[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def test_first_install_then_idempotent(tmp_path):
    root = str(tmp_path / "bin")
    v1 = staged(tmp_path, "1.0", b"v1 binary")
    unstaged = Item(component="executor", name="tool", version="1.0", sha256=v1.sha256)
    # Without a staged copy the first call asks for one and changes nothing.
    assert install(root, [unstaged])["needs_staging"] == ["executor/tool"]
    assert not os.path.exists(root)
    result = install(root, [v1])
    assert result["changed"] and result["installed"] == ["executor/tool"]
    base = tmp_path / "bin/executor/tool"
    assert os.readlink(base / "current") == f"1.0-{v1.sha256[:12]}"
    binary = base / "current/tool"
    assert binary.read_bytes() == b"v1 binary"
    assert oct(binary.stat().st_mode & 0o7777) == "0o755" and binary.stat().st_uid == 0
    assert json.loads((base / "current/evidence.json").read_text())["verified_at"] == "t-1.0"
    inventory = json.loads((tmp_path / "bin/inventory.json").read_text())
    assert inventory["binaries"][0]["sha256"] == v1.sha256
    assert inventory["binaries"][0]["path"] == f"{root}/executor/tool/current/tool"
    # Second run: nothing to stage, nothing changes.
    again = install(root, [unstaged])
    assert again == {"changed": False, "installed": [], "previous": {}, "needs_staging": []}


def test_upgrade_keeps_previous_and_prunes_older(tmp_path):
    root = str(tmp_path / "bin")
    versions = [staged(tmp_path, v, f"binary {v}".encode()) for v in ("1.0", "2.0", "3.0")]
    for item in versions:
        install(root, [item])
    base = tmp_path / "bin/executor/tool"
    assert os.readlink(base / "current") == f"3.0-{versions[2].sha256[:12]}"
    assert os.readlink(base / "previous") == f"2.0-{versions[1].sha256[:12]}"
    assert sorted(os.listdir(base)) == sorted(
        ["current", "previous", f"2.0-{versions[1].sha256[:12]}",
         f"3.0-{versions[2].sha256[:12]}"])
    # Rolling back is re-installing the previous version: no copy needed, it is still there.
    back = Item(component="executor", name="tool", version="2.0", sha256=versions[1].sha256)
    assert plan(root, [back]) == ["executor/tool"]
    result = install(root, [back])
    assert result["installed"] == ["executor/tool"] and result["needs_staging"] == []
    assert os.readlink(base / "current") == f"2.0-{versions[1].sha256[:12]}"
    assert os.readlink(base / "previous") == f"3.0-{versions[2].sha256[:12]}"


def test_staged_copy_with_wrong_digest_changes_nothing(tmp_path):
    root = str(tmp_path / "bin")
    install(root, [staged(tmp_path, "1.0", b"v1 binary")])
    before = tree(root)
    bad = staged(tmp_path, "2.0", b"v2 binary")
    with open(bad.staged, "ab") as handle:
        handle.write(b"\0")  # corrupted in transit
    with pytest.raises(InstallFailed) as exc:
        install(root, [bad])
    assert str(exc.value).startswith("artifact executor/tool: digest mismatch: the copy on the "
                                     "host has sha256 ")
    assert tree(root) == before


def test_one_bad_artifact_blocks_the_whole_switch(tmp_path):
    root = str(tmp_path / "bin")
    good = staged(tmp_path, "1.0", b"good")
    other = Item(component="model_backend", name="server", version="1", sha256="0" * 64,
                 staged=str(tmp_path / "stage/1.0"))
    with pytest.raises(InstallFailed):
        install(root, [good, other])
    assert not os.path.exists(root)


def test_check_mode_writes_nothing(tmp_path):
    root = str(tmp_path / "bin")
    result = install(root, [staged(tmp_path, "1.0", b"v1")], check_mode=True)
    assert result["changed"] and result["installed"] == ["executor/tool"]
    assert not os.path.exists(root)


def test_tampered_installed_file_is_reinstalled(tmp_path):
    root = str(tmp_path / "bin")
    v1 = staged(tmp_path, "1.0", b"v1 binary")
    install(root, [v1])
    current = tmp_path / "bin/executor/tool/current/tool"
    current.write_bytes(b"replaced on the host")
    assert plan(root, [v1]) == ["executor/tool"]
    install(root, [v1])
    assert current.read_bytes() == b"v1 binary"


def test_inventory_follows_a_link_the_health_check_moved_back(tmp_path):
    root = str(tmp_path / "bin")
    v1, v2 = staged(tmp_path, "1.0", b"good"), staged(tmp_path, "2.0", b"breaks the service")
    install(root, [v1])
    install(root, [v2])
    base = tmp_path / "bin/executor/tool"
    inventory = tmp_path / "bin/inventory.json"
    assert json.loads(inventory.read_text())["binaries"][0]["sha256"] == v2.sha256
    # What component_health does on a failed health check: current points back at 1.0.
    os.symlink(f"1.0-{v1.sha256[:12]}", base / "current.tmp")
    os.rename(base / "current.tmp", base / "current")
    assert refresh_inventory(root) is True
    entry = json.loads(inventory.read_text())["binaries"][0]
    assert entry["sha256"] == v1.sha256 and entry["version"] == "1.0"
    assert entry["installed"] == f"{root}/executor/tool/1.0-{v1.sha256[:12]}/tool"
    assert entry["verified_at"] == "t-1.0"
    assert entry["path"] == f"{root}/executor/tool/current/tool"
    assert refresh_inventory(root) is False  # already true to the host: not rewritten
    assert refresh_inventory(str(tmp_path / "nothing-installed")) is False
