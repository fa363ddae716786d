#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_baseline
short_description: The host kernel baseline behind the component boundaries, in one call
version_added: "0.1.0"
description:
  - Reads in one pass what the component profiles need from the kernel (cgroup v2, seccomp
    filter mode, Yama, Landlock, unprivileged user namespaces where the bubblewrap wrapper needs
    them, C(/proc) without C(hidepid)) and reports what is missing; with O(strict) it fails
    instead, before anything is written.
  - Writes the chosen sysctl settings to a drop-in of its own (O(path)) and nothing else. Live
    values are compared first; only a value less strict than the baseline is set, to the
    file's value, so a stricter one (another file's) is never lowered and a second run
    changes nothing. At boot systemd-sysctl applies the file with the others, in name order.
  - A setting whose key this kernel lacks is left out of the file and named in RV(unsupported).
  - Turning a setting off removes it from the file; its live value stays until the next boot.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Reports the file and live changes it would make, changes nothing.
    support: full
  diff_mode:
    description: The file before and after, and the live values that would be set.
    support: full
  platform:
    description: Linux with systemd.
    support: full
    platforms: posix
options:
  settings:
    description:
      - Setting name to C(true) (managed) or C(false) (left alone). Settings not named are
        managed. Names and values are in C(plugins/module_utils/host_baseline.py) and the
        C(host_baseline) role README.
    type: dict
    default: {}
  restrict_user_namespaces:
    description:
      - Also set C(kernel.unprivileged_userns_clone=0). Refused (the module fails, nothing
        changes) where the components run under bubblewrap (systemd < 257), and where the
        kernel has no such switch.
    type: bool
    default: false
  require_landlock:
    description: Count a kernel without Landlock as a problem.
    type: bool
    default: false
  strict:
    description: Fail on any preflight problem, before anything is written; otherwise warn.
    type: bool
    default: false
  path:
    description: The drop-in this module owns.
    type: path
    default: /etc/sysctl.d/60-kernelfence-baseline.conf
"""

EXAMPLES = r"""
- name: Apply the baseline, fail if the kernel lacks what the units rely on
  kernelfence.isolation.host_baseline:
    strict: true
    settings:
      perf_event_paranoid: false
"""

RETURN = r"""
host_baseline:
  description: What the kernel offers the component profiles.
  returned: always
  type: dict
  contains:
    kernel:
      description: Kernel release.
      type: str
    systemd_version:
      description: Major version of systemd; null if unknown.
      type: int
    wrapper:
      description: Whether the components run under bubblewrap (systemd < 257).
      type: bool
    cgroup_v2:
      description: Whether /sys/fs/cgroup is cgroup2.
      type: bool
    seccomp_filter:
      description: Whether seccomp filter mode has the errno and kill_process actions.
      type: bool
    yama:
      description: Whether the Yama LSM is present.
      type: bool
    lsm:
      description: Active LSMs from securityfs; null when securityfs is not mounted.
      type: list
      elements: str
    landlock_abi:
      description: Landlock ABI version; null when unavailable.
      type: int
    unprivileged_userns:
      description: Whether unprivileged users may create user namespaces.
      type: bool
    proc_hidepid:
      description: The hidepid= value /proc is mounted with; null if none.
      type: str
problems:
  description: What the profiles rely on and the kernel lacks, each with the fix.
  returned: always
  type: list
  elements: str
settings:
  description: The sysctl keys and values the drop-in holds.
  returned: always
  type: dict
unsupported:
  description: Managed settings whose key this kernel does not have (left out of the file).
  returned: always
  type: list
  elements: str
applied:
  description: Live values that were (in check mode, would be) changed, key to {live, wanted}.
  returned: always
  type: dict
file_changed:
  description: Whether the drop-in was (would be) rewritten.
  returned: always
  type: bool
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.kernelfence.isolation.plugins.module_utils import host_baseline as hb


def _live_text(values: dict[str, dict], field: str) -> str:
    return "".join(f"{k} = {v[field]}\n" for k, v in sorted(values.items()))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "settings": {"type": "dict", "default": {}},
            "restrict_user_namespaces": {"type": "bool", "default": False},
            "require_landlock": {"type": "bool", "default": False},
            "strict": {"type": "bool", "default": False},
            "path": {"type": "path", "default": "/etc/sysctl.d/60-kernelfence-baseline.conf"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        enabled = {k: boolean(v) for k, v in p["settings"].items()}
        wanted = hb.wanted_settings(enabled, p["restrict_user_namespaces"])
    except (TypeError, ValueError) as exc:
        module.fail_json(msg=f"host_baseline {exc}")

    raw = hb.read_host("/", hb.landlock_abi())
    systemctl = module.get_bin_path("systemctl")
    version = None
    if systemctl:
        rc, out, _err = module.run_command([systemctl, "--version"])
        version = hb.systemd_major(out) if rc == 0 else None
    found = hb.facts(raw, version)
    result = {"changed": False, "host_baseline": found, "applied": {}, "file_changed": False}

    if p["restrict_user_namespaces"]:
        refusal = hb.refuse_userns_restriction(found)
        if refusal:
            module.fail_json(msg=refusal, **result)

    present, unsupported = hb.split_supported(raw, wanted)
    problems = hb.problems(found, wanted, p["require_landlock"])
    result.update(problems=problems, unsupported=unsupported,
                  settings={s.key: s.value for s in present})
    if problems and p["strict"]:
        module.fail_json(msg="host_baseline preflight (host_baseline_strict: true): "
                         + " | ".join(problems), **result)
    for problem in problems:
        module.warn(problem)

    content = hb.render(present)
    try:
        with open(p["path"], encoding="utf-8") as handle:
            current = handle.read()
    except FileNotFoundError:
        current = None
    file_changed = current != content
    live_drift = hb.drift(raw, present)
    result.update(file_changed=file_changed, applied=live_drift,
                  changed=file_changed or bool(live_drift))
    if module._diff:
        result["diff"] = [
            {"before_header": p["path"], "after_header": p["path"],
             "before": current or "", "after": content},
            {"before_header": "live sysctl", "after_header": "live sysctl",
             "before": _live_text(live_drift, "live"), "after": _live_text(live_drift, "wanted")},
        ]
    if module.check_mode or not result["changed"]:
        module.exit_json(**result)

    if file_changed:
        _write(module, p["path"], content)
    if live_drift:
        # Only the keys that are less strict than the file says, with the file's values: a
        # stricter live value (e.g. Debian's fs.protected_regular = 2) is never lowered.
        refused = {}
        for key in live_drift:
            try:
                with open("/" + hb.key_path(key), "w", encoding="ascii") as handle:
                    handle.write(f"{live_drift[key]['wanted']}\n")
            except OSError as exc:
                refused[key] = exc.strerror
        left = hb.drift(hb.read_host("/", found["landlock_abi"]), present)
        if left:
            module.fail_json(msg=f"host_baseline: these values did not take: {left} "
                             f"({refused or 'changed back'}; a value locked at boot, or the "
                             "kernel refused it). Fix: reboot, or turn the setting off", **result)
    module.exit_json(**result)


def _write(module: AnsibleModule, path: str, content: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kf-baseline-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)


if __name__ == "__main__":
    main()
