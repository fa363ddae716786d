"""process_isolation_info, isolation_assert, unit_security and the audit, in the booted VM.

All module calls happen in ONE ansible-playbook run (playbooks/isolation_modules.yml, which
also imports playbooks/audit.yml); the tests read its results and check them against the
guest's /proc read independently over SSH.
"""

import json
from xml.etree import ElementTree

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    parse_size,
)
from conftest import REPO, ns_ids, proc_status, run_playbook, systemd_version
from test_bad_input import newer_directive

UNITS = ["kf-orchestrator.service", "kf-executor.service", "kf-model_backend.service"]


@pytest.fixture(scope="module")
def run(host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("isolation")
    results, audit_dir = tmp / "results.json", tmp / "audit"
    proc = run_playbook(host, REPO / "tests/vm/playbooks/isolation_modules.yml",
                        "-e", f"kf_results={results}", "-e", f"kernelfence_audit_dir={audit_dir}",
                        "-e", f"kf_unknown_directive={newer_directive(host)}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {"results": json.loads(results.read_text()), "audit": audit_dir,
            "host": host.backend.get_hostname()}


def test_info_reports_what_proc_shows(host, run):
    info = run["results"]["info"]
    assert not info["changed"]
    init_ns = ns_ids(host, 1)
    for unit in UNITS:
        pids = info["units"][unit]["pids"]
        assert pids, f"{unit}: no process found"
        for pid in pids:
            record = next(p for p in info["processes"] if p["pid"] == pid)
            assert record["unit"] == unit
            # Independent reading of the same process over SSH.
            status = proc_status(host, pid)[0]
            assert [str(record["uids"][k]) for k in ("real", "effective", "saved", "fs")] \
                == status["Uid"].split()
            assert record["uids"]["effective"] != 0
            assert all(v == [] for v in record["capabilities"].values()), record["capabilities"]
            assert record["no_new_privs"] is True
            assert record["seccomp"]["mode"] == "filter" and record["seccomp"]["filters"] >= 1
            assert record["seccomp"]["filters"] == int(status["Seccomp_filters"])
            ns = ns_ids(host, pid)
            for kind in ("ipc", "mnt", "user", "uts"):
                assert record["namespaces"][kind] == ns[kind] != init_ns[kind], (unit, kind)
                assert kind not in record["namespaces_shared_with_init"]
            exe = host.run("readlink /proc/%s/exe", str(pid)).stdout.strip()
            digest = host.run("sha256sum /proc/%s/exe", str(pid)).stdout.split()[0]
            assert record["exe"]["path"] == exe and record["exe"]["sha256"] == digest
            assert record["exe"]["file_capabilities"] is None


def test_host_scan_is_compact_against_the_guest_kernel(host, run):
    """all: true reports full and empty sets as words, judged against the guest kernel's
    cap_last_cap; the masks are /proc's; unit scans (info above) keep names."""
    scan, info = run["results"]["scan"], run["results"]["info"]
    assert scan["capability_format"] == "compact" and info["capability_format"] == "names"
    last = int(host.run("cat /proc/sys/kernel/cap_last_cap").stdout)
    assert scan["cap_last_cap"] == last
    init = next(p for p in scan["processes"] if p["pid"] == 1)
    status = proc_status(host, 1)[0]
    assert init["capability_masks"]["bounding"] == status["CapBnd"]
    # systemd as PID 1 holds every capability of the kernel: one word, not 41 names.
    assert int(status["CapBnd"], 16) == (1 << (last + 1)) - 1
    assert init["capabilities"]["bounding"] == "all" and init["capabilities"]["ambient"] == "none"
    for unit in UNITS:
        for pid in info["units"][unit]["pids"]:
            record = next(p for p in scan["processes"] if p["pid"] == pid)
            assert set(record["capabilities"].values()) == {"none"}, record["capabilities"]
            assert set(record["capability_masks"].values()) == {"0000000000000000"}


def test_components_pass_the_policy_and_the_loosened_unit_fails_with_a_diff(run):
    ok = run["results"]["assert_components"]
    assert not ok.get("failed") and ok["violations"] == [] and len(ok["checked"]) >= 3, ok
    bad = run["results"]["assert_loosened"]
    assert bad["failed"], bad
    fields = {v["field"]: v for v in bad["violations"]}
    assert fields["no_new_privs"]["expected"] is True
    assert fields["no_new_privs"]["observed"] is False
    assert fields["capabilities.ambient"]["observed"] == ["CAP_NET_RAW"]
    assert fields["seccomp"]["observed"]["mode"] == "disabled"
    # PrivateIPC=yes is set on the loosened unit: its ipc namespace is private, so no diff
    # (and systemd gives it a mount namespace for /dev/mqueue); user and uts are the host's.
    assert "namespaces.ipc" not in fields and "namespaces.mnt" not in fields
    assert fields["namespaces.user"]["observed"].startswith("shared with PID 1")
    assert fields["namespaces.uts"]["observed"].startswith("shared with PID 1")
    assert "no_new_privs: expected True, observed False" in bad["msg"]
    assert "capabilities.ambient: expected [], observed ['CAP_NET_RAW']" in bad["msg"]


def test_unit_security_flags_every_ignored_part(host, run):
    bad = run["results"]["bad_unit"]
    assert bad["failed"]
    kinds = {(f["line"], f["kind"]) for f in bad["ignored"]}
    assert (3, "unknown-capability") in kinds
    assert (4, "unknown-directive") in kinds
    assert (5, "unparsable-value") in kinds
    assert any("~@privileged" in f["message"] for f in bad["ignored"] if f["line"] == 5)
    assert f"Unknown key '{newer_directive(host)}'" in bad["msg"]
    assert "unknown capability 'CAP_NET_BIND_SERVIC'" in bad["msg"]
    # Scored although verify found problems; the build features are the guest's, not the
    # controller's: Debian 12's systemd lacks BPF_FRAMEWORK, Debian 13's has it.
    assert bad["exposure"] is not None
    version = systemd_version(host)
    assert bad["systemd_features"]["version"] == version
    unenforced = {(f["line"], f["kind"]) for f in bad["unenforced"]}
    if "BPF_FRAMEWORK" in bad["systemd_features"]["disabled"]:
        assert unenforced == {(7, "unenforced-directive")}
        assert "RestrictNetworkInterfaces=lo is accepted but not enforced" in bad["msg"]
    else:
        assert version >= 257 and unenforced == set()
    live = run["results"]["live_unit"]
    assert live["verified"][0] == "/etc/systemd/system/kf-executor.service"
    assert live["ignored"] == [] and live["exposure"] is not None and live["checks"]


def test_audit_writes_evidence_junit_and_report(host, run):
    audit, name = run["audit"], run["host"]
    evidence = json.loads((audit / f"{name}.json").read_text())
    assert evidence["host"] == name
    versions = evidence["versions"]
    assert versions["systemd"].split()[1] == str(systemd_version(host))
    assert versions["kernel"] == host.run("uname -r").stdout.strip()
    assert versions["libseccomp"] and versions["libseccomp"][0] == "2"
    for item in evidence["checks"]:
        assert {"component", "property", "command", "expected", "observed", "passed"} <= set(item)
    failed = [c for c in evidence["checks"] if not c["passed"]]
    print(f"AUDIT {name}: {len(evidence['checks'])} checks, {len(failed)} failed: "
          + "; ".join(f"{c['component']} {c['property']}: expected {c['expected']}, "
                      f"observed {c['observed']}" for c in failed))
    names = {c["name"] for c in evidence["components"]}
    assert {"orchestrator", "executor", "model_backend"} <= names
    assert failed == [], failed
    # The attack probe ran for the executor (profile executor) and fed the matrix.
    attacks = evidence["attacks"]
    assert len(attacks) >= 80 and {a["component"] for a in attacks} == {"executor"}
    assert [a["attempt"] for a in attacks if not a["passed"]] == []
    assert any(a["control"] for a in attacks) and not all(a["control"] for a in attacks)
    suites = ElementTree.parse(audit / f"{name}.junit.xml").getroot()
    assert int(suites.get("tests")) == len(evidence["checks"]) + len(attacks)
    assert int(suites.get("failures")) == 0
    page = (audit / "report.html").read_text()
    assert "Components &times; properties" in page and f'<td class="name">{name}</td>' in page
    assert "<th>without confinement</th>" in page and "NOT blocked" not in page
    assert '<span class="good">all passed</span>' in page and "control FAILED" not in page
    assert "(UTC) by kernelfence.isolation " in page


def model_limits(record):
    """What the kernel must show for each limit of a component of the example model, worked
    out here from the model's own values (every one absolute, whole pages), not by the
    collection's code."""
    res = record["resources"]

    def size(value):
        return "max" if value in (None, "infinity") else str(int(parse_size("x", value)[1]))

    tmp = f"tmpfs size={int(parse_size('x', res['tmp_size'])[1]) // 1024}k"
    nofile = str(res["limit_nofile"])
    soft, _sep, hard = nofile.partition(":")
    return {"memory.max": size(res["memory_max"]), "memory.high": size(res["memory_high"]),
            "memory.low": "0" if res["memory_low"] is None else size(res["memory_low"]),
            "memory.swap.max": size(res["memory_swap_max"]), "pids.max": str(res["tasks_max"]),
            "cpu.weight": str(res["cpu_weight"]),
            "cpu.max": "max 100000" if res["cpu_quota"] is None
            else f"{int(res['cpu_quota'].rstrip('%')) * 1000} 100000",
            "io.weight": f"default {res['io_weight']}",
            "RLIMIT_NOFILE": f"{soft}:{hard or soft}", "RLIMIT_CORE": "0:0",
            "oom_score_adj": str(res["oom_score_adjust"]),
            "tmpfs /tmp": tmp, "tmpfs /var/tmp": tmp, "tmpfs /dev/shm": tmp}


def test_info_reports_the_live_limits_of_the_model(host, run, components):
    """process_isolation_info reads each component's limits from its cgroup, /proc/PID/limits,
    oom_score_adj and mountinfo; they equal the model, and an independent reading over SSH
    shows the same values."""
    info = run["results"]["info"]
    by_name = {r["name"]: r for r in components}
    for unit in UNITS:
        name = unit.removeprefix("kf-").removesuffix(".service")
        want = model_limits(by_name[name])
        result = info["limits"][name]
        assert result["unit"] == unit and result["pids"] == info["units"][unit]["pids"]
        checks = {c["name"]: c for c in result["checks"]}
        assert set(checks) == set(want), (unit, sorted(checks))
        for limit, value in want.items():
            assert checks[limit]["expected"] == value, (unit, limit, checks[limit])
            assert checks[limit]["observed"] == [value], (unit, limit, checks[limit])
        assert result["passed"], result
        control_group = info["units"][unit]["control_group"]
        for pid in result["pids"]:
            record = next(p for p in info["processes"] if p["pid"] == pid)["resources"]
            assert record["cgroup"] == control_group
            for limit in ("memory.max", "memory.high", "memory.low", "memory.swap.max",
                          "pids.max", "cpu.weight", "cpu.max"):
                shown = host.run("cat /sys/fs/cgroup%s/%s", control_group, limit).stdout.strip()
                assert record["cgroup_files"][limit] == shown == want[limit], (unit, limit)
            io = host.run("cat /sys/fs/cgroup%s/io.weight", control_group).stdout
            assert want["io.weight"] in io.splitlines()
            limits = host.run("cat /proc/%s/limits", str(pid)).stdout
            row = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
            assert ":".join(row.split()[3:5]) == want["RLIMIT_NOFILE"] \
                == record["rlimits"]["RLIMIT_NOFILE"]
            assert host.run("cat /proc/%s/oom_score_adj", str(pid)).stdout.strip() \
                == want["oom_score_adj"] == record["oom_score_adj"]
            for path in ("/tmp", "/var/tmp", "/dev/shm"):
                mounts = host.run("grep ' %s ' /proc/%s/mountinfo", path, str(pid)).stdout
                last = mounts.strip().splitlines()[-1]
                assert " - tmpfs " in last and want[f"tmpfs {path}"].split()[1] in last, \
                    (unit, path, mounts)
                assert record["mounts"][path]["size"] == want[f"tmpfs {path}"].split("=")[1]


def test_assert_passes_the_model_limits_and_names_each_loosened_one(run):
    ok = run["results"]["assert_limits"]
    assert not ok.get("failed") and ok["violations"] == [] and len(ok["checked"]) >= 3, ok
    bad = run["results"]["assert_loosened_limits"]
    assert bad["failed"], bad
    fields = {v["field"]: v for v in bad["violations"]}
    # A transient unit without limits: no memory bound, systemd's default task bound, the
    # host's /tmp, the manager's descriptor limit.
    assert (fields["resources.memory.max"]["expected"],
            fields["resources.memory.max"]["observed"]) == ("536870912", "max")
    assert fields["resources.pids.max"]["expected"] == "128"
    assert fields["resources.pids.max"]["observed"] != "128"
    assert fields["resources.tmpfs /tmp"]["observed"] != "tmpfs size=65536k"
    assert "resources.memory.max: expected 536870912, observed max" in bad["msg"]


def test_audit_has_a_passing_check_per_limit_and_the_limits_grid(run):
    evidence = json.loads((run["audit"] / f"{run['host']}.json").read_text())
    for name in ("orchestrator", "executor", "model_backend"):
        limits = {c["property"]: c for c in evidence["checks"]
                  if c["component"] == name and "directive" in c}
        assert {"memory.max", "pids.max", "RLIMIT_NOFILE", "tmpfs /tmp"} <= set(limits), name
        assert all(c["passed"] for c in limits.values()), limits
    page = (run["audit"] / "report.html").read_text()
    assert "Components &times; resource limits" in page
    assert '<th class="prop"><span>memory.max</span></th>' in page
