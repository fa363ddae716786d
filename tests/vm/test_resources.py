"""A compromised executor cannot starve, evict or fill up the others (issue 18).

Each load runs from inside the executor's real confinement, as the attack suite runs its probe:
in a runtime sibling of kf-executor.service (its own `systemctl cat` text with every sandboxing,
identity and resource directive, only the command replaced; attack_plan.sibling_unit). The
same load as the executor's user in a plain unit (attack_plan.baseline_unit) is the control: it
must reach further, which shows the load was real. The other components' answers are timed from
outside during the loads. Every load is bounded in size and time and ends by itself
(tests/vm/resource_load.py). A last check runs the loads in a confinement rendered from a
deliberately loosened model, and the same judgements must fail there.

Figures are printed as `RESOURCES <host> ...` lines for the README.
"""

import base64
import json
import re
import statistics
import time
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.attack_plan import (
    baseline_unit,
    sibling_unit,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    service_directives,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    DIRECTIVES,
    parse_size,
)
from conftest import full

HERE = Path(__file__).resolve().parent
LOAD_DIR = "/run/kf-resources"
LOAD = f"{LOAD_DIR}/load.py"
UNITS = "/run/systemd/system"
MODEL_SOCKET = "/run/kernelfence/model_backend/model.sock"
ORCH_SOCKET = "/run/kernelfence/orchestrator/orchestrator.sock"
RESIDENT_MIB = 300  # the model backend's stand-in for its weights
WORK = 20000  # SHA-256 rounds per CPU-bound request (about 0.1-0.5 s under TCG)
MEMORY_CAP = 768  # MiB: above the executor's 512M, below what the 2 GiB guest can give
TASKS_CAP = 300
FILES_CAP = 8192
BASELINE_DISK_MIB = 256

TIMER = """
import json, socket, sys, time
path, count, key = sys.argv[1], int(sys.argv[2]), sys.argv[4]
request = sys.argv[3].encode() + b"\\n"
out = []
for _ in range(count):
    start = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(path)
            s.sendall(request)
            data = b""
            while not data.endswith(b"\\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        ok = key in json.loads(data)
    except (OSError, ValueError):
        ok = False
    out.append({"seconds": time.monotonic() - start, "ok": ok})
print(json.dumps(out))
"""


def executor(components):
    return next(r for r in components if r["name"] == "executor")


def write(host, path, text, mode="0644"):
    data = base64.b64encode(text.encode()).decode()
    cmd = host.run("echo %s | base64 -d > %s && chmod %s %s", data, path, mode, path)
    assert cmd.rc == 0, cmd.stderr


@pytest.fixture(scope="module")
def lab(host, components):
    """The load script on the guest, the model backend holding RESIDENT_MIB resident; all
    removed and the model backend restarted as deployed afterwards."""
    host.run("install -d -m 0755 %s", LOAD_DIR)
    write(host, LOAD, (HERE / "resource_load.py").read_text())
    write(host, f"{LOAD_DIR}/timer.py", TIMER)
    dropin = "/run/systemd/system/kf-model_backend.service.d"
    host.run("install -d -m 0755 %s", dropin)
    write(host, f"{dropin}/50-kf-resident.conf",
          f"[Service]\nEnvironment=KF_MODEL_RESIDENT_MIB={RESIDENT_MIB}\n")
    assert host.run("systemctl daemon-reload && systemctl restart kf-model_backend.service").rc == 0
    resident = 0
    for _ in range(60):
        resident = int(host.run("cat /sys/fs/cgroup/system.slice/kf-model_backend.service/"
                                "memory.current").stdout.strip() or 0)
        if resident >= RESIDENT_MIB * 1024 * 1024 and answers(host, 1, {"prompt": "x"})[0]["ok"]:
            break
        time.sleep(1)
    assert resident >= RESIDENT_MIB * 1024 * 1024, resident
    yield {"executor": executor(components), "components": components}
    host.run("rm -rf %s %s", dropin, LOAD_DIR)
    host.run("systemctl daemon-reload && systemctl restart kf-model_backend.service")


def answers(host, count, request, socket_path=MODEL_SOCKET, key="answer"):
    """Each request timed from outside (the guest's root, one connection per request)."""
    cmd = host.run("python3 %s/timer.py %s %s %s %s", LOAD_DIR, socket_path, str(count),
                   json.dumps(request), key)
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def confined_text(host, record, argv, result, merged=None):
    merged = merged or host.run("systemctl cat --no-pager kf-executor.service").stdout
    return sibling_unit(merged, record, argv, result)


def start(host, name, text, block=True):
    write(host, f"{UNITS}/{name}", text)
    host.run("systemctl daemon-reload")
    if block:
        return host.run("systemctl start %s", name)
    return host.run("systemctl start --no-block %s", name)


def wait_inactive(host, name, seconds=300):
    for _ in range(seconds):
        state = host.run("systemctl is-active %s", name).stdout.strip()
        if state not in ("active", "activating", "deactivating"):
            return state
        time.sleep(1)
    raise AssertionError(f"{name} still running after {seconds} s")


def finish(host, name, result):
    """The last JSON line of the load, the unit's Result; the unit is removed."""
    wait_inactive(host, name)
    shown = host.run("systemctl show -P Result %s", name).stdout.strip()
    lines = [ln for ln in host.run("cat %s", result).stdout.splitlines() if ln.startswith("{")]
    host.run("systemctl stop %s; systemctl reset-failed %s; rm -f %s/%s %s", name, name, UNITS,
             name, result)
    host.run("systemctl daemon-reload")
    assert lines, f"{name} printed nothing (Result={shown})"
    return json.loads(lines[-1]), shown


def run_load(host, record, kind, cap, seconds, *paths, baseline=False, merged=None, block=True):
    name = f"kf-res-{kind}{'-baseline' if baseline else ''}.service"
    result = f"{LOAD_DIR}/{kind}{'-baseline' if baseline else ''}.json"
    argv = ["/usr/bin/python3", LOAD, kind, str(cap), str(seconds), *paths]
    text = (baseline_unit(record, argv, result) if baseline
            else confined_text(host, record, argv, result, merged))
    if kind == "memory" and "[Service]\n" in text:
        # The unit outlives the OOM kill of the hog so its reporter can say how far it got:
        # with systemd's OOMPolicy=stop the stop's SIGTERM reaches bubblewrap, PID 1 of the
        # workload's namespace on systemd 252, whose exit SIGKILLs the reporter before it
        # reports. The bound under test (MemoryMax= and the OOM kill in this cgroup) is kept.
        text = text.replace("[Service]\n", "[Service]\nOOMPolicy=continue\n", 1)
    start(host, name, text, block=block)
    return name, result


def unlimited_cap(host):
    """MiB a load without a memory limit may take: below what the guest has available."""
    available = int(re.search(r"MemAvailable:\s+(\d+)", host.file("/proc/meminfo")
                              .content_string).group(1)) // 1024
    return min(MEMORY_CAP, available - 200)


def kernel_log_since(host, since):
    return host.run("journalctl -k --no-pager -o cat --since @%s", str(since)).stdout


def limit_bytes(record, field):
    return parse_size(field, record["resources"][field])[1]


# ---- the judgements (also applied to the loosened confinement, where they must fail) ----

def judge_memory(load, record, klog):
    limit = limit_bytes(record, "memory_max") / (1024 * 1024)
    assert load["memory_events"].get("oom_kill", 0) >= 1, load
    assert load["reached_mib"] <= limit, load
    assert "Memory cgroup out of memory" in klog, klog[-2000:]
    assert not re.search(r"(?<!Memory cgroup )Out of memory: Kill", klog), klog[-2000:]


def judge_tasks(load, record):
    assert load["refused"] == "EAGAIN", load
    assert load["forked"] < int(record["resources"]["tasks_max"]), load


def judge_files(load, record):
    limit = int(record["resources"]["limit_nofile"].split(":")[-1])
    assert load["refused"] == "EMFILE", load
    assert load["highest"] == limit - 1, load


def judge_disk(load, paths):
    for path in paths:
        assert load["paths"][path]["refused"] in ("ENOSPC", "EDQUOT"), (path, load)


# ---- the proofs ----

def test_memory_hog_is_killed_in_its_own_cgroup_and_the_model_keeps_answering(host, lab):
    record = lab["executor"]
    pid_before = host.run("systemctl show -P MainPID kf-model_backend.service").stdout.strip()
    idle = answers(host, 10, {"prompt": "x"})
    since = int(host.run("date +%s").stdout) - 1
    # Up to 240 s: above memory_high the kernel throttles the hog before it reaches memory_max.
    name, result = run_load(host, record, "memory", MEMORY_CAP, 240, block=False)
    during = answers(host, 10, {"prompt": "x"})
    load, unit_result = finish(host, name, result)
    klog = kernel_log_since(host, since)
    print(f"RESOURCES {host.backend.get_hostname()} memory: confined reached "
          f"{load['reached_mib']} MiB of {MEMORY_CAP}, events {load['memory_events']}, "
          f"Result={unit_result}; model idle median "
          f"{statistics.median(r['seconds'] for r in idle):.3f}s, during median "
          f"{statistics.median(r['seconds'] for r in during):.3f}s worst "
          f"{max(r['seconds'] for r in during):.3f}s")
    judge_memory(load, record, klog)
    assert all(r["ok"] for r in idle + during), during
    # The model backend was never killed or restarted and still holds its resident memory.
    assert host.run("systemctl show -P MainPID kf-model_backend.service").stdout.strip() == \
        pid_before
    current = int(host.run("cat /sys/fs/cgroup/system.slice/kf-model_backend.service/"
                           "memory.current").stdout)
    assert current >= RESIDENT_MIB * 1024 * 1024
    # Control: the same load in a plain unit gets further (capped below what the guest has
    # free, so that the control itself never calls the global OOM killer).
    cap = unlimited_cap(host)
    assert cap > load["reached_mib"] + 32, (cap, load)
    name, result = run_load(host, record, "memory", cap, 120, baseline=True)
    control, _ = finish(host, name, result)
    print(f"RESOURCES {host.backend.get_hostname()} memory control: reached "
          f"{control['reached_mib']} MiB")
    assert control["reached_mib"] > load["reached_mib"], (control, load)


@full
def test_cpu_spin_leaves_the_model_backend_its_speed(host, lab):
    record = lab["executor"]
    workers = 4 * int(host.run("nproc").stdout)
    idle = answers(host, 10, {"work": WORK})
    name, result = run_load(host, record, "cpu", workers, 40, block=False)
    time.sleep(3)
    during = answers(host, 12, {"work": WORK})
    load, _ = finish(host, name, result)
    idle_median = statistics.median(r["seconds"] for r in idle)
    during_median = statistics.median(r["seconds"] for r in during)
    usage = int(re.search(r"usage_usec (\d+)", load["cpu_stat"]).group(1))
    print(f"RESOURCES {host.backend.get_hostname()} cpu: {load['workers']} spinners used "
          f"{usage / 1e6:.1f} CPU-s in {load['seconds']} s; model work idle median "
          f"{idle_median:.3f}s worst {max(r['seconds'] for r in idle):.3f}s, during median "
          f"{during_median:.3f}s worst {max(r['seconds'] for r in during):.3f}s")
    assert all(r["ok"] for r in idle + during)
    assert idle_median > 0.02, "the fixed work is too small to measure"
    # The load was real: the spinners took at least half a CPU over the run.
    assert usage >= 0.5 * load["seconds"] * 1e6, load
    assert during_median <= 1.5 * idle_median, (idle_median, during_median)


def test_fork_loop_stops_at_tasks_max_and_the_orchestrator_still_starts_jobs(host, lab):
    record = lab["executor"]
    name, result = run_load(host, record, "tasks", TASKS_CAP, 90, block=False)
    for _ in range(60):  # the first line is written once forking was refused
        if host.run("grep -c forked %s", result).stdout.strip() == "1":
            break
        time.sleep(1)
    job = answers(host, 1, {"goal": "audit dependencies"}, ORCH_SOCKET, key="signature")
    load, _ = finish(host, name, result)
    print(f"RESOURCES {host.backend.get_hostname()} tasks: forked {load['forked']} "
          f"(pids.max {load['pids_max']}, refused {load['refused']}); orchestrator job "
          f"{job[0]['seconds']:.1f}s ok={job[0]['ok']}")
    judge_tasks(load, record)
    assert load["pids_max"] == record["resources"]["tasks_max"]
    assert job[0]["ok"], job
    name, result = run_load(host, record, "tasks", TASKS_CAP, 20, baseline=True)
    control, _ = finish(host, name, result)
    print(f"RESOURCES {host.backend.get_hostname()} tasks control: forked {control['forked']}")
    assert control["forked"] > load["forked"], (control, load)


@full
def test_disk_fill_ends_in_enospc_under_every_writable_path(host, lab):
    record = lab["executor"]
    paths = ["/tmp", "/var/tmp", "/dev/shm", record["state_dir"], record["log_dir"],
             *record["state_paths"]]
    # The scratch mounts are memory; the disk bound is the images' sizes.
    bound = (limit_bytes(record, "state_size") * (1 + len(record["state_paths"]))
             + limit_bytes(record, "log_size"))
    free_before = int(host.run("df --output=avail -B1 / | tail -1").stdout)
    state_file = "/var/lib/kernelfence/orchestrator/last-result.json"
    began = int(host.run("date +%s").stdout)
    name, result = run_load(host, record, "disk", 1024, 240, *paths, block=False)
    job = answers(host, 1, {"goal": "audit dependencies"}, ORCH_SOCKET, key="signature")
    written = host.run("stat -c %%Y %s", state_file).stdout.strip()
    free_min = free_before
    while host.run("systemctl is-active %s", name).stdout.strip() in ("active", "activating"):
        free_min = min(free_min, int(host.run("df --output=avail -B1 / | tail -1").stdout))
        time.sleep(1)
    load, _ = finish(host, name, result)
    print(f"RESOURCES {host.backend.get_hostname()} disk: "
          + ", ".join(f"{p} {v['written_mib']} MiB {v['refused']}"
                      for p, v in load["paths"].items())
          + f"; host free before {free_before >> 20} MiB, lowest {free_min >> 20} MiB")
    judge_disk(load, paths)
    assert job[0]["ok"] and int(written) >= began, (job, written, began)
    assert free_min >= free_before - bound, (free_before, free_min, bound)
    # Control: the same fill as the executor's user in a plain unit is not stopped.
    name, result = run_load(host, record, "disk", BASELINE_DISK_MIB, 120, "/var/tmp",
                            baseline=True)
    control, _ = finish(host, name, result)
    print(f"RESOURCES {host.backend.get_hostname()} disk control: /var/tmp "
          f"{control['paths']['/var/tmp']}")
    assert control["paths"]["/var/tmp"]["refused"] is None
    assert control["paths"]["/var/tmp"]["written_mib"] > load["paths"]["/var/tmp"]["written_mib"]


def test_descriptor_loop_ends_at_emfile_at_limit_nofile(host, lab):
    record = lab["executor"]
    name, result = run_load(host, record, "files", FILES_CAP, 30)
    load, _ = finish(host, name, result)
    name, result = run_load(host, record, "files", 4096, 30, baseline=True)
    control, _ = finish(host, name, result)
    print(f"RESOURCES {host.backend.get_hostname()} files: opened {load['opened']} "
          f"(highest fd {load['highest']}, {load['refused']}); control opened "
          f"{control['opened']}")
    judge_files(load, record)
    assert control["opened"] > load["opened"], (control, load)


def test_the_live_cgroup_carries_every_limit_of_the_model(host, lab):
    """systemd enabled the controllers the limits need and wrote each limit (the preflight
    only checks that the controllers are offered)."""
    for record in lab["components"]:
        if not record.get("command"):
            continue
        unit = record.get("unit") or f"kf-{record['name']}.service"
        base = f"/sys/fs/cgroup/system.slice/{unit}"
        shown = dict(line.split("=", 1) for line in host.run(
            "systemctl show -p MemoryMax,MemoryHigh,TasksMax,CPUWeight,IOWeight,LimitNOFILE,"
            "OOMScoreAdjust %s", unit).stdout.splitlines() if "=" in line)
        res = record["resources"]
        assert shown["TasksMax"] == res["tasks_max"], (unit, shown)
        assert shown["CPUWeight"] == res["cpu_weight"] and shown["IOWeight"] == res["io_weight"]
        assert shown["OOMScoreAdjust"] == res["oom_score_adjust"]
        assert host.run("cat %s/pids.max", base).stdout.strip() == res["tasks_max"]
        assert host.run("cat %s/cpu.weight", base).stdout.strip() == res["cpu_weight"]
        io = host.run("cat %s/io.weight", base).stdout
        assert f"default {res['io_weight']}" in io, io
        if res["memory_max"].endswith(("K", "M", "G", "T")):
            assert int(host.run("cat %s/memory.max", base).stdout) == \
                limit_bytes(record, "memory_max")
        assert host.run("cat %s/memory.swap.max", base).stdout.strip() == "0"
    enabled = host.run("cat /sys/fs/cgroup/cgroup.subtree_control").stdout.split()
    assert {"memory", "pids", "cpu", "io"} <= set(enabled), enabled


def loosened(host, components):
    """The executor's installed unit with its resource lines replaced by those of a
    deliberately loosened model (no memory, task or descriptor bound)."""
    raw = [{"name": r["name"], "profile": r["profile"], "user": r["user"]} for r in components]
    for entry in raw:
        if entry["name"] == "executor":
            entry["resources"] = {"memory_max": "infinity", "memory_high": None,
                                  "tasks_max": "infinity", "limit_nofile": 65536}
    record = next(r for r in normalize_components(raw) if r["name"] == "executor")
    lines = dict(service_directives(record, 257))
    managed = set(DIRECTIVES.values())
    merged = host.run("systemctl cat --no-pager kf-executor.service").stdout
    out = []
    for line in merged.splitlines():
        key = line.split("=", 1)[0]
        out.append(f"{key}={lines[key]}" if key in managed and key in lines
                   else line if key not in managed else "")
    return "\n".join(out) + "\n", executor(components)


@full
def test_a_loosened_model_fails_the_same_judgements(host, lab):
    """The checks can fail: in a confinement rendered from a model without memory, task and
    descriptor bounds, the memory, tasks and files judgements each fail."""
    merged, record = loosened(host, lab["components"])
    assert "MemoryMax=infinity" in merged and "TasksMax=infinity" in merged
    since = int(host.run("date +%s").stdout) - 1
    name, result = run_load(host, record, "memory", unlimited_cap(host), 120, merged=merged)
    load, _ = finish(host, name, result)
    with pytest.raises(AssertionError):
        judge_memory(load, record, kernel_log_since(host, since))
    name, result = run_load(host, record, "tasks", TASKS_CAP, 10, merged=merged)
    load, _ = finish(host, name, result)
    with pytest.raises(AssertionError):
        judge_tasks(load, record)
    name, result = run_load(host, record, "files", 4096, 10, merged=merged)
    load, _ = finish(host, name, result)
    with pytest.raises(AssertionError):
        judge_files(load, record)
    print(f"RESOURCES {host.backend.get_hostname()} loosened: every judgement failed, as it "
          "must")
