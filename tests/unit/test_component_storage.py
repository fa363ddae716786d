"""component_storage: the per-path ext4 image made by the real mkfs.ext4 (read back with the
real debugfs), check mode that changes nothing, and a size change refused with the fix."""

import os
import shutil
import subprocess

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    storage_mounts,
)
from ansible_collections.kernelfence.isolation.plugins.modules import component_storage as cs

pytestmark = pytest.mark.skipif(not shutil.which("mkfs.ext4") or not shutil.which("debugfs"),
                                reason="e2fsprogs is not installed")


class _Host:
    """AnsibleModule's run_command, get_bin_path and fail_json, running the real commands.
    The mount's owner is this machine's root (kf-executor does not exist here)."""

    def __init__(self, check_mode=False):
        self.check_mode = check_mode

    def run_command(self, argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def get_bin_path(self, name, required=False):
        return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs["msg"])


def _mount(tmp_path, **resources):
    record = normalize_components([{"name": "executor", "profile": "executor",
                                    "resources": resources}])[0]
    mount = storage_mounts(record, str(tmp_path / "images"))[0]
    return {**mount, "owner": "root", "group": "root", "path": str(tmp_path / "state")}


def test_the_image_has_the_models_size_and_the_components_root(tmp_path):
    mount = _mount(tmp_path, state_size="24M")
    cs._create_image(_Host(), mount, os.getuid(), os.getgid())
    assert os.path.getsize(mount["image"]) == 24 * 1024 * 1024
    assert os.stat(mount["image"]).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "images").st_mode & 0o777 == 0o700
    stat = subprocess.run(["debugfs", "-R", "stat /", mount["image"]], capture_output=True,
                          text=True, check=True).stdout
    assert f"User: {os.getuid():5d}" in stat or f"User:  {os.getuid()}" in stat, stat
    label = subprocess.run(["debugfs", "-R", "stats", mount["image"]], capture_output=True,
                           text=True, check=True).stdout
    assert "Filesystem volume name:   kf-executor" in label


def test_check_mode_reports_and_changes_nothing(tmp_path):
    mount = _mount(tmp_path)
    (tmp_path / "units").mkdir()
    done = cs._apply(_Host(check_mode=True), mount, str(tmp_path / "units"))
    assert done["created_image"] and done["wrote_unit"] and done["started"]
    assert done["diff"]["after"].startswith("# Managed by kernelfence.isolation")
    assert not (tmp_path / "images").exists() and os.listdir(tmp_path / "units") == []


def test_an_image_of_another_size_is_refused_with_the_fix(tmp_path):
    mount = _mount(tmp_path, state_size="24M")
    cs._create_image(_Host(), mount, os.getuid(), os.getgid())
    bigger = {**_mount(tmp_path, state_size="48M"), "image": mount["image"]}
    with pytest.raises(AssertionError, match=r"component executor: the image .* has 25165824 "
                                             r"bytes, the model asks 48M. Fix: restore the size"):
        cs._apply(_Host(check_mode=True), bigger, str(tmp_path))
