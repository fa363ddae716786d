"""A change that breaks components is shown by --check --diff without touching the host, and a
real run rolls the broken components back to their previous good units and says why."""

import copy
import json
import time
from pathlib import Path

import yaml
from conftest import run_playbook

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
MISSING = "/srv/kernelfence/executor-missing"
SERVICES = ["kf-orchestrator.service", "kf-executor.service", "kf-model_backend.service"]


def broken_model():
    """The executor gets a directive whose path does not exist (systemd cannot build its mount
    namespace), the model backend loses accept4 (it cannot take a connection)."""
    model = copy.deepcopy(EXAMPLE["kernelfence_components"])
    for comp in model:
        if comp["name"] == "executor":
            comp["directives"] = {"InaccessiblePaths": MISSING}
        if comp["name"] == "model_backend":
            comp["syscalls"] = {"deny": ["accept4"]}
    return model


def files_hash(host):
    return host.run("sha256sum /etc/systemd/system/kf-* /etc/kernelfence/*/seccomp.json "
                    "/opt/kernelfence/bin/*/*/current/*").stdout


def states(host):
    out = host.run("systemctl show -p Id,ActiveState,NRestarts " + " ".join(SERVICES)).stdout
    return out.strip()


def play(host, tmp_path, *flags):
    extra = tmp_path / "broken.json"
    extra.write_text(json.dumps({"kernelfence_components": broken_model()}))
    proc = run_playbook(host, REPO / "playbooks/site.yml", "-e", f"@{extra}", *flags,
                        timeout=1200)
    print(proc.stdout[-6000:])
    return proc.returncode, proc.stdout + proc.stderr


def test_check_diff_shows_the_change_and_changes_nothing_then_the_run_rolls_back(host, tmp_path):
    before_files, before_states = files_hash(host), states(host)
    assert before_states.count("ActiveState=active") == 3  # control: a healthy stack

    # --check --diff: the change is shown, nothing on the host moves.
    rc, output = play(host, tmp_path, "--check", "--diff")
    assert rc == 0, output[-4000:]
    assert f"+InaccessiblePaths={MISSING}" in output, output[-4000:]
    assert "accept4" in output, output[-4000:]
    assert files_hash(host) == before_files
    assert states(host) == before_states

    # The real run: both broken components fail their health check, are put back on their
    # previous unit and seccomp profile, restarted, and the play fails saying why.
    rc, output = play(host, tmp_path)
    folded = " ".join(output.split())
    assert rc == 2, folded[-4000:]
    assert "kf-executor.service failed its health check: exit status 226/NAMESPACE" in folded, \
        folded[-4000:]
    assert f"systemd could not apply `InaccessiblePaths={MISSING}`" in folded, folded[-4000:]
    assert "kf-model_backend.service failed its health check: exit status 1/FAILURE" in folded, \
        folded[-4000:]
    assert "PermissionError" in folded, folded[-4000:]
    assert "SystemCallFilter=~... added accept4" in folded, folded[-4000:]
    assert ("Fix: the workload needs a syscall this run denied: remove accept4 from "
            "kernelfence_components[model_backend].syscalls.deny") in folded, folded[-4000:]
    assert "Rolled back to the previous good version" in folded, folded[-4000:]
    assert "kf-executor.service: active" in folded and "kf-model_backend.service: active" \
        in folded, folded[-4000:]

    # Back on the previous good units, running, and staying up.
    assert files_hash(host) == before_files
    settled = states(host)
    assert settled.count("ActiveState=active") == 3, settled
    time.sleep(15)
    assert states(host) == settled  # no restart counter moves
    probe = host.run("python3 -c %s", (
        "import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(120); "
        "s.connect('/run/kernelfence/model_backend/model.sock'); "
        "s.sendall(b'{\"prompt\": \"audit dependencies\"}\\n'); print(s.recv(4096).decode())"))
    assert json.loads(probe.stdout) == {"answer": "cargo-audit"}, probe.stderr
