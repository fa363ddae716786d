"""The attack probe's own mechanics, run for real on this machine with harmless attempts."""

import json
import os
import socket
import subprocess
import sys
import time

from ansible_collections.kernelfence.isolation.plugins.module_utils import attack_probe

PROBE = attack_probe.__file__


def test_a_raw_call_reports_the_kernels_errno():
    assert attack_probe.attempt_in_child("bad_pointer", []) == "EFAULT"


def test_file_attempts_give_errno_names_and_controls_ok(tmp_path):
    assert attack_probe.attempt_in_child("open_read", [str(tmp_path / "absent")]) == "ENOENT"
    assert attack_probe.attempt_in_child("create_file", [str(tmp_path / "new")]) == "OK"
    assert not (tmp_path / "new").exists()  # the attempt cleans up after itself
    assert attack_probe.attempt_in_child("create_file", [str(tmp_path / "no/dir/f")]) == "ENOENT"
    assert attack_probe.attempt_in_child("listdir", [str(tmp_path)]) == "OK"
    assert attack_probe.attempt_in_child("unix_self", [str(tmp_path)]) == "OK"
    assert os.listdir(tmp_path) == []


def test_process_attempts(tmp_path):
    assert attack_probe.attempt_in_child("proc_exists", ["self"]) == "OK"
    assert attack_probe.attempt_in_child("signal_pid", [os.getpid()]) == "OK"
    assert attack_probe.attempt_in_child("procfs_is_own", []) == "ENOENT"


def test_a_broken_attempt_is_reported_not_fatal():
    out = attack_probe.attempt_in_child("proc_exists", ["not-a-pid"])
    assert out.startswith("probe error: ValueError")


def test_a_hanging_attempt_is_killed_at_its_deadline():
    # A UDP peer that never answers: the attempt would wait 4 s for the reply.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        began = time.monotonic()
        out = attack_probe.attempt_in_child("udp_exchange", ["127.0.0.1", silent.getsockname()[1]],
                                            timeout=0.5)
    assert out == "timeout" and time.monotonic() - began < 3


def test_the_probe_is_a_standalone_program(tmp_path):
    """The module ships this file's source to the host and runs it with the plain python3."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([
        {"id": "efault", "kind": "bad_pointer", "args": []},
        {"id": "absent", "kind": "open_read", "args": [str(tmp_path / "absent")]},
    ]))
    out = subprocess.run([sys.executable, "-I", PROBE, str(plan)], capture_output=True,
                         text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["results"] == {"efault": "EFAULT", "absent": "ENOENT"}
    assert result["identity"]["uid"] == os.getuid()
