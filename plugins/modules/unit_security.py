#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: unit_security
short_description: Verify systemd units and gate their exposure score
version_added: "0.1.0"
description:
  - Runs C(systemd-analyze verify) on unit files and reports every line systemd ignored
    (unknown directive, unparsable value such as a partly ignored C(SystemCallFilter=)).
  - Runs C(systemd-analyze security) offline on a unit file, or live on a loaded unit, and
    returns the exposure score and the failing checks.
  - Fails when any line was ignored or the exposure is above O(threshold).
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Reads only; runs the same checks in check mode.
    support: full
  diff_mode:
    description: Changes nothing, so there is nothing to diff.
    support: none
  platform:
    description: Targets with systemd 250 or later (offline scoring and JSON output).
    support: full
    platforms: posix
options:
  paths:
    description: Unit files to verify; the first one is scored offline unless O(unit) is set.
    type: list
    elements: path
  unit:
    description: A loaded unit to score live.
    type: str
  threshold:
    description: Highest acceptable exposure, on the 0-10 scale systemd prints.
    type: float
  verify:
    description: Run C(systemd-analyze verify) on O(paths).
    type: bool
    default: true
  root:
    description: Directory to pass as C(--root) to the offline scorer.
    type: path
"""

EXAMPLES = r"""
- name: Gate a staged unit before it is installed
  kernelfence.isolation.unit_security:
    paths: [/etc/kernelfence/executor/units/kf-executor.service]
    threshold: 1.0

- name: Score the running unit
  kernelfence.isolation.unit_security:
    unit: kf-executor.service
    verify: false
"""

RETURN = r"""
exposure:
  description: Overall exposure level, 0-10 as systemd prints it.
  returned: when scored
  type: float
  sample: 0.9
band:
  description: systemd's label for the score.
  returned: when scored
  type: str
  sample: SAFE
failing:
  description: Checks that did not pass, heaviest first.
  returned: when scored
  type: list
  elements: dict
ignored:
  description: Every line of the unit files that systemd ignored or warned about.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    parse_security,
    parse_verify,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path"},
            "unit": {"type": "str"},
            "threshold": {"type": "float"},
            "verify": {"type": "bool", "default": True},
            "root": {"type": "path"},
        },
        required_one_of=[("paths", "unit")],
        supports_check_mode=True,
    )
    analyze = module.get_bin_path("systemd-analyze", required=True)
    paths = module.params["paths"] or []
    result = {"changed": False, "ignored": []}
    if module.params["verify"] and paths:
        rc, out, err = module.run_command([analyze, "verify", "--man=no", *paths])
        result["ignored"] = [f for f in parse_verify(err, paths) if f["kind"] != "warning"]
        if rc != 0:
            module.fail_json(msg=f"systemd-analyze verify failed for {', '.join(paths)}",
                             rc=rc, stdout=out, stderr=err, **result)
    if module.params["unit"]:
        target = [module.params["unit"]]
    elif paths:
        target = ["--offline=yes", *(["--root", module.params["root"]]
                                     if module.params["root"] else []), paths[0]]
    else:
        target = []
    if target:
        rc, text, err = module.run_command([analyze, "security", "--no-pager", *target])
        rc2, json_text, err2 = module.run_command(
            [analyze, "security", "--no-pager", "--json=short", *target])
        if rc != 0 or rc2 != 0:
            module.fail_json(msg=f"systemd-analyze security failed for {target[-1]}",
                             stderr=err + err2, **result)
        result.update(parse_security(text, json_text))
    problems = []
    if result["ignored"]:
        lines = "; ".join(f"{f['file']}:{f['line']}: {f['message']}" for f in result["ignored"])
        problems.append(f"systemd ignored or distrusts part of the unit: {lines}")
    threshold = module.params["threshold"]
    if threshold is not None and "exposure" in result and result["exposure"] > threshold:
        worst = ", ".join(f"{c['name']} ({c['exposure']})" for c in result["failing"][:8])
        problems.append(f"exposure {result['exposure']} of {target[-1]} is above the threshold "
                        f"{threshold}; failing checks: {worst}")
    if problems:
        module.fail_json(msg=" | ".join(problems), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
