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
      bpf_dest:
        description:
          - O(files[].content) is an OCI seccomp profile (JSON); compile it with this host's
            libseccomp (its Python binding, Debian C(python3-seccomp)) into the BPF program
            bubblewrap loads with C(--seccomp FD), and install it at this path with the same
            owner, group and mode.
          - Beside it, C(<bpf_dest>.sha256) lists the SHA-256 of the program and of the
            profile for C(sha256sum --check), which the unit runs before each start.
          - The program is compiled again from the profile on every run and rewritten when its
            bytes differ, so a stale or altered program never survives a run.
          - In check mode on a host without the binding yet, the profile's form is checked and
            the program is reported as to be written.
        type: path
  remove:
    description:
      - Files this collection installed earlier and no longer uses (for example the seccomp
        launcher C(/usr/libexec/kernelfence/kf-launch.py) of the systemd 252 path), removed
        after every unit passed. An absent file is no change.
    type: list
    elements: path
    default: []
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
    default: /run/kernelfence-pending/unit_install
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

- name: A service on systemd 252 with its seccomp profile compiled to BPF at deploy time
  kernelfence.isolation.unit_install:
    units:
      - {name: kf-executor.service, content: "{{ service_text }}", component: executor}
    files:
      - dest: /etc/kernelfence/executor/seccomp.json
        content: "{{ profile | to_nice_json }}"
        bpf_dest: /etc/kernelfence/executor/seccomp.bpf
        group: kf-executor
        mode: "0640"
        unit: kf-executor.service

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
seccomp_programs:
  description:
    - Per O(files[].bpf_dest), the compiled program as it is installed (or would be, in check
      mode), C(sha256) and C(bytes) null when check mode could not compile it here.
  returned: always
  type: dict
  sample:
    /etc/kernelfence/executor/seccomp.bpf:
      profile: /etc/kernelfence/executor/seccomp.json
      sha256: c6fd6a19141b8b6b67e4442cdb833a2f670804ddc7c38fce80d5a21490b46058
      bytes: 2280
      unknown_syscalls: [riscv_hwprobe, uretprobe]
      checksums: /etc/kernelfence/executor/seccomp.bpf.sha256
removed:
  description: Files of O(remove) this run removed (or would remove).
  returned: always
  type: list
  elements: str
installed_at:
  description: Host time (seconds since the epoch) just before the first write; journal lines
    from then on belong to this run.
  returned: always
  type: float
"""

import base64
import grp
import hashlib
import json
import os
import pwd
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.seccomp_profile import (
    ProfileError,
    bpf_checksums,
    check_profile,
    compile_bpf,
)
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


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _needs_write(path: str, content: str | bytes, mode: int, uid: int, gid: int) -> bool:
    current = _read_bytes(path) if isinstance(content, bytes) else read_text(path)
    if current != content:
        return True
    st = os.stat(path)
    return (st.st_mode & 0o7777) != mode or st.st_uid != uid or st.st_gid != gid


def _previous(path: str, unit: str | None, component: str | None, binary: bool = False) -> dict:
    """The file as it is now, to restore it if the new version fails its health check
    (a binary file, the compiled seccomp program, as content_base64)."""
    if not os.path.exists(path):
        return {"path": path, "content": None, "unit": unit, "component": component}
    st = os.stat(path)
    entry = {"path": path, "mode": oct(st.st_mode & 0o7777), "uid": st.st_uid,
             "gid": st.st_gid, "unit": unit, "component": component}
    if binary:
        return {**entry, "content": "",
                "content_base64": base64.b64encode(_read_bytes(path) or b"").decode()}
    return {**entry, "content": read_text(path)}


def _describe_program(data: bytes | None) -> str:
    if data is None:
        return ""
    return f"BPF program, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}\n"


def _seccomp_program(module: AnsibleModule, item: dict) -> tuple[bytes | None, list[str]]:
    """Compile a profile for its bpf_dest; fail, naming the file and the fix, on a bad one."""
    where = f"{item['dest']} (unit {item.get('unit') or '-'})"
    try:
        profile = json.loads(item["content"])
        check_profile(profile)
    except (ValueError, ProfileError) as exc:
        module.fail_json(msg=f"{where}: not a seccomp profile the BPF compiler accepts: {exc}. "
                             "Fix: render the profile with kernelfence.isolation.seccomp_profile")
    try:
        return compile_bpf(profile)
    except ImportError:
        if module.check_mode:
            return None, []  # the package is installed by the run itself (component_unit)
        module.fail_json(msg=f"{where}: libseccomp's Python binding is not importable by this "
                             f"host's Python, so {item['bpf_dest']} cannot be compiled. Fix: "
                             "install python3-seccomp (the component_unit role does on "
                             "systemd < 257)")
    except (RuntimeError, ValueError, OSError) as exc:
        module.fail_json(msg=f"{where}: libseccomp could not compile {item['bpf_dest']}: {exc}")
    return None, []


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
                "bpf_dest": {"type": "path"},
            }},
            "remove": {"type": "list", "elements": "path", "default": []},
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

    # Every seccomp program is compiled before anything is written: a profile libseccomp
    # refuses leaves the host as it was, like a unit systemd refuses.
    programs = {item["bpf_dest"]: _seccomp_program(module, item)
                for item in p["files"] if item.get("bpf_dest")}

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
        if not item.get("bpf_dest"):
            continue
        program, _unknown = programs[item["bpf_dest"]]
        bpf, sums = item["bpf_dest"], item["bpf_dest"] + ".sha256"
        if program is None:  # check mode before python3-seccomp is installed
            outdated = [bpf, sums]
        else:
            text = bpf_checksums(bpf, program, path, item["content"])
            outdated = [f for f, data in ((bpf, program), (sums, text))
                        if not os.path.exists(f) or _needs_write(f, data, mode, uid, gid)]
        for target in outdated:
            binary = target == bpf
            if program is not None:
                data = program if binary else text
                writes.append((target, data, mode, uid, gid))
            previous.append(_previous(target, item.get("unit"),
                                      component_of.get(item.get("unit")), binary))
            if item.get("unit") and item["unit"] not in changed_units:
                changed_units.append(item["unit"])
            before = (_describe_program(_read_bytes(target)) if binary
                      else read_text(target) or "")
            after = ("(compiled on this host at install)\n" if program is None
                     else _describe_program(program) if binary else text)
            diffs.append({"before_header": target, "after_header": target,
                          "before": before, "after": after})
    removals = [path for path in p["remove"] if os.path.lexists(path)]
    # A rolled-back unit may start the removed file again (the launcher of the previous
    # version): each service changed in this run gets it back with its own files.
    owners = [(u, component_of.get(u)) for u in changed_units if u.endswith(".service")]
    for path in removals:
        for unit, component in owners or [(None, None)]:
            previous.append(_previous(path, unit, component))
        diffs.append({"before_header": path, "after_header": path,
                      "before": read_text(path) or "", "after": ""})

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
    if (writes or removals or reload_owed) and not module.check_mode:
        try:
            write_and_reload(writes, changed_units, p["pending_dir"], module.run_command,
                             removals)
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
        # An owed restart (a marker of an earlier run) is handed on as restart_needed: changed,
        # so the role's handler runs it.
        "changed": bool(writes or removals or reload_owed or enabled_now or started
                        or restart_needed
                        or any(program is None for program, _unknown in programs.values())),
        "changed_units": changed_units,
        "started": started,
        "enabled": enabled_now,
        "restart_needed": restart_needed,
        "exposure": scores,
        "systemd_version": int(version) if version.isdigit() else 0,
        "previous": [] if module.check_mode else previous,
        "installed_at": installed_at,
        "seccomp_programs": {
            item["bpf_dest"]: {
                "profile": item["dest"], "checksums": item["bpf_dest"] + ".sha256",
                "sha256": None if programs[item["bpf_dest"]][0] is None
                else hashlib.sha256(programs[item["bpf_dest"]][0]).hexdigest(),
                "bytes": None if programs[item["bpf_dest"]][0] is None
                else len(programs[item["bpf_dest"]][0]),
                "unknown_syscalls": programs[item["bpf_dest"]][1]}
            for item in p["files"] if item.get("bpf_dest")},
        "removed": removals,
    }
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
