#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: process_isolation_info
short_description: Read the isolation of running processes from the kernel
version_added: "0.1.0"
description:
  - Reads C(/proc) for the processes of the given systemd units, the given PIDs, or every
    process, and returns per process and per thread what the kernel enforces, not what a
    configuration claims.
  - Per thread, real/effective/saved/fs uids and gids, supplementary groups, the five capability
    sets (inheritable, permitted, effective, bounding, ambient) as names, NoNewPrivs, the
    seccomp mode and filter count.
  - Per process, the namespace ids and which of them are PID 1's, the cgroup and systemd unit,
    the executable's path, sha256 and file capabilities (the C(security.capability) xattr,
    decoded).
  - With O(compact_capabilities) a capability set that holds every capability the running
    kernel has is the word C(all), an empty set the word C(none), and any other set a list of
    names; the raw hex masks are in C(capability_masks) in either format. On by default for a
    host-wide scan (O(all), or neither O(units) nor O(pids)), where the names are most of the
    result, off for units and PIDs.
  - A process that exits during the scan is listed in RV(vanished); a field the kernel does not
    have (C(Seccomp_filters) before Linux 5.9, time namespaces before 5.6) is null and named in
    the process's C(missing) list.
  - With O(resources) each process also gets its live resource limits, read from the kernel
    only - the limit files of its own cgroup v2 (C(memory.max), C(memory.high), C(memory.low),
    C(memory.swap.max), C(pids.max), C(cpu.weight), C(cpu.max), C(io.weight); an absent file is
    a controller not enabled for that cgroup and is null), its C(RLIMIT_NOFILE) and
    C(RLIMIT_CORE) (C(/proc/PID/limits)), its C(oom_score_adj) and the tmpfs mounted on
    C(/tmp), C(/var/tmp) and C(/dev/shm) in its mount namespace with its C(size=).
  - With O(components) (the component model) the live limits of every component whose unit's
    processes were read are compared with what the model renders into the unit, in
    RV(limits); percentages of memory are resolved against the host's C(MemTotal) and page size
    the way systemd resolves them.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Reads only; check mode returns the same data.
    support: full
  diff_mode:
    description: Changes nothing, so there is nothing to diff.
    support: none
  platform:
    description: Linux with C(/proc); units need systemd with cgroup v2.
    support: full
    platforms: posix
options:
  units:
    description: systemd units whose processes to read (every process of their control group).
    type: list
    elements: str
    default: []
  pids:
    description: Process ids to read.
    type: list
    elements: int
    default: []
  all:
    description: Read every process. Used when neither O(units) nor O(pids) is given.
    type: bool
    default: false
  compact_capabilities:
    description:
      - Report a full capability set as C(all) and an empty one as C(none) instead of listing
        names; any other set stays a list of names, and C(capability_masks) always has the
        raw masks.
      - Full means every capability of the target's kernel, bits 0 to
        C(<proc_root>/sys/kernel/cap_last_cap), not the names this collection knows (a newer
        kernel has more; they show as C(cap_N)) and not PID 1's bounding set (reduced in a
        container). When C(cap_last_cap) cannot be read no set is called C(all).
      - Default (unset) is on for a host-wide scan and off when O(units) or O(pids) are given.
    type: bool
  threads:
    description: Return the per-thread records (always read; a difference between threads is
      reported in C(threads_differ) either way).
    type: bool
    default: true
  proc_root:
    description: Where C(/proc) is; tests point it at a recorded tree.
    type: path
    default: /proc
  resources:
    description:
      - Return each process's live resource limits in C(resources).
      - Default (unset) is on when O(units), O(pids) or O(components) are given and off for a
        host-wide scan.
    type: bool
  components:
    description:
      - The component model (C(kernelfence_components)), as the roles take it. The live limits
        of each component whose unit's processes were read are compared with the model in
        RV(limits). Does not fail on a difference (see M(kernelfence.isolation.isolation_assert)).
    type: list
    elements: dict
  cgroup_root:
    description: Where the cgroup file system is mounted (its C(unified) directory is used on a
      hybrid hierarchy); tests point it at a recorded tree.
    type: path
    default: /sys/fs/cgroup
"""

EXAMPLES = r"""
- name: Read what the kernel enforces on the executor
  kernelfence.isolation.process_isolation_info:
    units: [kf-executor.service]
  register: executor

- name: Every process of the host, without per-thread records (compact capability sets)
  kernelfence.isolation.process_isolation_info:
    all: true
    threads: false

- name: Every process of the host with every capability set as names
  kernelfence.isolation.process_isolation_info:
    all: true
    compact_capabilities: false
"""

RETURN = r"""
processes:
  description: One record per process read.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: Process id.
      type: int
    name:
      description: Command name from status.
      type: str
    unit:
      description: The systemd unit of its cgroup v2 path, or null.
      type: str
    uids:
      description: The real, effective, saved and fs uid of the main thread.
      type: dict
    gids:
      description: The real, effective, saved and fs gid of the main thread.
      type: dict
    groups:
      description: Supplementary group ids.
      type: list
      elements: int
    capabilities:
      description: The five capability sets of the main thread as C(CAP_*) names (bits this
        collection has no name for as C(cap_N)); with O(compact_capabilities) a full set is
        C(all) and an empty one C(none).
      type: dict
      sample: {effective: [], permitted: [], inheritable: [], bounding: [], ambient: []}
    capability_masks:
      description: The five capability sets of the main thread as the kernel shows them in
        C(/proc/PID/status) (hex, bit N is capability N), in either format.
      type: dict
      sample: {effective: "0000000000000000", permitted: "0000000000000000",
               inheritable: "0000000000000000", bounding: "000001ffffffffff",
               ambient: "0000000000000000"}
    no_new_privs:
      description: NoNewPrivs of the main thread.
      type: bool
    seccomp:
      description: Seccomp C(mode) (disabled, strict, filter) and C(filters) count.
      type: dict
    namespaces:
      description: Namespace ids by type, null when absent or unreadable.
      type: dict
    namespaces_shared_with_init:
      description: Namespace types shared with PID 1.
      type: list
      elements: str
    cgroup:
      description: Lines of /proc/PID/cgroup.
      type: list
      elements: str
    exe:
      description: Executable C(path), C(sha256), decoded C(file_capabilities), C(error);
        null for kernel threads.
      type: dict
    threads:
      description: Records of the threads other than the main one (whose values are the
        process's own), with the main thread's fields plus tid and name.
      type: list
      elements: dict
    threads_differ:
      description: Fields in which some thread differs from the main thread.
      type: list
      elements: str
    missing:
      description: Status fields this kernel does not show.
      type: list
      elements: str
    problems:
      description: What could not be read and why.
      type: list
      elements: str
    resources:
      description: With O(resources), the live limits - C(cgroup) (the cgroup v2 path),
        C(cgroup_files) (each limit file's value as the kernel shows it, null when the file is
        absent because its controller is not enabled), C(rlimits) (C(RLIMIT_NOFILE) and
        C(RLIMIT_CORE) as C(SOFT:HARD)), C(oom_score_adj), C(mounts) (per scratch path the
        C(fstype) and C(size) option of what is mounted there, null when nothing is).
      type: dict
      returned: when O(resources) is on
      sample: {cgroup: /system.slice/kf-executor.service,
               cgroup_files: {memory.max: "536870912", pids.max: "128", io.weight: "default 25"},
               rlimits: {RLIMIT_NOFILE: "1024:1024", RLIMIT_CORE: "0:0"}, oom_score_adj: "500",
               mounts: {/tmp: {fstype: tmpfs, size: 65536k}}}
limits:
  description: With O(components), per component whose unit's processes were read, its
    C(unit), C(pids), C(passed) and C(checks), one per limit the unit sets - C(name) (the cgroup
    file, C(RLIMIT_NOFILE), C(RLIMIT_CORE), C(oom_score_adj) or C(tmpfs PATH)), C(directive)
    (what the model renders), C(expected) (as the kernel shows it), C(observed) (the distinct
    values over the processes) and C(passed).
  returned: always
  type: dict
  sample: {executor: {unit: kf-executor.service, pids: [812], passed: false, checks: [
           {name: memory.max, directive: MemoryMax=512M, expected: "536870912",
            observed: [max], passed: false}]}}
host:
  description: With O(components), what percentages were resolved against - C(memory) (bytes),
    C(page_size), C(tasks_max) (the system's task maximum as systemd computes it).
  returned: always
  type: dict
capability_format:
  description: C(compact) when full and empty sets are the words C(all) and C(none),
    C(names) when every set is a list of names.
  returned: always
  type: str
  sample: compact
cap_last_cap:
  description: The highest capability number of the target's kernel
    (C(<proc_root>/sys/kernel/cap_last_cap)), null when it cannot be read.
  returned: always
  type: int
  sample: 40
vanished:
  description: PIDs that exited while they were being read.
  returned: always
  type: list
  elements: int
units:
  description: Per unit, its control group and the PIDs read.
  returned: always
  type: dict
  sample: {kf-executor.service: {control_group: /system.slice/kf-executor.service, pids: [812]}}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    ModelError,
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
    component_limits,
    host_facts,
    read_live,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
    unit_pids,
)


def add_resources(processes: list[dict], proc_root: str, cgroup_root: str) -> None:
    """Each process's live limits as its `resources` (processes that exited meanwhile: null)."""
    live, cgroups = read_live([p["pid"] for p in processes], proc_root, cgroup_root)
    by_pid = {p["pid"]: p for p in live}
    for process in processes:
        found = by_pid.get(process["pid"])
        cgroup = cgroups.get(found["cgroup"]) if found and found["cgroup"] else None
        process["resources"] = None if found is None else {
            "cgroup": found["cgroup"],
            "cgroup_files": cgroup["files"] if cgroup and cgroup["exists"] else None,
            "rlimits": found["rlimits"], "oom_score_adj": found["oom_score_adj"],
            "mounts": found["mounts"]}


def model_limits(records: list[dict], processes: list[dict], units: dict, proc_root: str,
                 cgroup_root: str) -> tuple[dict, dict]:
    """(per component the comparison of its live limits with the model, the host facts)."""
    by_unit: dict[str, list[int]] = {u: list(v["pids"]) for u, v in units.items()}
    for process in processes:
        if process.get("unit") and process["unit"] not in units:
            by_unit.setdefault(process["unit"], []).append(process["pid"])
    host = host_facts(proc_root, cgroup_root)
    return component_limits(records, by_unit, proc_root, cgroup_root, host), host


def main():
    module = AnsibleModule(
        argument_spec={
            "units": {"type": "list", "elements": "str", "default": []},
            "pids": {"type": "list", "elements": "int", "default": []},
            "all": {"type": "bool", "default": False},
            "compact_capabilities": {"type": "bool"},
            "threads": {"type": "bool", "default": True},
            "proc_root": {"type": "path", "default": "/proc"},
            "resources": {"type": "bool"},
            "components": {"type": "list", "elements": "dict"},
            "cgroup_root": {"type": "path", "default": "/sys/fs/cgroup"},
        },
        supports_check_mode=True,
    )
    params = module.params
    records = None
    if params["components"] is not None:
        try:
            records = normalize_components(params["components"])
        except ModelError as exc:
            module.fail_json(msg=f"components: {exc}")
    host_wide = params["all"] or not (params["units"] or params["pids"])
    compact = params["compact_capabilities"]
    if compact is None:
        compact = host_wide
    reader = ProcReader(params["proc_root"], compact=compact)
    units = {}
    pids = list(params["pids"])
    if params["units"]:
        systemctl = module.get_bin_path("systemctl", required=True)
        for unit in params["units"]:
            try:
                found, control_group = unit_pids(module.run_command, systemctl, unit)
            except ValueError as exc:
                module.fail_json(msg=f"units: {exc}")
            units[unit] = {"control_group": control_group, "pids": found}
            pids.extend(found)
    try:
        result = reader.scan() if host_wide else reader.scan(sorted(set(pids)))
    except OSError as exc:
        module.fail_json(msg=f"proc_root: cannot read {params['proc_root']}: {exc}")
    if not params["threads"]:
        for process in result["processes"]:
            process.pop("threads")
    resources = params["resources"]
    if resources is None:
        resources = not host_wide or records is not None
    if resources:
        add_resources(result["processes"], params["proc_root"], params["cgroup_root"])
    limits, host = {}, {}
    if records is not None:
        limits, host = model_limits(records, result["processes"], units, params["proc_root"],
                                    params["cgroup_root"])
    module.exit_json(changed=False, units=units, limits=limits, host=host,
                     capability_format="compact" if compact else "names",
                     cap_last_cap=reader.cap_last_cap, **result)


if __name__ == "__main__":
    main()
