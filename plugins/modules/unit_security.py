#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: unit_security
short_description: Verify systemd units and gate their exposure score
version_added: "0.1.0"
description:
  - Runs C(systemd-analyze verify) on unit files and their drop-ins (C(NAME.d/*.conf) beside
    a file) and reports every line systemd ignored (unknown directive, unparsable value such
    as a partly ignored C(SystemCallFilter=)) and every other reason verify failed (a command
    missing on the host, no C(ExecStart=)), each with its file, line and fix.
  - Reports capability names in C(CapabilityBoundingSet=) and C(AmbientCapabilities=) that the
    kernel does not have (systemd drops them without a warning).
  - Reports directives systemd accepts but cannot enforce on the target, read from the
    target's C(systemctl --version) and the unit as systemd merges it (drop-ins, repeated
    lines, an empty assignment resetting a list) - C(RestrictFileSystems=),
    C(RestrictNetworkInterfaces=), C(SocketBindAllow=) and C(SocketBindDeny=) on a systemd built
    without C(BPF_FRAMEWORK) (Debian 12), and capabilities granted (bounding set or ambient)
    while C(PrivateUsers=) gives the service its own user namespace.
  - Runs C(systemd-analyze security) offline on a unit file, or live on a loaded unit, and
    returns the exposure score and the failing checks, also when verification failed. A unit
    file without C(ExecStart=), which systemd refuses to load, is scored from a temporary copy
    with a placeholder command (see RV(exposure_note)).
  - Fails when any of the above was found or the exposure is above O(threshold).
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
      - The file must exist and hold a JSON object whose keys are check ids of the target's
        C(systemd-analyze security) (the C(json_field) of its C(--json=short) output) and whose
        items hold only C(weight) and C(range) (whole numbers >= 0) and C(description_good),
        C(description_bad), C(description_na) (strings); systemd ignores anything else
        silently, so the module fails naming the file, check and field before scoring.
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
  description: Every line of the unit files that systemd ignored or warned about, with a fix.
  returned: always
  type: list
  elements: dict
errors:
  description:
    - Other reasons C(systemd-analyze verify) failed (missing command, no C(ExecStart=)); C(line)
      is the directive's line where systemd names none but the unit file shows it, else null.
  returned: always
  type: list
  elements: dict
  sample: [{file: /etc/kernelfence/tool-exec.service, line: 3, kind: missing-executable,
            message: "Command /usr/local/bin/tool-exec is not executable: No such file or
            directory Fix: install /usr/local/bin/tool-exec on the target before the unit,
            or correct the path"}]
unenforced:
  description: Lines systemd accepts but cannot enforce on the target (checked when O(verify)).
  returned: always
  type: list
  elements: dict
  sample: [{file: /etc/kernelfence/x.service, line: 7, kind: unenforced-directive,
            message: "RestrictNetworkInterfaces=lo is accepted but not enforced: ..."}]
systemd_features:
  description: Version and build features of the target's systemd (C(systemctl --version)).
  returned: always
  type: dict
  sample: {version: 252, enabled: [SECCOMP], disabled: [BPF_FRAMEWORK]}
exposure_note:
  description: How the exposure was obtained when the unit could not be scored as it is.
  returned: when a unit without ExecStart= was scored
  type: str
checks:
  description: Every check of C(systemd-analyze security --json=short), as systemd returns it.
  returned: when scored
  type: list
  elements: dict
verified:
  description: The unit files and drop-ins verified.
  returned: always
  type: list
  elements: str
"""

import json
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    CAPABILITIES,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    NO_EXEC_START,
    check_ids,
    explain_finding,
    parse_security,
    parse_verify,
    security_policy_problems,
    systemd_features,
    unenforced_directives,
    unit_load_order,
    unknown_capabilities,
    verify_errors,
)

PLACEHOLDER = "[Service]\nExecStart=/bin/true\n"
PLACEHOLDER_NOTE = ("scored with a placeholder ExecStart=/bin/true: the unit has none and systemd "
                    "refuses to load it; no check of the score reads ExecStart=")


def check_ids_of_target(module: AnsibleModule, analyze: str) -> list[str]:
    """The check ids this target's systemd-analyze knows, read from its own --json=short output
    for a minimal service (every check is listed for a service, passed or not)."""
    probe = tempfile.mkdtemp(prefix="kernelfence-policy-")
    try:
        path = os.path.join(probe, "kf-policy-probe.service")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(PLACEHOLDER)
        rc, out, err = module.run_command([analyze, "security", "--no-pager", "--offline=yes",
                                           "--json=short", path])
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if rc != 0:
        module.fail_json(msg=f"security_policy: cannot list the checks of systemd-analyze "
                             f"security on this host: {err.strip()[-500:]}")
    return check_ids(out)


def check_security_policy(module: AnsibleModule, analyze: str, path: str) -> str:
    """The policy path, once every check id and field in it is one systemd uses; systemd
    itself ignores the rest without a word (it logs them at debug level only)."""
    try:
        with open(path, encoding="utf-8") as handle:
            policy = json.load(handle)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"security_policy: cannot use {path}: {exc}. Fix: give a JSON file "
                             "mapping assessment test ids to {weight, range}")
    known = check_ids_of_target(module, analyze) if isinstance(policy, dict) else []
    problems = security_policy_problems(policy, path, known)
    if problems:
        module.fail_json(msg="security_policy: " + " | ".join(problems), known_checks=known)
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


def target_features(module: AnsibleModule) -> dict:
    """Version and build features of the systemd on the host the module runs on (the target),
    from `systemctl --version`; it answers without systemd as PID 1."""
    systemctl = module.get_bin_path("systemctl")
    if not systemctl:
        return systemd_features("")
    rc, out, _err = module.run_command([systemctl, "--version"])
    return systemd_features(out if rc == 0 else "")


def read_files(module: AnsibleModule, paths: list[str], result: dict) -> list[tuple[str, str]]:
    files = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                files.append((path, handle.read()))
        except OSError as exc:
            module.fail_json(msg=f"paths: cannot read {path}: {exc}", **result)
    return files


def score(module: AnsibleModule, analyze: str, policy_args: list[str],
          target: list[str]) -> tuple[dict | None, str]:
    """Exposure of the target; (None, reason) when systemd cannot score it."""
    rc, text, err = module.run_command([analyze, "security", "--no-pager", *policy_args,
                                        *target])
    rc2, json_text, err2 = module.run_command(
        [analyze, "security", "--no-pager", "--json=short", *policy_args, *target])
    if rc != 0 or rc2 != 0:
        return None, (err + err2).strip()
    scored = parse_security(text, json_text)
    scored["checks"] = json.loads(json_text)
    return scored, ""


def score_with_placeholder(module: AnsibleModule, analyze: str, policy_args: list[str],
                           path: str, root: list[str]) -> tuple[dict | None, str]:
    """Score a copy of a unit without ExecStart= (a [Service] excerpt, such as the one in a
    post) with a placeholder command in a drop-in; the files given are not touched."""
    work = tempfile.mkdtemp(prefix="kernelfence-score-")
    try:
        copy = os.path.join(work, os.path.basename(path))
        shutil.copyfile(path, copy)
        dropins = copy + ".d"
        if os.path.isdir(path + ".d"):
            shutil.copytree(path + ".d", dropins)
        os.makedirs(dropins, exist_ok=True)
        with open(os.path.join(dropins, "zz-kernelfence-placeholder.conf"), "w",
                  encoding="utf-8") as handle:
            handle.write(PLACEHOLDER)
        return score(module, analyze, policy_args, ["--offline=yes", *root, copy])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def where(finding: dict) -> str:
    line = f":{finding['line']}" if finding.get("line") else ""
    return f"{finding['file']}{line}: {finding['message']}"


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
        policy_args = ["--security-policy",
                       check_security_policy(module, analyze, params["security_policy"])]
    features = target_features(module)
    result = {"changed": False, "ignored": [], "errors": [], "unenforced": [], "verified": [],
              "systemd_features": features}
    # Each unit as systemd loads it: the file, then the drop-ins beside it (NAME.d/*.conf).
    groups = {os.path.basename(p): unit_load_order(p) for p in paths}
    to_verify = list(paths)
    if params["verify"] and not paths and params["unit"]:
        to_verify, reported = unit_files(module, params["unit"])
        if to_verify:
            groups = {os.path.basename(to_verify[0]): reported}
    if params["verify"] and to_verify:
        result["verified"] = [f for files in groups.values() for f in files]
        texts = {name: read_files(module, files, result) for name, files in groups.items()}
        every_file = [pair for files in texts.values() for pair in files]
        rc, out, err = module.run_command([analyze, "verify", "--man=no", *to_verify])
        result["ignored"] = [explain_finding(f, every_file)
                             for f in parse_verify(err, result["verified"])
                             if f["kind"] != "warning"]
        for path, text in every_file:
            result["ignored"].extend(unknown_capabilities(text, path, CAPABILITIES))
        result["errors"] = verify_errors(err, texts)
        if rc != 0 and not result["ignored"] and not result["errors"]:
            result["errors"].append({"file": ", ".join(to_verify), "line": None,
                                     "kind": "verify-error",
                                     "message": (err or out).strip()[-1500:]})
        for files in texts.values():
            result["unenforced"].extend(unenforced_directives(files, features))
    if params["unit"] and not params["offline"]:
        target = [params["unit"]]
    elif paths:
        target = ["--offline=yes", *(["--root", params["root"]] if params["root"] else []),
                  paths[0]]
    else:
        target = []
    problems = [where(f) for key in ("ignored", "errors", "unenforced") for f in result[key]]
    # Scored even when verify failed: the score of what systemd would load is still the answer
    # to "how exposed is this unit", and the reasons above say what to fix first.
    if target:
        scored, why = score(module, analyze, policy_args, target)
        if scored is None and NO_EXEC_START in why and target[0] == "--offline=yes":
            scored, why = score_with_placeholder(module, analyze, policy_args, paths[0],
                                                 target[1:-1])
            result["exposure_note"] = PLACEHOLDER_NOTE
        if scored is None:
            module.fail_json(msg=" | ".join([*problems, f"systemd-analyze security failed for "
                                                        f"{target[-1]}: {why[-1500:]}"]),
                             **result)
        result.update(scored)
    threshold = params["threshold"]
    name = os.path.basename(target[-1]) if target else ""
    if threshold is not None and "exposure" in result and result["exposure"] > threshold:
        worst = ", ".join(f"{c['name']} ({c['exposure']})" for c in result["failing"][:8])
        problems.append(f"exposure {result['exposure']} of {name} is above the threshold "
                        f"{threshold}; failing checks: {worst}")
    elif problems and "exposure" in result:
        problems.append(f"exposure of {name} as systemd loads it: {result['exposure']} "
                        f"{result['band']}")
    if problems:
        module.fail_json(msg=" | ".join(problems), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
