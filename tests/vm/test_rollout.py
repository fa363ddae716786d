"""A change that breaks components is shown by --check --diff without touching the host, and a
real run rolls the broken components back to their previous good units and says why; a new
binary or a new network policy that breaks a component is rolled back the same way."""

import copy
import json
import re
import time
from pathlib import Path

import yaml
from conftest import full, run_playbook
from test_verified_binary import BIN, good_artifact, release_sha256, sign

# Every run here converges site.yml, fails and rolls back: minutes each, so the full tier only.
pytestmark = full

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
MISSING = "/srv/kernelfence/executor-missing"
SERVICES = ["kf-orchestrator.service", "kf-executor.service", "kf-model_backend.service"]
PROBES = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/rollout.yml").read_text())
POLICY = "/etc/kernelfence/network-policy.nft"
JOBS = "/run/kernelfence/executor/jobs.sock"
# A stand-in for the advisory mirror the executor may reach (127.0.0.1:8088 in the example).
MIRROR = ("import socket; s = socket.socket(); "
          "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind(('127.0.0.1', 8088)); s.listen(16)\n"
          "while True: s.accept()[0].close()")


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


def ask_executor(host, job):
    """One job request on the executor's socket (as root, which the socket's mode admits)."""
    out = host.run("python3 -c %s", (
        "import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(300); "
        f"s.connect({JOBS!r}); s.sendall(b'{{\"job\": \"{job}\"}}\\n'); "
        "print(s.makefile().readline())"))
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def site_with(host, tmp_path, model, extra=None):
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps({"kernelfence_components": model, **(extra or {})}))
    proc = run_playbook(host, REPO / "playbooks/site.yml", "-e", f"@{vars_file}", timeout=1200)
    print(proc.stdout[-6000:])
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def test_a_new_binary_that_fails_its_health_check_is_rolled_back(host, tmp_path):
    before_files, before_states = files_hash(host), states(host)
    assert before_states.count("ActiveState=active") == 3
    before_link = host.run("readlink %s/current", BIN).stdout.strip()
    assert "report" in ask_executor(host, "cargo-audit")  # control: the job works
    # A build that signs and verifies fine but does not work: the executor's job fails.
    broken = tmp_path / "cargo-audit"
    broken.write_text("#!/bin/sh\necho 'cargo-audit: broken build' >&2\nexit 101\n")
    broken.chmod(0o755)
    sign(broken, tmp_path / "cargo-audit.bundle")
    model = copy.deepcopy(EXAMPLE["kernelfence_components"])
    for comp in model:
        if comp["name"] == "executor":
            comp["artifacts"] = [{**good_artifact(), "version": "0.22.2-broken",
                                  "src": str(broken),
                                  "bundle": str(tmp_path / "cargo-audit.bundle")}]
    try:
        rc, folded = site_with(host, tmp_path, model)
    finally:
        if host.run("readlink %s/current", BIN).stdout.strip() != before_link:
            # Whatever failed above, the next tests start from the verified release.
            site_with(host, tmp_path, copy.deepcopy(EXAMPLE["kernelfence_components"]))
    assert rc == 2, folded[-4000:]
    assert "kf-executor.service failed its health check: probe on" in folded, folded[-4000:]
    assert "answered without 'report'" in folded, folded[-4000:]
    assert ("Fix: this run switched executor/cargo-audit to a new version, which fails here"
            in folded), folded[-4000:]
    assert f"Rolled back to the previous good version ({BIN}/current" in folded, folded[-4000:]
    # The link, the files and the host's inventory are back on the verified release.
    assert host.run("readlink %s/current", BIN).stdout.strip() == before_link
    assert files_hash(host) == before_files
    inventory = json.loads(host.file("/opt/kernelfence/bin/inventory.json").content_string)
    entry = {(b["component"], b["name"]): b for b in inventory["binaries"]}[
        ("executor", "cargo-audit")]
    assert entry["sha256"] == release_sha256() and entry["version"] == "0.22.2", entry
    assert states(host).count("ActiveState=active") == 3
    assert "report" in ask_executor(host, "cargo-audit")


def test_a_new_network_policy_that_fails_a_health_check_is_rolled_back(host, tmp_path):
    host.run("systemctl stop kf-test-mirror.service")
    start = host.run("systemd-run --unit=kf-test-mirror --collect /usr/bin/python3 -c %s", MIRROR)
    assert start.rc == 0, start.stderr
    try:
        for _ in range(30):
            if host.run("ss -Hltn 'sport = :8088' | grep -q 127.0.0.1").rc == 0:
                break
            time.sleep(1)
        before_policy = host.file(POLICY).sha256sum
        before_files = files_hash(host)
        assert ask_executor(host, "mirror") == {"mirror": "127.0.0.1:8088"}  # control
        # The executor's health probe needs its mirror; the new policy moves its port.
        probes = copy.deepcopy(PROBES["component_unit_health_probes"])
        probes["executor"] = {"socket": "jobs.sock", "request": '{"job": "mirror"}',
                              "expect": "mirror"}
        model = copy.deepcopy(EXAMPLE["kernelfence_components"])
        for comp in model:
            if comp["name"] == "executor":
                comp["network"] = {"egress": [{"host": "127.0.0.1", "port": 8089}]}
        rc, folded = site_with(host, tmp_path, model, {"component_unit_health_probes": probes})
        assert rc == 2, folded[-4000:]
        assert "kf-executor.service failed its health check: probe on" in folded, folded[-4000:]
        assert "answered without 'mirror'" in folded, folded[-4000:]
        assert "EHOSTUNREACH" in folded, folded[-4000:]  # what nftables' reject gave the job
        assert f"this run changed the network policy ({POLICY})" in folded, folded[-4000:]
        assert f"Rolled back to the previous good version ({POLICY}" in folded, folded[-4000:]
        # The policy is shared: every component is watched again after it is put back.
        for service in ("kf-orchestrator.service", "kf-executor.service",
                        "kf-model_backend.service"):
            assert f"{service}: active" in folded, folded[-4000:]
        # The previous policy is back in the file and loaded, the executor reaches its mirror.
        assert host.file(POLICY).sha256sum == before_policy
        assert files_hash(host) == before_files
        table = host.run("nft list table inet kernelfence").stdout
        # (not a bare "8089": the table's counters print byte counts)
        assert "dport 8088" in table and not re.search(r"dport 8089\b", table), table
        assert ask_executor(host, "mirror") == {"mirror": "127.0.0.1:8088"}
        assert states(host).count("ActiveState=active") == 3
    finally:
        host.run("systemctl stop kf-test-mirror.service")
