#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: audit_evidence
short_description: Gather the isolation evidence of every component of a host in one call
version_added: "0.1.0"
description:
  - For every component of the model, reads what the kernel and systemd show and compares it
    with what the component's unit promises; returns one check per property with the command
    that produced the evidence, the expected and the observed value.
  - Evidence per component, from the host itself; the unit state
    (C(systemctl show)), every ignored or unknown line (C(systemd-analyze verify) on the loaded
    fragment and drop-ins, capability names systemd drops), the live exposure
    (C(systemd-analyze security --json=short)), and per process and thread the uids,
    capabilities, NoNewPrivs, seccomp, namespaces against PID 1's, and file capabilities
    (C(/proc), as M(kernelfence.isolation.process_isolation_info) reads it).
  - Per component, one check per resource limit its unit sets, the value the kernel shows
    (the cgroup v2 files C(memory.max), C(memory.high), C(memory.low), C(memory.swap.max),
    C(pids.max), C(cpu.weight), C(cpu.max), C(io.weight) of each process's cgroup, its
    C(RLIMIT_NOFILE) and C(RLIMIT_CORE), C(oom_score_adj), and the tmpfs C(size=) on C(/tmp),
    C(/var/tmp) and C(/dev/shm)) against the value the model's directives make it show
    (percentages of memory resolved as systemd resolves them). An absent cgroup file (the
    controller is not enabled) fails its check.
  - Also the versions an auditor asks for, kernel, systemd, libseccomp and cosign.
  - Never changes the host and never reports C(changed); a failed check does not fail the
    module (the report shows it), a component model that does not validate does.
  - RV(failed_checks) counts every failed check, attack attempt that got through (or did not
    end as expected) and failed control, judged as the HTML report and the JUnit XML judge
    them.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Reads only; check mode gathers the same evidence.
    support: full
  diff_mode:
    description: Changes nothing, so there is nothing to diff.
    support: none
  platform:
    description: Linux with systemd 250 or later on cgroup v2.
    support: full
    platforms: posix
options:
  components:
    description: The component model (C(kernelfence_components)), as the roles take it.
    type: list
    elements: dict
    required: true
  host:
    description: Name of the host in the evidence (the inventory name).
    type: str
  attacks:
    description: Attack results for this host to carry in the evidence, a list of
      C({component, attempt, expected, observed, errno, passed}) with an optional C(control)
      (true for something the component must still be able to do) and C(baseline).
      An entry passes only when C(passed) is true and C(observed) equals C(expected).
    type: list
    elements: dict
    default: []
"""

EXAMPLES = r"""
- name: Gather the evidence of every component
  kernelfence.isolation.audit_evidence:
    components: "{{ kernelfence_components }}"
    host: "{{ inventory_hostname }}"
  register: audit
"""

RETURN = r"""
evidence:
  description: The host's evidence.
  returned: always
  type: dict
  contains:
    host:
      description: Host name.
      type: str
    collected_at:
      description: When the evidence was read (UTC, ISO 8601).
      type: str
    versions:
      description: The kernel, systemd, libseccomp and cosign versions (null when not installed).
      type: dict
    components:
      description: Per component, its unit, exposure, band, threshold, failing checks and PIDs.
      type: list
      elements: dict
    checks:
      description: "One per component and property: component, unit, property, command,
        expected, observed, passed; a resource limit's check also names the directive."
      type: list
      elements: dict
    processes:
      description: The /proc records of each component's processes, by component.
      type: dict
    attacks:
      description: The attack results given.
      type: list
      elements: dict
failed_checks:
  description: How many checks, attack attempts and controls did not pass.
  returned: always
  type: int
failures:
  description: "The failed ones, as C(component: property), C(component: attack: attempt) or
    C(component: control: attempt)."
  returned: always
  type: list
  elements: str
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.audit import (
    component_checks,
    component_policy,
    limit_checks,
    module_result,
    validate_attacks,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    CAPABILITIES,
    ModelError,
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    service_directives,
    threshold,
    uses_wrapper,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
    expected_limits,
    host_facts,
    read_live,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
    cgroup_pids,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    parse_security,
    parse_verify,
    unknown_capabilities,
)


def first_line(module: AnsibleModule, argv: list[str]) -> str | None:
    rc, out, _err = module.run_command(argv)
    return out.strip().splitlines()[0] if rc == 0 and out.strip() else None


def versions(module: AnsibleModule, systemctl: str) -> dict:
    systemd = first_line(module, [systemctl, "--version"])
    dpkg = module.get_bin_path("dpkg-query")
    libseccomp = first_line(module, [dpkg, "-W", "-f=${Version}\n", "libseccomp2"]) if dpkg \
        else None
    cosign = module.get_bin_path("cosign", opt_dirs=["/usr/local/bin"])
    cosign_version = None
    if cosign:
        rc, out, _err = module.run_command([cosign, "version"])
        cosign_version = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                               if ln.startswith("GitVersion")), None) if rc == 0 else None
    return {"kernel": os.uname().release, "systemd": systemd, "libseccomp": libseccomp,
            "cosign": cosign_version}


def unit_facts(module: AnsibleModule, systemctl: str, analyze: str, unit: str) -> dict:
    rc, out, err = module.run_command(
        [systemctl, "show", "--property=ActiveState", "--property=FragmentPath",
         "--property=DropInPaths", "--property=ControlGroup", unit])
    if rc != 0:
        module.fail_json(msg=f"systemctl show {unit} failed: {err.strip()}")
    props = dict(line.partition("=")[::2] for line in out.splitlines())
    fragment = props.get("FragmentPath") or None
    files = ([fragment] if fragment else []) + props.get("DropInPaths", "").split()
    facts = {"active": props.get("ActiveState"), "fragment": fragment, "files": files,
             "control_group": props.get("ControlGroup") or None, "ignored": [],
             "exposure": None, "band": None, "failing": []}
    if fragment:
        _rc, _out, verr = module.run_command([analyze, "verify", "--man=no", fragment])
        facts["ignored"] = [f for f in parse_verify(verr, files) if f["kind"] != "warning"]
        for path in files:
            try:
                with open(path, encoding="utf-8") as handle:
                    facts["ignored"] += unknown_capabilities(handle.read(), path, CAPABILITIES)
            except OSError as exc:
                facts["ignored"].append({"file": path, "line": 0, "kind": "unreadable",
                                         "message": str(exc)})
        rc1, text, _e1 = module.run_command([analyze, "security", "--no-pager", unit])
        rc2, json_text, _e2 = module.run_command(
            [analyze, "security", "--no-pager", "--json=short", unit])
        if rc1 == 0 and rc2 == 0:
            facts.update(parse_security(text, json_text))
    return facts


def main():
    module = AnsibleModule(
        argument_spec={
            "components": {"type": "list", "elements": "dict", "required": True},
            "host": {"type": "str"},
            "attacks": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    try:
        records = normalize_components(module.params["components"])
    except ModelError as exc:
        module.fail_json(msg=str(exc))
    try:
        attacks = validate_attacks(module.params["attacks"])
    except ValueError as exc:
        module.fail_json(msg=f"attacks: {exc}")
    systemctl = module.get_bin_path("systemctl", required=True)
    analyze = module.get_bin_path("systemd-analyze", required=True)
    found = versions(module, systemctl)
    version = int(found["systemd"].split()[1]) if found["systemd"] else 0
    reader = ProcReader()
    host = host_facts()
    evidence = {"host": module.params["host"] or os.uname().nodename,
                "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": found, "components": [], "checks": [], "processes": {},
                "attacks": attacks}
    for record in records:
        unit = record.get("unit") or f"kf-{record['name']}.service"
        facts = unit_facts(module, systemctl, analyze, unit)
        pids = cgroup_pids(facts["control_group"]) if facts["control_group"] else []
        scan = reader.scan(pids)
        component = {"name": record["name"], "unit": unit,
                     "threshold": threshold(record["profile"], version)}
        promised = component_policy(
            service_directives(record, version, record.get("client_of")), uses_wrapper(version))
        evidence["checks"] += component_checks(component, facts, scan, promised)
        evidence["checks"] += limit_checks(
            component, expected_limits(service_directives(record, version, record.get(
                "client_of")), host), *read_live([p["pid"] for p in scan["processes"]]), host)
        evidence["components"].append(dict(
            component, exposure=facts["exposure"], band=facts["band"],
            failing=facts["failing"], pids=[p["pid"] for p in scan["processes"]],
            policy=promised["policy"]))
        evidence["processes"][record["name"]] = scan["processes"]
    module.exit_json(**module_result(evidence))


if __name__ == "__main__":
    main()
