"""Bad component models fail the real play before anything on the host changes."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import run_playbook

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())


def mutate(change):
    """The example model after change(by_name); components change() adds come last."""
    by_name = {c["name"]: c for c in copy.deepcopy(EXAMPLE["kernelfence_components"])}
    change(by_name)
    return list(by_name.values())


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
    "directive-overriding-the-profile": (
        lambda m: m["executor"].update(directives={"ProtectSystem": "no"}),
        "kernelfence_components[executor].directives.ProtectSystem: is set by the component's "
        "profile. Fix: it is part of every profile's strict base"),
    # The first error names the component by index and name, in a few lines (ansible's own
    # argument validation printed the whole spec and named neither).
    "unknown-field": (
        lambda m: m["executor"].update(comand="/usr/bin/true"),
        "kernelfence_components[1] (executor): unknown field 'comand'. Fix: did you mean "
        "'command'?"),
    "relative-command": (
        lambda m: m["executor"].update(command="python3 /opt/kernelfence/demo/executor.py"),
        "kernelfence_components[executor].command: the program 'python3' is not an absolute "
        "path. Fix: give its full path, e.g. /usr/bin/python3"),
    "privileged-command-prefix": (
        lambda m: m["executor"].update(command="+/usr/bin/python3 /opt/kernelfence/demo/x.py"),
        "kernelfence_components[executor].command: '+/usr/bin/python3' starts with an "
        "ExecStart= prefix: '+' runs the command with full privileges, outside the sandbox"),
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


def newer_directive(host):
    """A directive this guest's systemd does not know yet (MemoryKSM= is 254, PrivateBPF= 258)."""
    return "MemoryKSM" if int(host.run("systemctl --version").stdout.split()[1]) < 254 \
        else "PrivateBPF"


def run_bad_model(host, change, tmp_path):
    """Run the real play with a changed model; return its exit code and folded output."""
    extra = tmp_path / "bad.json"
    extra.write_text(json.dumps({"kernelfence_components": mutate(change)}))
    proc = run_playbook(host, REPO / "playbooks/site.yml", "-e", f"@{extra}", timeout=600)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_fails_and_changes_nothing(host, case, tmp_path):
    change, message = CASES[case]
    before = host_state(host)
    assert before[1].split() == ["active"] * 3  # control: a running stack to disturb
    rc, output = run_bad_model(host, change, tmp_path)
    assert rc == 2, output[-3000:]
    assert message in output, output[-3000:]
    assert "argument_spec_data" not in output and "Supported parameters include" not in output
    assert host_state(host) == before


def test_directive_unknown_to_this_systemd_fails_before_any_change(host, tmp_path):
    """A new component (new user, new unit) whose extra directive this systemd does not know:
    the unit is refused in the staging directory before its user or any file is created."""
    key = newer_directive(host)
    version = host.run("systemctl --version").stdout.split()[1]

    def change(model):
        model["reporter"] = {"name": "reporter", "profile": "custom",
                             "command": "/usr/bin/sleep infinity", "directives": {key: "yes"}}
    before = host_state(host)
    rc, output = run_bad_model(host, change, tmp_path)
    assert rc == 2, output[-3000:]
    assert (f"kernelfence_components[reporter].directives: systemd {version} on this host "
            f"ignores kf-reporter.service:") in output, output[-3000:]
    assert f"Unknown key '{key}' in section [Service]" in output, output[-3000:]
    assert f"Fix: remove {key} or target a systemd that knows it" in output, output[-3000:]
    assert host_state(host) == before
    assert host.run("getent passwd kf-reporter").rc == 2  # the identity was never created


def _reporter(model):
    """A new component whose user, group and directories do not exist on the host."""
    model["reporter"] = {"name": "reporter", "profile": "custom",
                         "command": "/usr/bin/sleep infinity"}


@pytest.mark.parametrize("role", ["component_unit", "network_policy"])
def test_role_alone_without_the_identity_fails_before_any_write(host, role, tmp_path):
    """The role imported alone (no site.yml, no component_identity before it) with a model
    whose new component has no identity on the host: it runs the platform preflight itself,
    then stops at the identity check naming the component, what is missing and the fix,
    before it installs or writes anything."""
    assert host.run("getent passwd kf-reporter").rc == 2  # control: the identity is missing
    extra = tmp_path / "alone.json"
    extra.write_text(json.dumps({"kernelfence_components": mutate(_reporter)}))
    policy = "sha256sum /etc/kernelfence/network-policy.nft /etc/systemd/system/kf-network-policy*"
    before, ruleset = host_state(host), host.run(policy).stdout
    proc = run_playbook(host, REPO / f"tests/vm/playbooks/{role}_alone.yml", "-e", f"@{extra}",
                        timeout=600)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, output[-3000:]
    assert "Check this host can run the components" in output, output[-3000:]
    assert (f"kernelfence.isolation.{role}: the component identities it needs do not exist on "
            "this host (kernelfence_components[reporter]: user kf-reporter, group kf-reporter, "
            "directory /var/lib/kernelfence/reporter") in output, output[-3000:]
    assert ("Fix: run the kernelfence.isolation.component_identity role first, with the same "
            "kernelfence_components") in output, output[-3000:]
    assert host_state(host) == before and host.run(policy).stdout == ruleset
    assert not host.file("/etc/systemd/system/kf-reporter.service").exists
    assert not host.file("/etc/kernelfence/reporter").exists
