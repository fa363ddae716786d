#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: isolation_assert
short_description: Fail when the live processes of a unit break an isolation policy
version_added: "0.1.0"
description:
  - Reads every process and thread of a systemd unit from C(/proc) (as
    M(kernelfence.isolation.process_isolation_info) does) and compares them with a policy.
  - Fails with one diff entry per violated field, naming the pid, the thread, the field, the
    expected and the observed value. Never reports C(changed).
  - A unit with no running process fails, unless O(allow_empty) is set (a socket-activated
    service that has not been started yet).
  - Resource limits are read live from the kernel (each process's cgroup v2 files, its
    C(/proc/PID/limits), C(oom_score_adj) and the tmpfs on its scratch paths) and compared with
    O(policy.resources), or with the component model (O(components)) for the processes of a
    component's unit; a limit file that is absent (controller not enabled) is a violation.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Reads only; check mode asserts the same.
    support: full
  diff_mode:
    description: Changes nothing, so there is nothing to diff.
    support: none
  platform:
    description: Linux with C(/proc) and systemd on cgroup v2.
    support: full
    platforms: posix
options:
  unit:
    description: The systemd unit whose processes must match.
    type: str
  pids:
    description: Check these processes instead of a unit's.
    type: list
    elements: int
  policy:
    description: What the kernel must show for every process and thread.
    type: dict
    required: true
    suboptions:
      capabilities:
        description: Per capability set (C(effective), C(permitted), C(inheritable),
          C(bounding), C(ambient)) the capabilities allowed; a set not listed is not checked.
        type: dict
      no_new_privs:
        description: NoNewPrivs must be set.
        type: bool
      seccomp:
        description: A seccomp filter must be installed (mode 2, at least one filter).
        type: bool
      private_namespaces:
        description: Namespace types that must differ from PID 1's.
        type: list
        elements: str
      forbidden_uids:
        description: No real, effective, saved or fs uid may be one of these.
        type: list
        elements: int
      resources:
        description:
          - Resource limits every process must be under, with the component model's field names
            and syntax (C(memory_max), C(memory_high), C(memory_low), C(memory_swap_max),
            C(tasks_max), C(cpu_weight), C(cpu_quota), C(io_weight), C(limit_nofile),
            C(oom_score_adjust), C(tmp_size)); only the fields given are checked. A normalized
            record's C(reasons) is ignored, so a record's C(resources) can be passed as is.
          - Percentages of memory are resolved against the host's C(MemTotal) and page size as
            systemd resolves them.
        type: dict
  components:
    description:
      - The component model (C(kernelfence_components)). Each process in the unit of a
        component also has to show the limits the model renders into that unit (every
        C(resources) field with the profile's defaults, and C(LimitCORE=0)).
    type: list
    elements: dict
  cgroup_root:
    description: Where the cgroup file system is mounted.
    type: path
    default: /sys/fs/cgroup
  allow_empty:
    description: Pass when the unit has no process.
    type: bool
    default: false
  proc_root:
    description: Where C(/proc) is.
    type: path
    default: /proc
"""

EXAMPLES = r"""
- name: The executor runs without capabilities, confined, never as root
  kernelfence.isolation.isolation_assert:
    unit: kf-executor.service
    policy:
      capabilities: {effective: [], permitted: [], ambient: [], bounding: []}
      no_new_privs: true
      seccomp: true
      private_namespaces: [ipc, mnt, user]
      forbidden_uids: [0]

- name: The executor's live limits are those of the component model
  kernelfence.isolation.isolation_assert:
    unit: kf-executor.service
    components: "{{ kernelfence_components }}"
    policy:
      no_new_privs: true

- name: No component may use more than 1G or keep more than 4096 descriptors
  kernelfence.isolation.isolation_assert:
    unit: kf-model_backend.service
    policy:
      resources: {memory_max: 1G, limit_nofile: 4096}
"""

RETURN = r"""
violations:
  description: One entry per violation.
  returned: always
  type: list
  elements: dict
  sample:
    - {pid: 812, tid: 812, name: sleep, field: no_new_privs, expected: true, observed: false}
    - {pid: 812, tid: null, name: sleep, field: resources.memory.max, expected: "536870912",
       observed: max}
checked:
  description: PIDs compared with the policy.
  returned: always
  type: list
  elements: int
vanished:
  description: PIDs that exited while they were being read.
  returned: always
  type: list
  elements: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    ModelError,
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.isolation_policy import (
    PolicyError,
    compare,
    format_diffs,
    normalize_policy,
    resource_diffs,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
    component_unit,
    expected_limits,
    host_facts,
    model_directives,
    resources_directives,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
    unit_pids,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    ResourceError,
)


def limits_promised(module: AnsibleModule, resources: dict | None, components: list | None):
    """A function giving each process the limits it must show (None: no limit is checked)."""
    if resources is None and components is None:
        return None
    params = module.params
    host = host_facts(params["proc_root"], params["cgroup_root"])
    common = {}
    if resources is not None:
        try:
            common = expected_limits(resources_directives(resources), host)
        except ResourceError as exc:
            where = f"policy.resources.{exc.field}" if exc.field else "policy.resources"
            module.fail_json(msg=f"{where}: {exc.problem}. Fix: {exc.fix}")
    by_unit = {}
    if components is not None:
        try:
            records = normalize_components(components)
        except ModelError as exc:
            module.fail_json(msg=f"components: {exc}")
        by_unit = {component_unit(r): expected_limits(model_directives(r), host) for r in records}
        if params["unit"] and params["unit"] not in by_unit:
            module.fail_json(msg=f"unit: {params['unit']} is the unit of no component of the "
                                 "model. Fix: give a component's unit, or leave components out")

    def expected_for(process: dict) -> dict:
        unit = params["unit"] or process.get("unit") or ""
        return {**by_unit.get(unit, {}), **common}

    return expected_for


def main():
    module = AnsibleModule(
        argument_spec={
            "unit": {"type": "str"},
            "pids": {"type": "list", "elements": "int"},
            "policy": {"type": "dict", "required": True, "options": {
                "capabilities": {"type": "dict"},
                "no_new_privs": {"type": "bool"},
                "seccomp": {"type": "bool"},
                "private_namespaces": {"type": "list", "elements": "str"},
                "forbidden_uids": {"type": "list", "elements": "int"},
                "resources": {"type": "dict"},
            }},
            "components": {"type": "list", "elements": "dict"},
            "cgroup_root": {"type": "path", "default": "/sys/fs/cgroup"},
            "allow_empty": {"type": "bool", "default": False},
            "proc_root": {"type": "path", "default": "/proc"},
        },
        required_one_of=[("unit", "pids")],
        mutually_exclusive=[("unit", "pids")],
        supports_check_mode=True,
    )
    params = module.params
    given = {k: v for k, v in params["policy"].items() if v is not None}
    resources = given.pop("resources", None)
    try:
        policy = normalize_policy(given)
    except PolicyError as exc:
        module.fail_json(msg=str(exc))
    expected_for = limits_promised(module, resources, params["components"])
    target = params["unit"] or "pids"
    if params["unit"]:
        systemctl = module.get_bin_path("systemctl", required=True)
        try:
            pids, _cgroup = unit_pids(module.run_command, systemctl, params["unit"])
        except ValueError as exc:
            module.fail_json(msg=f"unit: {exc}")
    else:
        pids = params["pids"]
    scan = ProcReader(params["proc_root"]).scan(pids)
    result = {"changed": False, "checked": [p["pid"] for p in scan["processes"]],
              "vanished": scan["vanished"], "violations": []}
    if not scan["processes"] and not params["allow_empty"]:
        module.fail_json(msg=f"{target}: no running process to check. Fix: start the unit, or "
                             "set allow_empty for a socket-activated service", **result)
    result["violations"] = compare(scan["processes"], policy)
    if expected_for is not None:
        result["violations"] += resource_diffs(scan["processes"], expected_for,
                                               params["proc_root"], params["cgroup_root"])
    if result["violations"]:
        module.fail_json(msg=f"{target} breaks the isolation policy: "
                             f"{format_diffs(result['violations'])}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
