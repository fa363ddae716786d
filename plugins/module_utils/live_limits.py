# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The resource limits the kernel enforces on a running component, and the model's promise.

Live values come from the kernel only: the cgroup v2 files of the process's own cgroup
(`/proc/PID/cgroup`'s `0::` line, under the cgroup2 mount), the process's rlimits
(`/proc/PID/limits`), its `oom_score_adj`, and the `size=` of the tmpfs mounted at each scratch
path in its mount namespace (`/proc/PID/mountinfo`). A cgroup file that is absent means the
controller is not enabled for that cgroup: it is reported as such, never guessed.

Expected values come from the unit's rendered directives (hardening.service_directives), in the
form the kernel shows them, after the same conversions systemd and the kernel make:
- memory sizes in bytes are rounded down to the page size (the kernel keeps pages); a
  percentage is resolved as systemd's physical_memory_scale() does: the host's pages
  (MemTotal / page size, capped by the root cgroup's memory.max when there is one) times the
  permyriad, divided by 10000, rounded down, times the page size. `infinity` is `max`.
- a percentage TasksMax= is systemd's system_tasks_max_scale(): the smallest of
  kernel.threads-max, kernel.pid_max - 1 and 4194303, times the permyriad, divided by 10000.
- CPUQuota=P% is `cpu.max` "P*1000 100000" (the default 100 ms period); unset is "max 100000".
- IOWeight=N is the "default N" line of `io.weight`.
- a tmpfs size is rounded up to whole pages and shown in KiB (`size=65536k`); a tmpfs without a
  size= option has the kernel's default, half of the host's pages.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction

from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    SCRATCH,
    parse_size,
)

# cgroup v2 files read per cgroup, with the controller that provides each.
CGROUP_FILES = {
    "memory.max": "memory", "memory.high": "memory", "memory.low": "memory",
    "memory.swap.max": "memory", "pids.max": "pids", "cpu.weight": "cpu", "cpu.max": "cpu",
    "io.weight": "io",
}
# Directive -> the cgroup file it is written to.
DIRECTIVE_FILES = {
    "MemoryMax": "memory.max", "MemoryHigh": "memory.high", "MemoryLow": "memory.low",
    "MemorySwapMax": "memory.swap.max", "TasksMax": "pids.max", "CPUWeight": "cpu.weight",
    "CPUQuota": "cpu.max", "IOWeight": "io.weight",
}
# What systemd writes when the directive is not set (its defaults for a unit whose controller
# is enabled by another directive).
UNSET = {"memory.high": "max", "memory.low": "0", "memory.max": "max", "memory.swap.max": "max",
         "pids.max": "max", "cpu.max": "max 100000"}
# /proc/PID/limits rows read, by the rlimit's name.
RLIMITS = {"RLIMIT_NOFILE": "Max open files", "RLIMIT_CORE": "Max core file size"}
RLIMIT_DIRECTIVES = {"LimitNOFILE": "RLIMIT_NOFILE", "LimitCORE": "RLIMIT_CORE"}
TASKS_MAX = 4194303  # systemd's TASKS_MAX: the kernel's PID_MAX_LIMIT - 1
CPU_PERIOD_USEC = 100000
# The order of the limit columns (check names) in the audit matrix.
LIMIT_NAMES = (*CGROUP_FILES, *RLIMITS, "oom_score_adj", *(f"tmpfs {p}" for p in SCRATCH))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def cgroup2_root(cgroup_root: str = "/sys/fs/cgroup") -> str:
    """Where the cgroup2 hierarchy is: cgroup_root itself (unified) or its `unified`
    directory (hybrid hierarchy, where the v1 controllers hold memory, pids, cpu and io)."""
    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        return cgroup_root
    unified = os.path.join(cgroup_root, "unified")
    return unified if os.path.exists(os.path.join(unified, "cgroup.controllers")) else cgroup_root


def cgroup_path(cgroup_lines: list[str]) -> str | None:
    """The cgroup v2 path of a process from its /proc/PID/cgroup lines (the `0::` line)."""
    for line in cgroup_lines:
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def read_cgroup(path: str, cgroup_root: str = "/sys/fs/cgroup") -> dict:
    """The limit files of one cgroup: {file: first line, or None when absent}, the directory
    and whether it exists at all."""
    directory = os.path.join(cgroup2_root(cgroup_root), path.lstrip("/"))
    exists = os.path.isdir(directory)
    files: dict[str, str | None] = {}
    for name in CGROUP_FILES:
        text = _read(os.path.join(directory, name)) if exists else None
        if text is None:
            files[name] = None
        elif name == "io.weight":
            files[name] = next((ln.strip() for ln in text.splitlines()
                                if ln.startswith("default ")), text.strip())
        else:
            files[name] = text.strip()
    return {"path": path, "directory": directory, "exists": exists, "files": files}


def parse_limits(text: str) -> dict[str, str | None]:
    """SOFT:HARD of the rlimits in RLIMITS from /proc/PID/limits text (None when absent)."""
    out: dict[str, str | None] = {name: None for name in RLIMITS}
    for name, row in RLIMITS.items():
        match = re.search(rf"^{re.escape(row)}\s+(\S+)\s+(\S+)", text, re.MULTILINE)
        if match:
            out[name] = f"{match.group(1)}:{match.group(2)}"
    return out


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, paths: tuple[str, ...] = SCRATCH) -> dict[str, dict | None]:
    """Per path, the file system mounted on it (the last, topmost mount listed there):
    {fstype, size: the size= option or None}; None when nothing is mounted on the path."""
    found: dict[str, dict | None] = {path: None for path in paths}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point not in found:
            continue
        fstype, _source, options = [*right.split(), "", "", ""][:3]
        size = next((o[5:] for o in options.split(",") if o.startswith("size=")), None)
        found[point] = {"fstype": fstype, "size": size}
    return found


def read_process(pid: int, proc_root: str = "/proc") -> dict:
    """A process's rlimits, oom_score_adj, scratch mounts and cgroup path (None: unreadable,
    e.g. the process exited)."""
    base = f"{proc_root.rstrip('/')}/{pid}"
    limits = _read(f"{base}/limits")
    oom = _read(f"{base}/oom_score_adj")
    mounts = _read(f"{base}/mountinfo")
    cgroup = _read(f"{base}/cgroup")
    return {"pid": pid,
            "rlimits": parse_limits(limits) if limits is not None else None,
            "oom_score_adj": oom.strip() if oom is not None else None,
            "mounts": parse_mountinfo(mounts) if mounts is not None else None,
            "cgroup": cgroup_path(cgroup.splitlines()) if cgroup is not None else None}


def host_facts(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
               page_size: int | None = None) -> dict:
    """What systemd resolves percentages against, read from the host the units run on:
    physical memory (MemTotal, capped by the root cgroup's memory.max as systemd does), the
    page size and the system's task maximum."""
    page = page_size or os.sysconf("SC_PAGE_SIZE")
    meminfo = _read(f"{proc_root.rstrip('/')}/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    memory = int(match.group(1)) * 1024 if match else None
    root_max = _read(os.path.join(cgroup2_root(cgroup_root), "memory.max"))
    if memory is not None and root_max and root_max.strip().isdigit():
        memory = min(memory, int(root_max) // page * page)
    tasks = TASKS_MAX
    for name, minus in (("threads-max", 0), ("pid_max", 1)):
        text = _read(f"{proc_root.rstrip('/')}/sys/kernel/{name}")
        if text and text.strip().isdigit() and int(text) - minus > 0:
            tasks = min(tasks, int(text) - minus)
    return {"memory": memory, "page_size": page, "tasks_max": tasks}


def permyriad(text: str) -> int:
    """A percentage with up to two decimals as parts per 10000, as systemd parses it."""
    whole, _dot, frac = text.strip().removesuffix("%").partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def memory_bytes(value: str, host: dict) -> str:
    """What a memory cgroup file shows for a Memory*= value."""
    text = str(value).strip()
    if text == "infinity":
        return "max"
    page = host["page_size"]
    if text.endswith("%"):
        if host.get("memory") is None:
            raise ValueError(f"{text}: the host's MemTotal is unknown, a percentage cannot be "
                             "resolved")
        pages = host["memory"] // page
        return str(pages * permyriad(text) // 10000 * page)
    match = re.match(r"^([0-9]+)(?:[.]([0-9]+))?([KMGT]?)$", text)
    if not match:
        return str(int(parse_size("memory", text)[1]) // page * page)
    factor = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}[match.group(3)]
    amount = Fraction(int(match.group(1))) + (
        Fraction(int(match.group(2)), 10 ** len(match.group(2))) if match.group(2) else 0)
    return str(int(amount * factor) // page * page)


def tasks_value(value: str, host: dict) -> str:
    text = str(value).strip()
    if text == "infinity":
        return "max"
    if text.endswith("%"):
        return str(host["tasks_max"] * permyriad(text) // 10000)
    return str(int(text))


def tmpfs_size(value: str, host: dict) -> str:
    """The size= option the kernel shows for a tmpfs of this size (whole pages, in KiB)."""
    page = host["page_size"]
    amount = int(parse_size("size", value, percent=False, infinity=False)[1])
    pages = -(-amount // page)
    return f"{pages * page // 1024}k"


def expected_limits(directives: list, host: dict) -> dict[str, dict]:
    """Per limit name (LIMIT_NAMES), what the kernel must show for a unit with these
    [Service] directives: {expected, directive}. Limits the directives do not set are left out,
    except the cgroup files systemd writes a default to once the controller is enabled."""
    values: dict[str, str] = {}
    scratch: dict[str, str] = {}
    for key, value in directives:
        if key == "TemporaryFileSystem":
            path, _sep, options = str(value).partition(":")
            size = next((o[5:] for o in options.split(",") if o.startswith("size=")), None)
            if size:
                scratch[path] = size
        else:
            values[key] = str(value)
    out: dict[str, dict] = {}
    memory = any(k in values for k in ("MemoryMax", "MemoryHigh", "MemoryLow", "MemorySwapMax"))
    for directive, name in DIRECTIVE_FILES.items():
        value = values.get(directive)
        if value is None:
            if ((name.startswith("memory.") and memory)
                    or (name == "cpu.max" and "CPUWeight" in values)):
                out[name] = {"expected": UNSET[name], "directive": f"{directive}= unset"}
            continue
        if name.startswith("memory."):
            shown = memory_bytes(value, host)
        elif name == "pids.max":
            shown = tasks_value(value, host)
        elif name == "cpu.max":
            shown = f"{int(value.rstrip('%')) * 1000} {CPU_PERIOD_USEC}"
        elif name == "io.weight":
            shown = f"default {int(value)}"
        else:
            shown = str(int(value))
        out[name] = {"expected": shown, "directive": f"{directive}={value}"}
    for directive, name in RLIMIT_DIRECTIVES.items():
        if directive in values:
            soft, _sep, hard = values[directive].partition(":")
            out[name] = {"expected": f"{soft}:{hard or soft}".replace("infinity", "unlimited"),
                         "directive": f"{directive}={values[directive]}"}
    if "OOMScoreAdjust" in values:
        out["oom_score_adj"] = {"expected": str(int(values["OOMScoreAdjust"])),
                                "directive": f"OOMScoreAdjust={values['OOMScoreAdjust']}"}
    for path, size in scratch.items():
        out[f"tmpfs {path}"] = {"expected": f"tmpfs size={tmpfs_size(size, host)}",
                                "directive": f"TemporaryFileSystem={path}:...size={size}"}
    return out


def _default_tmpfs(host: dict) -> str:
    page = host["page_size"]
    if host.get("memory") is None:
        return "?"
    return f"{host['memory'] // page // 2 * page // 1024}k"


def observed_limits(process: dict, cgroup: dict | None, host: dict) -> dict[str, str]:
    """Per limit name, what the kernel shows for one process (absent files and mounts say
    why, in words that cannot be mistaken for a value)."""
    out: dict[str, str] = {}
    for name, controller in CGROUP_FILES.items():
        if cgroup is None or process.get("cgroup") is None:
            out[name] = "no cgroup v2 path in /proc/PID/cgroup"
        elif not cgroup["exists"]:
            out[name] = f"cgroup {cgroup['path']} not found"
        elif cgroup["files"][name] is None:
            out[name] = f"absent: {controller} controller not enabled"
        else:
            out[name] = cgroup["files"][name]
    for name in RLIMITS:
        rlimits = process.get("rlimits")
        out[name] = "unreadable" if rlimits is None else (rlimits[name] or "absent")
    out["oom_score_adj"] = process.get("oom_score_adj") or "unreadable"
    mounts = process.get("mounts")
    for path in SCRATCH:
        name = f"tmpfs {path}"
        if mounts is None:
            out[name] = "unreadable"
        elif mounts.get(path) is None:
            out[name] = "no mount (the host's directory)"
        elif mounts[path]["fstype"] != "tmpfs":
            out[name] = f"{mounts[path]['fstype']}, not tmpfs"
        elif mounts[path]["size"] is None:
            out[name] = f"tmpfs size={_default_tmpfs(host)} (no size=: half of memory)"
        else:
            out[name] = f"tmpfs size={mounts[path]['size']}"
    return out


def _same(name: str, expected: str, observed: str) -> bool:
    if name.startswith("tmpfs ") and "(no size=" in observed:
        return expected == observed.split(" (", 1)[0]
    return expected == observed


def compare_limits(expected: dict[str, dict], processes: list[dict],
                   cgroups: dict[str, dict], host: dict) -> list[dict]:
    """One result per expected limit: {name, expected, observed (distinct values over the
    processes, in order), directive, passed}. No process: nothing observed, not passed."""
    observed = [observed_limits(p, cgroups.get(p.get("cgroup") or ""), host) for p in processes]
    results = []
    for name in LIMIT_NAMES:
        if name not in expected:
            continue
        want = expected[name]["expected"]
        seen: list[str] = []
        for values in observed:
            if values[name] not in seen:
                seen.append(values[name])
        results.append({"name": name, "expected": want, "observed": seen,
                        "directive": expected[name]["directive"],
                        "passed": bool(seen) and all(_same(name, want, v) for v in seen)})
    return results


def read_live(pids: list[int], proc_root: str = "/proc",
              cgroup_root: str = "/sys/fs/cgroup") -> tuple[list[dict], dict[str, dict]]:
    """The live records of the processes and of each distinct cgroup they are in."""
    # A process that exited between the listing and the read has nothing left to show.
    processes = [p for p in (read_process(pid, proc_root) for pid in pids)
                 if any(p[k] is not None for k in ("rlimits", "oom_score_adj", "mounts",
                                                   "cgroup"))]
    cgroups = {}
    for process in processes:
        path = process["cgroup"]
        if path is not None and path not in cgroups:
            cgroups[path] = read_cgroup(path, cgroup_root)
    return processes, cgroups


def limit_command(name: str) -> str:
    """The command that shows a limit, for the audit's evidence."""
    if name in CGROUP_FILES:
        return f"cat /sys/fs/cgroup/$(cgroup of PID)/{name}"
    if name in RLIMITS:
        return f"grep '{RLIMITS[name]}' /proc/PID/limits"
    if name == "oom_score_adj":
        return "cat /proc/PID/oom_score_adj"
    return f"grep ' {name.split()[1]} ' /proc/PID/mountinfo (size=)"


def model_directives(record: dict) -> list:
    """The [Service] directives of a normalize_components record (the resource lines do not
    depend on the systemd version)."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
        NATIVE_PID_NAMESPACE,
        service_directives,
    )

    return service_directives(record, NATIVE_PID_NAMESPACE, record.get("client_of"))


def resources_directives(resources: dict) -> list:
    """The directives of a partial `resources` mapping (the model's field names), each value
    checked as the model checks it; `reasons` (a normalized record's) is ignored. Raises
    resource_limits.ResourceError naming the field."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
        DIRECTIVES,
        FIELDS,
        ResourceError,
        _check_field,
    )

    given = {k: v for k, v in resources.items() if k != "reasons" and v is not None}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise ResourceError("", f"unknown field(s) {unknown}", f"use {', '.join(FIELDS)}")
    out = []
    for field, value in given.items():
        value = _check_field(field, value)
        if field in DIRECTIVES:
            out.append((DIRECTIVES[field], value))
        elif field == "tmp_size":
            out += [("TemporaryFileSystem", f"{path}:size={value}") for path in SCRATCH]
    return out


def component_unit(record: dict) -> str:
    return record.get("unit") or f"kf-{record['name']}.service"


def component_limits(records: list[dict], pids_by_unit: dict[str, list[int]],
                     proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                     host: dict | None = None) -> dict[str, dict]:
    """Per component of the model whose unit is in pids_by_unit: its unit, the PIDs read,
    each limit's result (compare_limits) and whether all passed."""
    host = host or host_facts(proc_root, cgroup_root)
    out = {}
    for record in records:
        unit = component_unit(record)
        if unit not in pids_by_unit:
            continue
        pids = pids_by_unit[unit]
        processes, cgroups = read_live(pids, proc_root, cgroup_root)
        checks = compare_limits(expected_limits(model_directives(record), host), processes,
                                cgroups, host)
        out[record["name"]] = {"unit": unit, "pids": pids, "checks": checks,
                               "passed": bool(pids) and all(c["passed"] for c in checks)}
    return out
