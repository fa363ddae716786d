#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: unit_install
short_description: Verify, gate and atomically install systemd units and their companion files
version_added: "0.1.0"
description:
  - Stages every unit (a full unit, or a drop-in beside a copy of the host's existing unit and its
    other drop-ins) in a private directory, runs C(systemd-analyze verify) on all of them together
    and fails on any line systemd would ignore, and gates the offline exposure score of each unit
    that has a O(units[].threshold).
  - Only when every unit passed are the changed units and files written, each atomically, followed
    by one C(daemon-reload). Nothing is written when any unit fails.
  - A task that wrote a file reports C(changed) even when a later step (the C(daemon-reload),
    enabling or starting) fails. A failed C(daemon-reload) is retried by the next run, even when
    it finds the files as wanted (see O(pending_dir)).
  - Optionally enables and starts the units (sockets before services, in the given order) and
    returns the units that were already running with changed files, for a handler to restart.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Stages, verifies and scores as in a real run, then reports what would change.
    support: full
  diff_mode:
    description: Returns the before and after text of every changed file.
    support: full
  platform:
    description: Targets with systemd 250 or later.
    support: full
    platforms: posix
options:
  units:
    description: Units in start order (sockets before the services that use them).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Unit name, for example C(kf-executor.service).
        type: str
        required: true
      content:
        description: Text of the unit file, or of the drop-in when O(units[].dropin=true).
        type: str
        required: true
      dropin:
        description: O(units[].content) is a drop-in for a unit the host already has.
        type: bool
        default: false
      component:
        description: Component the unit belongs to, named in error messages.
        type: str
      user_directives:
        description: Directive names the user set in the component's C(directives) field.
        type: list
        elements: str
        default: []
      threshold:
        description: Highest acceptable offline exposure (0-10 as systemd prints it).
        type: float
  files:
    description: Companion files (for example seccomp profiles) written after the units passed.
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: Absolute path of the file.
        type: path
        required: true
      content:
        description: Text of the file.
        type: str
        required: true
      mode:
        description: Octal mode.
        type: str
        default: "0644"
      owner:
        description: Owner.
        type: str
        default: root
      group:
        description: Group.
        type: str
        default: root
      unit:
        description: Unit to restart when this file changes.
        type: str
  unit_dir:
    description: Directory units and drop-in directories are installed into.
    type: path
    default: /etc/systemd/system
  dropin_name:
    description: File name of the drop-ins this module owns.
    type: str
    default: 50-kernelfence.conf
  enable:
    description: Enable every unit.
    type: bool
    default: true
  start:
    description: Start every unit that is not active.
    type: bool
    default: true
  pending_dir:
    description:
      - Directory of the markers of work an earlier run left undone. Before the first file is
        written, a marker per changed unit and one for the C(daemon-reload) are created here;
        the reload marker is removed only after a successful reload, a unit's marker once the
        unit is returned in RV(restart_needed) or started. A run that finds a marker reloads
        (and reports the unit as changed) even when every file is already as wanted.
      - Under C(/run) because a reboot loads every unit file anew.
    type: path
    default: /run/kernelfence/unit_install
"""

EXAMPLES = r"""
- name: Install a hardened service and its socket, gated at exposure 1.0
  kernelfence.isolation.unit_install:
    units:
      - {name: kf-executor.socket, content: "{{ socket_text }}"}
      - {name: kf-executor.service, content: "{{ service_text }}", threshold: 1.0,
         component: executor}
  register: units
  notify: Restart changed units

- name: Harden a unit the host already has with a drop-in
  kernelfence.isolation.unit_install:
    units:
      - {name: nginx.service, dropin: true, content: "[Service]\nNoNewPrivileges=yes\n"}
"""

RETURN = r"""
changed_units:
  description:
    - Units whose unit file, drop-in or companion file changed, in this run or in an earlier one
      that failed before the change was loaded (see O(pending_dir)).
  returned: always
  type: list
  elements: str
started:
  description: Units this run started (or would start, in check mode).
  returned: always
  type: list
  elements: str
restart_needed:
  description: Units that were running with changed files; restart them to apply the change.
  returned: always
  type: list
  elements: str
exposure:
  description: Offline exposure per gated unit, with its failing checks.
  returned: always
  type: dict
systemd_version:
  description: Major version of the target's systemd.
  returned: always
  type: int
previous:
  description:
    - Every file this run wrote, as it was before (C(content) null when it did not exist), with
      its unit and component, so a failed health check can put the previous good version back
      (M(kernelfence.isolation.component_health)). Empty in check mode.
  returned: always
  type: list
  elements: dict
written:
  description: Paths this run wrote before a later step (a write, the C(daemon-reload)) failed.
  returned: when a write or the daemon-reload fails
  type: list
  elements: str
installed_at:
  description: Host time (seconds since the epoch) just before the first write; journal lines
    from then on belong to this run.
  returned: always
  type: float
"""

import grp
import os
import pwd
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.unit_install import (
    PENDING_DIR,
    ApplyFailed,
    UnitInstallError,
    clear_units,
    installed_path,
    pending,
    read_text,
    stage_units,
    verify_and_score,
    write_and_reload,
)


def _needs_write(path: str, content: str, mode: int, uid: int, gid: int) -> bool:
    if read_text(path) != content:
        return True
    st = os.stat(path)
    return (st.st_mode & 0o7777) != mode or st.st_uid != uid or st.st_gid != gid


def _previous(path: str, unit: str | None, component: str | None) -> dict:
    """The file as it is now, to restore it if the new version fails its health check."""
    if not os.path.exists(path):
        return {"path": path, "content": None, "unit": unit, "component": component}
    st = os.stat(path)
    return {"path": path, "content": read_text(path), "mode": oct(st.st_mode & 0o7777),
            "uid": st.st_uid, "gid": st.st_gid, "unit": unit, "component": component}


def _systemctl(module: AnsibleModule, *args: str) -> tuple[int, str, str]:
    return module.run_command(["systemctl", *args])


def main():
    module = AnsibleModule(
        argument_spec={
            "units": {"type": "list", "elements": "dict", "required": True, "options": {
                "name": {"type": "str", "required": True},
                "content": {"type": "str", "required": True},
                "dropin": {"type": "bool", "default": False},
                "component": {"type": "str"},
                "user_directives": {"type": "list", "elements": "str", "default": []},
                "threshold": {"type": "float"},
            }},
            "files": {"type": "list", "elements": "dict", "default": [], "options": {
                "dest": {"type": "path", "required": True},
                "content": {"type": "str", "required": True},
                "mode": {"type": "str", "default": "0644"},
                "owner": {"type": "str", "default": "root"},
                "group": {"type": "str", "default": "root"},
                "unit": {"type": "str"},
            }},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
            "dropin_name": {"type": "str", "default": "50-kernelfence.conf"},
            "enable": {"type": "bool", "default": True},
            "start": {"type": "bool", "default": True},
            "pending_dir": {"type": "path", "default": PENDING_DIR},
        },
        supports_check_mode=True,
    )
    p = module.params
    module.get_bin_path("systemd-analyze", required=True)
    rc, out, err = _systemctl(module, "--version")
    version = out.split()[1] if rc == 0 and len(out.split()) > 1 else "unknown"
    units = [dict(u, dropin_name=p["dropin_name"]) for u in p["units"]]
    stage = tempfile.mkdtemp(prefix="kernelfence-stage-", dir="/run")
    try:
        paths = stage_units(units, stage, module.run_command)
        # The features come from this host's (the target's) systemctl, never the controller's.
        scores = verify_and_score(units, paths, module.run_command, version,
                                  features=out if rc == 0 else "")
    except UnitInstallError as exc:
        module.fail_json(msg=str(exc), systemd_version=version, exposure=exc.scores)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    writes, diffs, changed_units, previous = [], [], [], []
    component_of = {u["name"]: u.get("component") for u in units}
    for unit in units:
        path = installed_path(unit, p["unit_dir"])
        if _needs_write(path, unit["content"], 0o644, 0, 0) if os.path.exists(path) else True:
            writes.append((path, unit["content"], 0o644, 0, 0))
            previous.append(_previous(path, unit["name"], unit.get("component")))
            changed_units.append(unit["name"])
            diffs.append({"before_header": path, "after_header": path,
                          "before": read_text(path) or "", "after": unit["content"]})
    for item in p["files"]:
        mode = int(item["mode"], 8)
        path = item["dest"]
        try:
            uid = pwd.getpwnam(item["owner"]).pw_uid
            gid = grp.getgrnam(item["group"]).gr_gid
        except KeyError as exc:
            if not module.check_mode:
                module.fail_json(msg=f"{path}: unknown owner or group {exc}. Fix: create the "
                                     "component identities first (component_identity role)")
            uid = gid = -1  # check mode before the identities exist: the file is new anyway
        if not os.path.exists(path) or _needs_write(path, item["content"], mode, uid, gid):
            writes.append((path, item["content"], mode, uid, gid))
            previous.append(_previous(path, item.get("unit"), component_of.get(item.get("unit"))))
            if item.get("unit") and item["unit"] not in changed_units:
                changed_units.append(item["unit"])
            diffs.append({"before_header": path, "after_header": path,
                          "before": read_text(path) or "", "after": item["content"]})

    # Files an earlier run wrote without a successful daemon-reload (or whose units it did not
    # hand on for a restart): the reload is owed and the units count as changed.
    reload_owed, owed_units = pending(p["pending_dir"])
    names = [u["name"] for u in units]
    for name in owed_units:
        if name in names and name not in changed_units:
            changed_units.append(name)
    active_before = {}
    for name in names:
        state = _systemctl(module, "is-active", name)[1].strip()
        active_before[name] = state in ("active", "activating", "reloading")
    installed_at = time.time()
    if (writes or reload_owed) and not module.check_mode:
        try:
            write_and_reload(writes, changed_units, p["pending_dir"], module.run_command)
        except ApplyFailed as exc:
            module.fail_json(msg=str(exc), changed=bool(exc.written), written=exc.written,
                             changed_units=changed_units, previous=previous,
                             systemd_version=version)

    enabled_now, started = [], []
    if p["enable"]:
        for name in names:
            state = _systemctl(module, "is-enabled", name)[1].strip()
            if state not in ("enabled", "static", "alias", "indirect", "generated"):
                enabled_now.append(name)
                if not module.check_mode:
                    rc, out, err = _systemctl(module, "enable", name)
                    if rc != 0:
                        module.fail_json(msg=f"systemctl enable {name} failed: {err.strip()}",
                                         changed=bool(writes or reload_owed or enabled_now[:-1]),
                                         changed_units=changed_units, previous=previous)
    if p["start"]:
        for name in names:
            if active_before[name]:
                continue
            started.append(name)
            if not module.check_mode:
                rc, out, err = _systemctl(module, "start", name)
                if rc != 0:
                    status = _systemctl(module, "status", "--no-pager", "-n", "20", name)[1]
                    module.fail_json(msg=f"{name} failed to start: {err.strip()}",
                                     status=status, changed=True,
                                     changed_units=changed_units, previous=previous)
    restart_needed = [n for n in changed_units if active_before.get(n) and n not in started]
    if not module.check_mode:
        # Handed on: the role restarts restart_needed; units started by this run run the new files.
        clear_units(p["pending_dir"], names)
    result = {
        "changed": bool(writes or reload_owed or enabled_now or started),
        "changed_units": changed_units,
        "started": started,
        "enabled": enabled_now,
        "restart_needed": restart_needed,
        "exposure": scores,
        "systemd_version": int(version) if version.isdigit() else 0,
        "previous": [] if module.check_mode else previous,
        "installed_at": installed_at,
    }
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
