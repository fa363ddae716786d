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
  - Reports capability names in C(CapabilityBoundingSet=) and C(AmbientCapabilities=) that the
    kernel does not have (systemd drops them without a warning).
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
  security_policy:
    description:
      - A JSON file of weights and ranges per assessment test, passed as
        C(--security-policy) (see systemd-analyze(1)); a weight of 0 skips a test.
      - The file must exist and hold a JSON object, else the module fails before scoring.
    type: path
  offline:
    description:
      - Score O(paths) offline even when O(unit) is given (C(--offline=yes)); O(unit) then
        only names the unit for the message.
      - Without it, O(unit) is scored live (the loaded unit, with its drop-ins) and, when
        O(verify) is set and no O(paths) are given, the unit's fragment and drop-ins are
        verified.
    type: bool
    default: false
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

- name: Verify and score the running unit (fragment and drop-ins) with our own weights
  kernelfence.isolation.unit_security:
    unit: kf-executor.service
    security_policy: /etc/kernelfence/security-policy.json
    threshold: 1.0
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
checks:
  description: Every check of C(systemd-analyze security --json=short), as systemd returns it.
  returned: when scored
  type: list
  elements: dict
verified:
  description: The files given to C(systemd-analyze verify).
  returned: always
  type: list
  elements: str
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    CAPABILITIES,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    parse_security,
    parse_verify,
    unknown_capabilities,
)


def check_security_policy(module: AnsibleModule, path: str) -> str:
    """The policy path, once it is known to be a JSON object; fails naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            policy = json.load(handle)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"security_policy: cannot use {path}: {exc}. Fix: give a JSON file "
                             "mapping assessment test ids to {weight, range}")
    if not isinstance(policy, dict):
        module.fail_json(msg=f"security_policy: {path} must hold a JSON object of assessment "
                             "test ids, e.g. {\"PrivateNetwork\": {\"weight\": 0}}")
    return path


def unit_files(module: AnsibleModule, unit: str) -> tuple[list[str], list[str]]:
    """The fragment to verify, and every file whose warnings count (fragment and drop-ins).

    verify takes unit files only; it loads the drop-ins of the fragment by itself.
    """
    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, err = module.run_command([systemctl, "show", "--property=FragmentPath",
                                       "--property=DropInPaths", unit])
    if rc != 0:
        module.fail_json(msg=f"unit: systemctl show {unit} failed: {err.strip()}")
    props = dict(line.partition("=")[::2] for line in out.splitlines())
    fragment = [props["FragmentPath"]] if props.get("FragmentPath") else []
    return fragment, fragment + props.get("DropInPaths", "").split()


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path"},
            "unit": {"type": "str"},
            "threshold": {"type": "float"},
            "verify": {"type": "bool", "default": True},
            "root": {"type": "path"},
            "security_policy": {"type": "path"},
            "offline": {"type": "bool", "default": False},
        },
        required_one_of=[("paths", "unit")],
        supports_check_mode=True,
    )
    analyze = module.get_bin_path("systemd-analyze", required=True)
    params = module.params
    paths = params["paths"] or []
    if params["offline"] and not paths:
        module.fail_json(msg="offline: scoring offline needs paths (the unit files to score)")
    policy_args = []
    if params["security_policy"]:
        policy_args = ["--security-policy", check_security_policy(module,
                                                                  params["security_policy"])]
    result = {"changed": False, "ignored": [], "verified": []}
    to_verify, reported = list(paths), list(paths)
    if params["verify"] and not paths and params["unit"]:
        to_verify, reported = unit_files(module, params["unit"])
    if params["verify"] and to_verify:
        result["verified"] = reported
        rc, out, err = module.run_command([analyze, "verify", "--man=no", *to_verify])
        result["ignored"] = [f for f in parse_verify(err, reported) if f["kind"] != "warning"]
        for path in reported:
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as exc:
                module.fail_json(msg=f"paths: cannot read {path}: {exc}", **result)
            result["ignored"].extend(unknown_capabilities(text, path, CAPABILITIES))
        if rc != 0:
            module.fail_json(msg=f"systemd-analyze verify failed for {', '.join(to_verify)}",
                             rc=rc, stdout=out, stderr=err, **result)
    if params["unit"] and not params["offline"]:
        target = [params["unit"]]
    elif paths:
        target = ["--offline=yes", *(["--root", params["root"]] if params["root"] else []),
                  paths[0]]
    else:
        target = []
    if target:
        rc, text, err = module.run_command([analyze, "security", "--no-pager", *policy_args,
                                            *target])
        rc2, json_text, err2 = module.run_command(
            [analyze, "security", "--no-pager", "--json=short", *policy_args, *target])
        if rc != 0 or rc2 != 0:
            module.fail_json(msg=f"systemd-analyze security failed for {target[-1]}",
                             stderr=err + err2, **result)
        result.update(parse_security(text, json_text))
        result["checks"] = json.loads(json_text)
    problems = []
    if result["ignored"]:
        lines = "; ".join(f"{f['file']}:{f['line']}: {f['message']}" for f in result["ignored"])
        problems.append(f"systemd ignored or distrusts part of the unit: {lines}")
    threshold = params["threshold"]
    if threshold is not None and "exposure" in result and result["exposure"] > threshold:
        worst = ", ".join(f"{c['name']} ({c['exposure']})" for c in result["failing"][:8])
        problems.append(f"exposure {result['exposure']} of {target[-1]} is above the threshold "
                        f"{threshold}; failing checks: {worst}")
    if problems:
        module.fail_json(msg=" | ".join(problems), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
