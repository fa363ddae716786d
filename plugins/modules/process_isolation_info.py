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
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
    unit_pids,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "units": {"type": "list", "elements": "str", "default": []},
            "pids": {"type": "list", "elements": "int", "default": []},
            "all": {"type": "bool", "default": False},
            "compact_capabilities": {"type": "bool"},
            "threads": {"type": "bool", "default": True},
            "proc_root": {"type": "path", "default": "/proc"},
        },
        supports_check_mode=True,
    )
    params = module.params
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
    module.exit_json(changed=False, units=units,
                     capability_format="compact" if compact else "names",
                     cap_last_cap=reader.cap_last_cap, **result)


if __name__ == "__main__":
    main()
