"""Bad component models fail the real play before anything on the host changes."""

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())


def mutate(change):
    model = copy.deepcopy(EXAMPLE["kernelfence_components"])
    change({c["name"]: c for c in model})
    return model


CASES = {
    "unknown-profile": (
        lambda m: m["executor"].update(profile="sandbox"),
        "kernelfence_components[executor].profile"),
    "misspelled-capability": (
        lambda m: m["executor"].update(capabilities=["CAP_NET_BIND_SERVIC"]),
        "kernelfence_components[executor].capabilities: unknown capability "
        "'CAP_NET_BIND_SERVIC'. Fix: use a name from capabilities(7)"),
    "path-outside-roots": (
        lambda m: m["executor"].update(state_paths=["/etc/cron.d"]),
        "kernelfence_components[executor].state_paths: '/etc/cron.d' is outside the allowed "
        "roots"),
    "shared-user": (
        lambda m: m["executor"].update(user="kf-orchestrator"),
        "kernelfence_components[executor].user: 'kf-orchestrator' is also the user of "
        "component 'orchestrator'. Fix: give every component its own user and group"),
    "unknown-syscall-group": (
        lambda m: m["model_backend"].update(syscalls={"allow": ["@nonsense"]}),
        "kernelfence_components[model_backend].syscalls: unknown syscall group @nonsense"),
}


def host_state(host):
    units = host.run("sha256sum /etc/systemd/system/kf-* /etc/kernelfence/*/seccomp.json "
                     "/etc/passwd /etc/group").stdout
    active = host.run("systemctl is-active kf-orchestrator kf-executor kf-model_backend").stdout
    pids = host.run("systemctl show -p MainPID --value kf-orchestrator kf-executor "
                    "kf-model_backend").stdout
    return units, active, pids


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_fails_and_changes_nothing(host, case, tmp_path):
    change, message = CASES[case]
    before = host_state(host)
    assert before[1].split() == ["active"] * 3  # control: a running stack to disturb
    extra = tmp_path / "bad.json"
    extra.write_text(json.dumps({"kernelfence_components": mutate(change)}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="default")
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         "--limit", host.backend.get_hostname(), "-e", f"@{extra}",
         str(REPO / "playbooks/site.yml")],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, output[-3000:]
    assert message in output, output[-3000:]
    assert host_state(host) == before
