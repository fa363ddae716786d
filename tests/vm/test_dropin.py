"""A unit the operator already has, hardened by kernelfence's drop-in only (advisory_sync)."""

import hashlib
import json
import time

from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import threshold
from conftest import REPO, ns_ids, proc_status, run_playbook, systemd_version, unit_pids
from test_verified_binary import EXAMPLE, PLAYBOOK, good_artifact

UNIT = "agent-advisory-sync.service"
DROPIN = f"/etc/systemd/system/{UNIT}.d/50-kernelfence.conf"


def test_the_operators_unit_file_is_left_as_it_was(host):
    shipped = hashlib.sha256((REPO / "demo/units" / UNIT).read_bytes()).hexdigest()
    assert host.file(f"/etc/systemd/system/{UNIT}").sha256sum == shipped
    dropins = host.run("systemctl show -P DropInPaths %s", UNIT).stdout.split()
    assert DROPIN in dropins
    assert host.file(DROPIN).user == "root" and host.file(DROPIN).mode == 0o644


def test_the_dropin_confines_the_running_service(host, components):
    rec = next(r for r in components if r["name"] == "advisory_sync")
    uid = host.user(rec["user"]).uid
    host_ns = ns_ids(host, 1)
    pids = unit_pids(host, UNIT)
    assert pids, f"{UNIT} runs nothing"
    # The demo prepare started the unit as root; it runs as its own user now, so the
    # handler restarted it with the drop-in in force.
    workload = [p for p in pids if host.run("readlink /proc/%s/exe", str(p)).stdout.strip()
                != "/usr/bin/bwrap"]
    for pid in pids:
        for task in proc_status(host, pid):
            assert task["Uid"].split() == [str(uid)] * 4, task["task"]
            for capset in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(task[capset], 16) == 0, f"{task['task']} {capset}"
            assert task["NoNewPrivs"] == "1" and task["Seccomp"] == "2", task["task"]
    for pid in workload:
        ns = ns_ids(host, pid)
        for kind in ("pid", "ipc", "mnt", "net", "uts"):
            assert ns[kind] != host_ns[kind], f"{UNIT} pid {pid} shares the host {kind} namespace"


def test_the_dropin_meets_its_profile_threshold_live(host):
    out = host.run("systemd-analyze security --no-pager %s", UNIT)
    assert out.rc == 0, out.stderr
    score = float(out.stdout.strip().splitlines()[-1].split(":")[1].split()[0])
    limit = threshold("custom", systemd_version(host))
    print(f"EXPOSURE {host.backend.get_hostname()} {UNIT} {score} (limit {limit})")
    # Control: the operator's unit without the drop-in is far above any profile threshold.
    # Scored from a copy under another name: systemd-analyze loads drop-ins by unit name from
    # the search path, so a copy still named UNIT (anywhere) would be scored with ours.
    copy = "/run/kf-bare/kfbarecontrol.service"
    bare = host.run(f"install -D -m 0644 /etc/systemd/system/{UNIT} {copy} && "
                    f"systemd-analyze security --offline=yes --no-pager {copy}; "
                    "rm -rf /run/kf-bare").stdout
    assert float(bare.strip().splitlines()[-1].split(":")[1].split()[0]) > 5
    assert score <= limit


# verified_binary's handler restarts the unit that runs a component whose binary changed: the
# operator's own unit when the component names one (`unit`), which must exist.
def _run_verified_binary(host, tmp_path, version, advisory_sync_unit=UNIT):
    model = [dict(c) for c in EXAMPLE["kernelfence_components"]]
    for comp in model:
        comp.pop("artifacts", None)
        if comp["name"] == "executor":
            comp["artifacts"] = [good_artifact()]
        if comp["name"] == "advisory_sync":
            comp["unit"] = advisory_sync_unit
            comp["artifacts"] = [{**good_artifact(), "name": "advisory-tool",
                                  "version": version}]
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"kernelfence_components": model}))
    proc = run_playbook(host, PLAYBOOK, "-e", f"@{extra}")
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def _main_pid(host, unit):
    return host.run("systemctl show -p MainPID --value %s", unit).stdout.strip()


def test_a_new_binary_restarts_the_operators_unit(host, tmp_path):
    """A new binary of advisory_sync restarts agent-advisory-sync.service (not a
    kf-advisory_sync.service, which does not exist and was tolerated silently before)."""
    before = _main_pid(host, UNIT)
    executor_before = _main_pid(host, "kf-executor.service")
    assert host.service(UNIT).is_running and before != "0"  # control: a running unit
    # A version of its own per run, so that a re-run of the suite installs a new binary again.
    rc, output = _run_verified_binary(host, tmp_path, f"0.22.2-advisory{int(time.time())}")
    assert rc == 0, output[-3000:]
    assert host.file("/opt/kernelfence/bin/advisory_sync/advisory-tool/current/advisory-tool"
                     ).exists
    assert host.service(UNIT).is_running
    assert _main_pid(host, UNIT) != before, "the operator's unit was not restarted"
    # The executor's binary did not change: its service was left alone.
    assert _main_pid(host, "kf-executor.service") == executor_before
    assert host.run("systemctl show -p LoadState --value kf-advisory_sync.service"
                    ).stdout.strip() == "not-found"


def test_a_named_unit_that_does_not_exist_fails_before_any_copy(host, tmp_path):
    """`unit:` naming a unit the host does not have: the play fails naming the component and
    the unit before anything is copied (before: the binary was installed and the restart of
    kf-advisory_sync.service failed silently)."""
    tree = ("find /opt/kernelfence/bin -printf '%p %y %m\\n' | sort; "
            "cat /opt/kernelfence/bin/inventory.json")
    before = host.run(tree).stdout
    pid = _main_pid(host, UNIT)
    rc, output = _run_verified_binary(host, tmp_path, "0.22.2-absent",
                                      "agent-kf-absent.service")
    assert rc == 2, output[-3000:]
    assert ("kernelfence_components[advisory_sync].unit: agent-kf-absent.service does not exist "
            "on this host (LoadState=not-found)") in output, output[-3000:]
    assert "Fix: install that unit first, or remove `unit`" in output, output[-3000:]
    assert host.run(tree).stdout == before
    assert _main_pid(host, UNIT) == pid
