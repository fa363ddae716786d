"""A fleet of three VMs (molecule/fleet): a change that breaks a component on the canary stops
the rollout there, the canary is rolled back and the other hosts are never touched; a healthy
change rolls out to every host in batches, the canary first.

Each test runs once for the whole fleet (no `host` fixture): it reads every host from outside
with testinfra and drives site.yml against the scenario's inventory, as an operator would.
"""

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import testinfra
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
FLEET = ["fleet1", "fleet2", "fleet3"]
SERVICES = ["kf-orchestrator.service", "kf-executor.service", "kf-model_backend.service"]
BATCHES = '{"kernelfence_serial": [1, 2]}'


@pytest.fixture(scope="module")
def fleet():
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return {name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)
            for name in FLEET}


def files_hash(host):
    """Units, seccomp profiles, and each binary with its SBOM and verification evidence."""
    return host.run("sha256sum /etc/systemd/system/kf-* /etc/kernelfence/*/seccomp.json "
                    "/opt/kernelfence/bin/*/*/current/*").stdout


def deployed_hash(host):
    """What runs: units, seccomp profiles and binaries. Not the evidence: each batch verifies
    the artifacts again on the controller, so its `verified_at` differs from batch to batch."""
    return host.run("sha256sum /etc/systemd/system/kf-* /etc/kernelfence/*/seccomp.json; "
                    "for d in /opt/kernelfence/bin/*/*/; do "
                    "sha256sum \"${d}current/$(basename \"$d\")\"; done").stdout


def service_state(host):
    """{unit: (ActiveState, MainPID)} of every service: a restarted one gets a new MainPID."""
    out = host.run("systemctl show -p Id,ActiveState,MainPID " + " ".join(SERVICES)).stdout
    states = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[props["Id"]] = (props["ActiveState"], props["MainPID"])
    return states


def all_active(states):
    return sorted(states) == sorted(SERVICES) and all(a == "active" for a, _ in states.values())


def site(tmp_path, model, *args):
    extra = tmp_path / "model.json"
    extra.write_text(json.dumps({"kernelfence_components": model}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="default")
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "-e", BATCHES,
         "-e", f"@{extra}", *args, str(REPO / "playbooks/site.yml")],
        capture_output=True, text=True, env=env, timeout=2400, check=False)
    print(proc.stdout[-8000:])
    return proc.returncode, proc.stdout + proc.stderr


def hosts_in(output):
    """Hosts that ran any task in a piece of play output (result lines `ok: [host]`, ...)."""
    return set(re.findall(r"^\w+: \[(fleet\d)\]", output, re.MULTILINE))


def test_the_converge_reached_every_host_with_the_same_units(fleet):
    hashes = {name: deployed_hash(host) for name, host in fleet.items()}
    assert all("cargo-audit" in h and "kf-executor.service" in h for h in hashes.values()), hashes
    assert len(set(hashes.values())) == 1, hashes  # the same units, profiles and binaries
    for name, host in fleet.items():
        assert all_active(service_state(host)), name


def test_a_failing_canary_stops_the_rollout_and_the_rest_of_the_fleet_is_untouched(
        fleet, tmp_path):
    before = {name: (files_hash(host), service_state(host)) for name, host in fleet.items()}
    for name, (_files, states) in before.items():
        assert all_active(states), (name, states)  # control: a healthy fleet

    model = copy.deepcopy(EXAMPLE["kernelfence_components"])
    for comp in model:
        if comp["name"] == "model_backend":
            comp["syscalls"] = {"deny": ["accept4"]}  # it can no longer take a connection
    rc, output = site(tmp_path, model)
    folded = " ".join(output.split())
    assert rc == 2, folded[-4000:]
    # The canary: its health check failed, it said why and was put back.
    assert "kf-model_backend.service failed its health check" in folded, folded[-4000:]
    assert "remove accept4 from kernelfence_components[model_backend].syscalls.deny" in folded
    assert "Rolled back to the previous good version" in folded, folded[-4000:]
    # The rollout stopped at the first batch: no other host ran a single task.
    assert hosts_in(output) == {"fleet1"}, hosts_in(output)
    assert "NO MORE HOSTS LEFT" in output, output[-4000:]

    after = {name: (files_hash(host), service_state(host)) for name, host in fleet.items()}
    # The canary is back on its previous good files, every service active again.
    assert after["fleet1"][0] == before["fleet1"][0]
    assert all_active(after["fleet1"][1]), after["fleet1"][1]
    # The others: same files, same running processes (never restarted).
    for name in ("fleet2", "fleet3"):
        assert after[name] == before[name], name


def test_a_healthy_change_rolls_out_to_every_host_canary_first(fleet, tmp_path):
    before = {name: service_state(host) for name, host in fleet.items()}
    model = copy.deepcopy(EXAMPLE["kernelfence_components"])
    for comp in model:
        if comp["name"] == "executor":
            comp["resources"] = {"memory_max": "1G"}
    rc, output = site(tmp_path, model)
    assert rc == 0, output[-4000:]
    # Two batches: the canary alone, then the two others together.
    batches = re.split(r"^PLAY \[", output, flags=re.MULTILINE)[1:]
    assert [hosts_in(batch) for batch in batches] == [{"fleet1"}, {"fleet2", "fleet3"}], \
        [hosts_in(batch) for batch in batches]
    for name, host in fleet.items():
        assert "MemoryMax=1G" in host.file("/etc/systemd/system/kf-executor.service").content_string
        live = host.run("systemctl show -p MemoryMax --value kf-executor").stdout.strip()
        assert live == str(1 << 30), (name, live)
        states = service_state(host)
        assert all_active(states), (name, states)
        # The executor was restarted onto its new unit; the untouched services were not.
        assert states["kf-executor.service"][1] != before[name]["kf-executor.service"][1], name
        assert states["kf-model_backend.service"] == before[name]["kf-model_backend.service"], \
            name
