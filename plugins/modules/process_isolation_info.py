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

- name: Every process of the host, without per-thread records
  kernelfence.isolation.process_isolation_info:
    all: true
    threads: false
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
      description: The five capability sets of the main thread as C(CAP_*) names.
      type: dict
      sample: {effective: [], permitted: [], inheritable: [], bounding: [], ambient: []}
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
            "threads": {"type": "bool", "default": True},
            "proc_root": {"type": "path", "default": "/proc"},
        },
        supports_check_mode=True,
    )
    params = module.params
    reader = ProcReader(params["proc_root"])
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
        if params["all"] or not (params["units"] or params["pids"]):
            result = reader.scan()
        else:
            result = reader.scan(sorted(set(pids)))
    except OSError as exc:
        module.fail_json(msg=f"proc_root: cannot read {params['proc_root']}: {exc}")
    if not params["threads"]:
        for process in result["processes"]:
            process.pop("threads")
    module.exit_json(changed=False, units=units, **result)


if __name__ == "__main__":
    main()
