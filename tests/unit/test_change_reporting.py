"""Change reporting when a later step fails, and work owed across runs (issue 16 item 10).

The modules run as Ansible runs them (a subprocess with their arguments file), with the real
systemd-analyze of this host; only systemctl is a stub (PID 1 here is not systemd) that logs
its calls and fails daemon-reload on demand.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests/unit/fixtures/stubs"

UNIT = """[Unit]
Description=kernelfence change-reporting test

[Service]
ExecStart=/usr/bin/sleep infinity
DynamicUser=yes
NoNewPrivileges=yes
"""


def run_module(name, args, tmp_path, check_mode=False, **env):
    argsfile = tmp_path / "args.json"
    args = dict(args, _ansible_check_mode=check_mode, _ansible_tmpdir=str(tmp_path))
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    environ = dict(os.environ, PYTHONPATH=str(REPO / ".collections"),
                   PATH=f"{STUBS}:{os.environ['PATH']}", **env)
    proc = subprocess.run(
        [sys.executable, "-m", f"ansible_collections.kernelfence.isolation.plugins.modules.{name}",
         str(argsfile)], capture_output=True, text=True, env=environ, check=False, timeout=120)
    return json.loads(proc.stdout)


class Host:
    """A unit directory, the pending-work directory and the systemctl stub's controls."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.unit_dir = tmp_path / "system"
        self.pending_dir = tmp_path / "pending"
        self.log = tmp_path / "systemctl.log"
        self.fail = tmp_path / "fail-daemon-reload"
        self.active = ""

    def install(self, content=UNIT, check_mode=False):
        self.log.write_text("")
        result = run_module("unit_install", {
            "units": [{"name": "kf-change.service", "content": content}],
            "unit_dir": str(self.unit_dir), "pending_dir": str(self.pending_dir),
            "enable": False, "start": False}, self.tmp, check_mode,
            KF_STUB_LOG=str(self.log), KF_STUB_FAIL=str(self.fail), KF_STUB_ACTIVE=self.active)
        result["systemctl"] = self.log.read_text().splitlines()
        return result


def test_a_failed_daemon_reload_reports_changed_and_the_next_run_reloads(tmp_path):
    host = Host(tmp_path)
    host.fail.touch()
    first = host.install()
    assert first["failed"] is True
    assert first["changed"] is True
    assert first["written"] == [str(host.unit_dir / "kf-change.service")]
    assert first["msg"].startswith("systemctl daemon-reload failed: Failed to reload daemon: "
                                   "Connection timed out. The files are written; the next run "
                                   "retries the reload")
    assert (host.unit_dir / "kf-change.service").read_text() == UNIT

    host.fail.unlink()
    second = host.install()
    assert "failed" not in second
    assert second["changed"] is True
    assert "daemon-reload" in second["systemctl"]
    assert second["changed_units"] == ["kf-change.service"]

    third = host.install()
    assert third["changed"] is False
    assert "daemon-reload" not in third["systemctl"]
    assert third["changed_units"] == []


def test_a_reload_that_keeps_failing_is_owed_until_it_succeeds(tmp_path):
    host = Host(tmp_path)
    host.fail.touch()
    host.install()
    again = host.install()  # files equal, reload still failing: nothing written this time
    assert again["failed"] is True
    assert again["changed"] is False
    assert again["written"] == []
    assert "daemon-reload" in again["systemctl"]
    host.fail.unlink()
    assert host.install()["changed"] is True
    assert host.install()["changed"] is False


def test_a_running_unit_whose_reload_failed_is_restarted_by_the_next_run(tmp_path):
    host = Host(tmp_path)
    host.install()
    host.active = "kf-change.service"
    host.fail.touch()
    changed = UNIT + "PrivateTmp=yes\n"
    assert host.install(changed)["changed"] is True
    host.fail.unlink()
    retry = host.install(changed)
    assert retry["restart_needed"] == ["kf-change.service"]
    assert host.install(changed)["restart_needed"] == []


def test_check_mode_reports_an_owed_reload_without_doing_it(tmp_path):
    host = Host(tmp_path)
    host.fail.touch()
    host.install()
    host.fail.unlink()
    dry = host.install(check_mode=True)
    assert dry["changed"] is True
    assert "daemon-reload" not in dry["systemctl"]
    assert host.install()["changed"] is True  # check mode left the marker in place


def test_component_accounts_reports_what_it_did_before_an_action_failed(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    result = run_module("component_accounts", {"directories": [
        {"path": str(first), "owner": "root", "group": "root", "mode": "0750"},
        {"path": str(second), "owner": "kf-no-such-user", "group": "root", "mode": "0700"},
    ]}, tmp_path)
    assert result["failed"] is True
    assert result["changed"] is True
    assert result["actions"] == [f"+ dir {first} root:root 0750"]
    assert result["failed_action"] == f"+ dir {second} kf-no-such-user:root 0700"
    assert result["msg"] == (f"+ dir {second} kf-no-such-user:root 0700: "
                             "\"getpwnam(): name not found: 'kf-no-such-user'\"")
    assert first.stat().st_mode & 0o7777 == 0o750
    assert not second.exists()  # an unknown owner leaves no directory behind


def test_component_accounts_first_action_failing_is_unchanged(tmp_path):
    result = run_module("component_accounts", {"directories": [
        {"path": str(tmp_path / "d"), "owner": "root", "group": "kf-no-such-group",
         "mode": "0700"}]}, tmp_path)
    assert result["failed"] is True
    assert result["changed"] is False
    assert result["actions"] == []
    assert not (tmp_path / "d").exists()


def test_artifact_install_failing_after_the_switch_reports_changed(tmp_path):
    staged = tmp_path / "tool.staged"
    staged.write_bytes(b"#!/bin/sh\necho v2\n")
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    root = tmp_path / "root"
    (root / "inventory.json").mkdir(parents=True)  # the inventory cannot be written
    result = run_module("artifact_verify", {
        "install_root": str(root), "pending_dir": str(tmp_path / "pending"), "items": [
            {"component": "executor", "name": "tool", "version": "2.0", "sha256": digest,
             "staged": str(staged)}]}, tmp_path)
    assert result["failed"] is True
    assert result["msg"].startswith(f"installing under {root} failed: [Errno 21] Is a directory")
    assert result["changed"] is True
    assert result["installed"] == ["executor/tool"]
    assert result["components"] == ["executor"]
    assert os.readlink(root / "executor/tool/current") == f"2.0-{digest[:12]}"
    assert [p.name for p in (tmp_path / "pending").iterdir()] == ["executor"]  # restart owed


def test_a_binary_switched_without_its_restart_is_reported_again(tmp_path):
    """The install switched `current`; the play failed before the handler restarted the
    service. The next run finds the binary current and still returns the component."""
    staged = tmp_path / "tool.staged"
    staged.write_bytes(b"#!/bin/sh\necho v3\n")
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    pending = tmp_path / "pending"
    args = {"install_root": str(tmp_path / "root"), "pending_dir": str(pending),
            "items": [{"component": "executor", "name": "tool", "version": "3.0",
                       "sha256": digest, "staged": str(staged)}]}
    first = run_module("artifact_verify", args, tmp_path)
    assert first["changed"] is True and first["components"] == ["executor"]
    # (the handler did not run)
    again = run_module("artifact_verify", args, tmp_path)
    assert again["installed"] == []
    assert again["changed"] is True
    assert again["components"] == ["executor"]
    assert again["restart_owed"] == ["executor"]
    dry = run_module("artifact_verify", args, tmp_path, check_mode=True)
    assert dry["changed"] is True and dry["components"] == ["executor"]
    # What the handler does after a successful restart:
    for marker in pending.iterdir():
        marker.unlink()
    settled = run_module("artifact_verify", args, tmp_path)
    assert settled["changed"] is False
    assert settled["components"] == []
