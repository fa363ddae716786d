"""The live resource limits (issue 18 item 4) read from recorded /proc files of processes with
known limits (tools/record_limits_fixtures.py) and a cgroup v2 tree in the kernel's formats,
compared with the example model's executor."""

import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
    LIMIT_NAMES,
    cgroup2_root,
    compare_limits,
    component_limits,
    expected_limits,
    host_facts,
    memory_bytes,
    model_directives,
    parse_mountinfo,
    read_live,
    resources_directives,
    tasks_value,
    tmpfs_size,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    ResourceError,
)

REPO = Path(__file__).resolve().parents[2]
FIX = Path(__file__).parent / "fixtures/limits"
PROC, CGROUP = str(FIX / "proc"), str(FIX / "cgroup")
RECORDED = json.loads((FIX / "roles.json").read_text())
ROLES = RECORDED["roles"]
RECORDS = {r["name"]: r for r in normalize_components(yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text()
)["kernelfence_components"])}
HOST = host_facts(PROC, CGROUP, RECORDED["page_size"])


def results(role: str, record: dict | None = None) -> dict[str, dict]:
    record = record or RECORDS["executor"]
    processes, cgroups = read_live([ROLES[role]], PROC, CGROUP)
    expected = expected_limits(model_directives(record), HOST)
    return {r["name"]: r for r in compare_limits(expected, processes, cgroups, HOST)}


def test_host_facts_are_the_recorded_hosts():
    memtotal = int((FIX / "proc/meminfo").read_text().split()[1]) * 1024
    pid_max = int((FIX / "proc/sys/kernel/pid_max").read_text())
    threads = int((FIX / "proc/sys/kernel/threads-max").read_text())
    want = {"memory": memtotal, "page_size": 4096, "tasks_max": min(threads, pid_max - 1, 4194303)}
    assert want == HOST


def test_matching_limits_pass_every_check():
    got = results("bounded")
    assert list(got) == list(LIMIT_NAMES)  # every limit of the model is checked
    assert [n for n, r in got.items() if not r["passed"]] == []
    assert got["memory.max"]["expected"] == "536870912"  # MemoryMax=512M
    assert got["memory.high"]["observed"] == ["520093696"]  # MemoryHigh=496M
    assert got["memory.low"]["expected"] == "0"  # MemoryLow= unset: systemd writes 0
    assert got["io.weight"]["observed"] == ["default 25"]
    assert got["RLIMIT_NOFILE"]["observed"] == ["1024:1024"]
    assert got["RLIMIT_CORE"]["expected"] == "0:0"
    assert got["oom_score_adj"]["observed"] == ["500"]
    assert got["tmpfs /dev/shm"]["observed"] == ["tmpfs size=65536k"]


def test_loosened_limits_are_flagged_with_expected_and_observed():
    got = results("loosened")
    failed = {n: (r["expected"], r["observed"]) for n, r in got.items() if not r["passed"]}
    assert failed == {
        "memory.max": ("536870912", ["max"]),
        "memory.high": ("520093696", ["max"]),
        "memory.swap.max": ("0", ["max"]),
        "pids.max": ("128", ["max"]),
        "cpu.weight": ("25", ["100"]),
        "io.weight": ("default 25", ["default 100"]),
        "RLIMIT_NOFILE": ("1024:1024", ["16384:16384"]),
        "RLIMIT_CORE": ("0:0", ["unlimited:unlimited"]),
        "oom_score_adj": ("500", ["0"]),
        "tmpfs /tmp": ("tmpfs size=65536k", ["no mount (the host's directory)"]),
        "tmpfs /var/tmp": ("tmpfs size=65536k", ["no mount (the host's directory)"]),
        # The build machine's own /dev/shm: a tmpfs as large as its memory.
        "tmpfs /dev/shm": ("tmpfs size=65536k", ["tmpfs size=24683772k"]),
    }
    assert got["memory.max"]["directive"] == "MemoryMax=512M"


def test_a_missing_controller_file_is_reported_as_such_never_guessed():
    got = results("nocontrollers")
    for name, controller in (("cpu.weight", "cpu"), ("cpu.max", "cpu"), ("io.weight", "io")):
        assert not got[name]["passed"]
        assert got[name]["observed"] == [f"absent: {controller} controller not enabled"]
    assert all(got[n]["passed"] for n in ("memory.max", "memory.high", "memory.swap.max",
                                          "pids.max", "RLIMIT_NOFILE", "tmpfs /tmp"))


def test_no_process_and_an_unknown_cgroup_fail():
    expected = expected_limits(model_directives(RECORDS["executor"]), HOST)
    assert not any(r["passed"] for r in compare_limits(expected, [], {}, HOST))
    processes, _cgroups = read_live([ROLES["bounded"]], PROC, CGROUP)
    got = {r["name"]: r for r in compare_limits(expected, processes, {}, HOST)}
    assert got["memory.max"]["observed"] == ["no cgroup v2 path in /proc/PID/cgroup"]
    processes, cgroups = read_live([ROLES["bounded"]], PROC, str(FIX))
    got = {r["name"]: r for r in compare_limits(expected, processes, cgroups, HOST)}
    assert got["pids.max"]["observed"] == ["cgroup /system.slice/kf-executor.service not found"]
    assert read_live([999999], PROC, CGROUP) == ([], {})  # exited: nothing to show


def test_percentages_resolve_as_systemd_does_against_the_hosts_pages():
    pages = HOST["memory"] // 4096
    # systemd's physical_memory_scale: pages * permyriad / 10000, rounded down, in pages.
    assert memory_bytes("25%", HOST) == str(pages * 2500 // 10000 * 4096)
    assert memory_bytes("25%", HOST) != str(HOST["memory"] // 4)  # not a plain quarter
    assert memory_bytes("12.34%", HOST) == str(pages * 1234 // 10000 * 4096)
    assert memory_bytes("100%", HOST) == str(pages * 4096)
    assert memory_bytes("1000000", HOST) == "999424"  # the kernel keeps whole pages
    assert memory_bytes("1.5G", HOST) == str(3 * 512 * 1024 ** 2)
    assert memory_bytes("infinity", HOST) == "max"
    assert tasks_value("15%", HOST) == str(HOST["tasks_max"] * 1500 // 10000)
    assert tasks_value("infinity", HOST) == "max"
    assert tmpfs_size("10001", HOST) == "12k"  # rounded up to whole pages
    assert tmpfs_size("64M", HOST) == "65536k"


def test_percentage_model_against_the_live_cgroup(tmp_path):
    raw = yaml.safe_load((REPO / "inventory/example/group_vars/kernelfence/components.yml")
                         .read_text())["kernelfence_components"]
    for entry in raw:
        if entry["name"] == "executor":
            entry["resources"] = {"memory_max": "25%", "memory_high": "20%"}
    record = next(r for r in normalize_components(raw) if r["name"] == "executor")
    expected = expected_limits(model_directives(record), HOST)
    assert expected["memory.max"] == {"expected": memory_bytes("25%", HOST),
                                      "directive": "MemoryMax=25%"}
    got = results("bounded", record)
    assert got["memory.max"]["observed"] == ["536870912"] and not got["memory.max"]["passed"]


def test_mountinfo_takes_the_topmost_mount_and_unescapes_paths():
    text = ("22 1 0:20 / /tmp rw - tmpfs tmpfs rw,size=8192k\n"
            "30 22 0:31 / /tmp rw,nosuid shared:1 - tmpfs tmpfs rw,size=65536k,mode=1777\n"
            "31 1 8:1 / /var/tmp rw - ext4 /dev/sda1 rw\n"
            "32 1 0:33 / /srv/a\\040b rw - tmpfs tmpfs rw\n")
    got = parse_mountinfo(text, ("/tmp", "/var/tmp", "/dev/shm", "/srv/a b"))
    assert got == {"/tmp": {"fstype": "tmpfs", "size": "65536k"},
                   "/var/tmp": {"fstype": "ext4", "size": None}, "/dev/shm": None,
                   "/srv/a b": {"fstype": "tmpfs", "size": None}}


def test_hybrid_hierarchy_reads_the_unified_mount(tmp_path):
    (tmp_path / "unified").mkdir()
    assert cgroup2_root(str(tmp_path)) == str(tmp_path)  # neither: the root as given
    (tmp_path / "unified/cgroup.controllers").write_text("hugetlb\n")
    assert cgroup2_root(str(tmp_path)) == str(tmp_path / "unified")
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert cgroup2_root(str(tmp_path)) == str(tmp_path)


def test_component_limits_by_unit():
    got = component_limits(list(RECORDS.values()),
                           {"kf-executor.service": [ROLES["bounded"]],
                            "kf-model_backend.service": [ROLES["loosened"]]},
                           PROC, CGROUP, HOST)
    assert set(got) == {"executor", "model_backend"}
    assert got["executor"]["passed"] and not got["model_backend"]["passed"]
    checks = {c["name"]: c for c in got["model_backend"]["checks"]}
    assert checks["memory.low"]["expected"] == "268435456"  # MemoryLow=256M: kept resident
    assert checks["memory.high"]["expected"] == "max"  # unset for the model backend


def test_partial_resources_policy_checks_only_what_it_names():
    directives = resources_directives({"memory_max": "512M", "tmp_size": "64M",
                                       "reasons": {"memory_max": "ignored"}})
    assert set(expected_limits(directives, HOST)) == {
        "memory.max", "memory.high", "memory.low", "memory.swap.max",
        "tmpfs /tmp", "tmpfs /var/tmp", "tmpfs /dev/shm"}
    with pytest.raises(ResourceError, match="unknown field"):
        resources_directives({"memory_maximum": "1G"})
    with pytest.raises(ResourceError, match="memory_max"):
        resources_directives({"memory_max": "lots"})


def run_module(tmp_path: Path, name: str, args: dict) -> dict:
    """A module run as Ansible runs it (a Python process with its args file)."""
    import os
    import subprocess
    import sys

    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    done = subprocess.run(
        [sys.executable, str(REPO / f"plugins/modules/{name}.py"), str(args_file)],
        capture_output=True, text=True, check=False, timeout=60,
        env=dict(os.environ, PYTHONPATH=f"{REPO / '.collections'}:{REPO}"))
    return json.loads(done.stdout)


def example_model() -> list[dict]:
    return yaml.safe_load((REPO / "inventory/example/group_vars/kernelfence/components.yml")
                          .read_text())["kernelfence_components"]


def test_info_module_reports_live_limits_and_compares_them_with_the_model(tmp_path):
    result = run_module(tmp_path, "process_isolation_info", {
        "pids": [ROLES["bounded"], ROLES["loosened"]], "proc_root": PROC,
        "cgroup_root": CGROUP, "components": example_model()})
    assert not result.get("failed"), result.get("msg")
    assert not result["changed"]
    by_pid = {p["pid"]: p for p in result["processes"]}
    bounded = by_pid[ROLES["bounded"]]["resources"]
    assert bounded["cgroup"] == "/system.slice/kf-executor.service"
    assert bounded["cgroup_files"]["memory.max"] == "536870912"
    assert bounded["rlimits"] == {"RLIMIT_NOFILE": "1024:1024", "RLIMIT_CORE": "0:0"}
    assert bounded["mounts"]["/tmp"] == {"fstype": "tmpfs", "size": "65536k"}
    # The loosened process is in no component's unit: read, not compared.
    assert by_pid[ROLES["loosened"]]["resources"]["cgroup_files"]["memory.max"] == "max"
    assert set(result["limits"]) == {"executor"} and result["limits"]["executor"]["passed"]
    assert result["host"]["memory"] == HOST["memory"]


def test_info_module_host_scan_leaves_limits_out_unless_asked(tmp_path):
    result = run_module(tmp_path, "process_isolation_info", {"proc_root": PROC,
                                                             "cgroup_root": CGROUP})
    assert all("resources" not in p for p in result["processes"]), result.get("msg")
    result = run_module(tmp_path, "process_isolation_info", {
        "proc_root": PROC, "cgroup_root": CGROUP, "resources": True})
    assert all(p["resources"] for p in result["processes"])


def test_info_module_refuses_a_bad_model_by_name(tmp_path):
    model = example_model()
    model[1]["resources"] = {"memory_max": "lots"}
    result = run_module(tmp_path, "process_isolation_info", {
        "pids": [ROLES["bounded"]], "proc_root": PROC, "components": model})
    assert result["failed"] and result["msg"].startswith("components: ")
    assert "memory_max" in result["msg"]


def test_assert_module_passes_matching_limits_and_names_each_loosened_one(tmp_path):
    ok = run_module(tmp_path, "isolation_assert", {
        "pids": [ROLES["bounded"]], "proc_root": PROC, "cgroup_root": CGROUP,
        "components": example_model(), "policy": {}})
    assert not ok.get("failed") and ok["violations"] == [], ok.get("msg")
    bad = run_module(tmp_path, "isolation_assert", {
        "pids": [ROLES["loosened"]], "proc_root": PROC, "cgroup_root": CGROUP,
        "policy": {"resources": {"memory_max": "512M", "tasks_max": 128, "tmp_size": "64M",
                                 "limit_nofile": 1024}}})
    assert bad["failed"]
    fields = {v["field"]: (v["expected"], v["observed"]) for v in bad["violations"]}
    # Only the fields the policy names (memory.high/low/swap.max unset: systemd's defaults).
    assert fields == {
        "resources.memory.max": ("536870912", "max"),
        "resources.pids.max": ("128", "max"),
        "resources.RLIMIT_NOFILE": ("1024:1024", "16384:16384"),
        "resources.tmpfs /tmp": ("tmpfs size=65536k", "no mount (the host's directory)"),
        "resources.tmpfs /var/tmp": ("tmpfs size=65536k", "no mount (the host's directory)"),
        "resources.tmpfs /dev/shm": ("tmpfs size=65536k", "tmpfs size=24683772k"),
    }
    assert "resources.memory.max: expected 536870912, observed max" in bad["msg"]
    missing = run_module(tmp_path, "isolation_assert", {
        "pids": [ROLES["nocontrollers"]], "proc_root": PROC, "cgroup_root": CGROUP,
        "policy": {"resources": {"io_weight": 25}}})
    assert [(v["field"], v["observed"]) for v in missing["violations"]] == [
        ("resources.io.weight", "absent: io controller not enabled")]


def test_assert_module_refuses_a_bad_resources_policy_by_name(tmp_path):
    bad = run_module(tmp_path, "isolation_assert", {
        "pids": [ROLES["bounded"]], "proc_root": PROC, "cgroup_root": CGROUP,
        "policy": {"resources": {"tasks_max": 4}}})
    assert bad["failed"] and bad["msg"].startswith("policy.resources.tasks_max: 4 tasks")
    assert "Fix: give at least 32" in bad["msg"] and "violations" not in bad
    bad = run_module(tmp_path, "isolation_assert", {
        "unit": "kf-nothing.service", "proc_root": PROC, "components": example_model(),
        "policy": {}})
    assert bad["failed"] and bad["msg"].startswith("unit: kf-nothing.service is the unit of no")
