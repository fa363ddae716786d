"""Public roles imported alone into another play (controller-side, ansible-playbook against
this machine in check mode): each runs the shared preflight itself and stops, with a short
message naming the cause and the fix, before any task that installs or writes anything."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
# A component whose identity exists on no test machine.
ABSENT = {"name": "kfprobe_alone", "profile": "executor", "command": "/usr/bin/sleep infinity"}
NOT_BOOTED = "systemd: this host was not booted with systemd as its init (PID 1)"
# The first task of each role that changes a host.
FIRST_WRITE = {"component_unit": "Ensure the wrapper's packages",
               "network_policy": "Ensure nftables is installed"}


def play(tmp_path, role, components, *extra):
    book = tmp_path / "alone.yml"
    book.write_text(f"- hosts: localhost\n  connection: local\n  gather_facts: false\n"
                    f"  roles:\n    - role: kernelfence.isolation.{role}\n")
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps({"kernelfence_components": components}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="default")
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "--check", "-e", f"@{variables}", *extra,
                           str(book)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def first_error(output):
    """The first [ERROR] line ansible prints: what the user reads first."""
    return next(line for line in output.splitlines() if line.startswith("[ERROR]"))


def test_role_alone_runs_the_platform_check_first(tmp_path):
    """On the build machine (PID 1 is not systemd) component_unit alone says so first; on a
    machine booted with systemd the check passes and the role goes on to its own checks."""
    rc, out = play(tmp_path, "component_unit", [ABSENT])
    assert rc == 2, out[-3000:]
    assert "Check this host can run the components" in out
    if Path("/run/systemd/system").is_dir():
        assert NOT_BOOTED not in out
    else:
        assert NOT_BOOTED in first_error(out), out[-3000:]
        assert "unified_cgroup_hierarchy" not in out
    assert FIRST_WRITE["component_unit"] not in out and "Verify, gate and install" not in out


@pytest.mark.parametrize("role", ["component_unit", "network_policy"])
def test_role_alone_without_the_identity_fails_before_any_write(tmp_path, role):
    """The platform check is taken as passed (its fact set, as site.yml's first task sets it on
    a systemd host); the component's user does not exist: the role stops at the identity
    check, naming the component, what is missing and the fix."""
    assert subprocess.run(["getent", "passwd", "kf-kfprobe-alone"], check=False).returncode == 2
    rc, out = play(tmp_path, role, [ABSENT],
                   "-e", json.dumps({"__kernelfence_platform": {
                       "nftables": True, "systemd_version": 252}}))
    assert rc == 2, out[-3000:]
    error = first_error(out)
    assert (f"kernelfence.isolation.{role}: the component identities it needs do not exist on "
            "this host (kernelfence_components[kfprobe_alone]: user kf-kfprobe-alone, group "
            "kf-kfprobe-alone") in error, error
    assert ("Fix: run the kernelfence.isolation.component_identity role first, with the same "
            f"kernelfence_components (before kernelfence.isolation.{role} in the same play, "
            "or use playbooks/site.yml)") in error, error
    assert FIRST_WRITE[role] not in out and "Write the policy" not in out
    assert "Verify, gate and install" not in out


def test_unknown_field_is_the_first_error_naming_index_and_name(tmp_path):
    components = [{"name": "orchestrator", "profile": "orchestrator"},
                  {"name": "executor", "profile": "executor", "comand": "/usr/bin/true"}]
    rc, out = play(tmp_path, "component_identity", components)
    assert rc == 2, out[-3000:]
    error = first_error(out)
    assert ("kernelfence_components[1] (executor): unknown field 'comand'. Fix: did you mean "
            "'command'?") in error, error
    # A few lines, not the spec or the model: ansible's own validation printed both.
    assert "Supported parameters include" not in out and "argument_spec_data" not in out
    assert "Create the component groups" not in out
    assert len(error) < 600, error


def test_relative_command_fails_before_any_write(tmp_path):
    rc, out = play(tmp_path, "component_identity",
                   [{**ABSENT, "command": "sleep infinity"}])
    assert rc == 2, out[-3000:]
    assert ("kernelfence_components[kfprobe_alone].command: the program 'sleep' is not an "
            "absolute path. Fix: give its full path, e.g. /usr/bin/sleep") in first_error(out)
    assert "Create the component groups" not in out
