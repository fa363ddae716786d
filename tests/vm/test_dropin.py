"""A unit the operator already has, hardened by kernelfence's drop-in only (advisory_sync)."""

import hashlib

from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import threshold
from conftest import REPO, ns_ids, proc_status, systemd_version, unit_pids

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
