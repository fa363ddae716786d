#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: component_accounts
short_description: System groups, users and directories of the components in one call
version_added: "0.1.0"
description:
  - Creates the system groups, the system users (no login shell, locked password, no
    supplementary groups, no home directory created) and the directories with their owner,
    group and mode, in that order, for the whole list in one module call.
  - Users that exist are corrected (primary group, home, shell, comment, supplementary groups
    removed, password locked); nothing else of the account databases is touched.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Plans from the live account databases and reports what would change.
    support: full
  diff_mode:
    description: One line per action.
    support: full
  platform:
    description: Linux with the shadow tools (groupadd, useradd, usermod).
    support: full
    platforms: posix
options:
  groups:
    description: System groups to create.
    type: list
    elements: str
    default: []
  users:
    description: System users.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: User name.
        type: str
        required: true
      group:
        description: Primary group.
        type: str
        required: true
      home:
        description: Home directory recorded in the account (not created).
        type: path
        required: true
      shell:
        description: Login shell.
        type: path
        default: /usr/sbin/nologin
      comment:
        description: GECOS comment.
        type: str
        default: ""
  directories:
    description: Directories, parents before children.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      owner:
        description: Owner.
        type: str
        required: true
      group:
        description: Group.
        type: str
        required: true
      mode:
        description: Octal mode.
        type: str
        required: true
      component:
        description: Component the directory belongs to (informational).
        type: str
"""

EXAMPLES = r"""
- name: One user, its group and its state directory
  kernelfence.isolation.component_accounts:
    groups: [kf-executor]
    users:
      - {name: kf-executor, group: kf-executor, home: /var/lib/kernelfence/executor}
    directories:
      - {path: /var/lib/kernelfence/executor, owner: kf-executor, group: kf-executor,
         mode: "0700"}
"""

RETURN = r"""
actions:
  description:
    - What was done (or would be, in check mode), one line each.
    - When an action fails, the actions done before it (the task then reports C(changed) if
      there are any; the next run plans again from what the host has).
  returned: always
  type: list
  elements: str
  sample:
    - "+ group kf-executor"
    - "+ dir /var/lib/kernelfence/executor kf-executor:kf-executor 0700"
failed_action:
  description: The action that failed.
  returned: failure
  type: str
  sample: "+ group kf-executor"
"""

import grp
import os
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.accounts import (
    describe,
    plan,
)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _stat(path: str):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def _apply(module: AnsibleModule, action: dict) -> str | None:
    """Carry out one action; None when it worked, else why not."""
    kind = action["action"]
    if kind == "groupadd":
        argv = ["groupadd", "--system", action["name"]]
    elif kind == "useradd":
        argv = ["useradd", "--system", "--gid", action["group"], "--no-create-home",
                "--home-dir", action["home"], "--shell", action["shell"],
                "--comment", action["comment"], action["name"]]
    elif kind == "usermod":
        argv = ["usermod"]
        for key, flag in (("group", "--gid"), ("home", "--home"), ("shell", "--shell"),
                          ("comment", "--comment")):
            if key in action:
                argv += [flag, action[key]]
        if "remove_from" in action:
            argv += ["--groups", ""]
        argv.append(action["name"])
    elif kind == "lock":
        argv = ["usermod", "--lock", action["name"]]
    else:
        return _apply_directory(action)
    rc, _out, err = module.run_command(argv)
    if rc != 0:
        return f"{describe(action)}: {argv[0]} failed (rc {rc}): {err.strip()}"
    return None


def _apply_directory(action: dict) -> str | None:
    path = action["path"]
    try:
        # Owner and group are looked up first: an unknown one must not leave a new directory.
        ids = None
        if action["action"] in ("mkdir", "chown"):
            ids = (pwd.getpwnam(action["owner"]).pw_uid, grp.getgrnam(action["group"]).gr_gid)
        if action["action"] == "mkdir":
            os.mkdir(path, 0o700)
        if ids is not None:
            os.chown(path, *ids)
        if action["action"] in ("mkdir", "chmod"):
            os.chmod(path, int(action["mode"], 8))
    except (OSError, KeyError) as exc:
        return f"{describe(action)}: {exc}"
    return None


def main():
    module = AnsibleModule(
        argument_spec={
            "groups": {"type": "list", "elements": "str", "default": []},
            "users": {"type": "list", "elements": "dict", "default": [], "options": {
                "name": {"type": "str", "required": True},
                "group": {"type": "str", "required": True},
                "home": {"type": "path", "required": True},
                "shell": {"type": "path", "default": "/usr/sbin/nologin"},
                "comment": {"type": "str", "default": ""},
            }},
            "directories": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "path", "required": True},
                "owner": {"type": "str", "required": True},
                "group": {"type": "str", "required": True},
                "mode": {"type": "str", "required": True},
                "component": {"type": "str"},
            }},
        },
        supports_check_mode=True,
    )
    p = module.params
    actions = plan(p["groups"], p["users"], p["directories"], _read("/etc/passwd"),
                   _read("/etc/group"), _read("/etc/shadow"), _stat)
    lines = [describe(a) for a in actions]
    if not module.check_mode:
        for done, action in enumerate(actions):
            error = _apply(module, action)
            if error:
                # What was done before the failure is done: changed, and listed.
                module.fail_json(msg=error, changed=done > 0, actions=lines[:done],
                                 failed_action=lines[done])
    result = {"changed": bool(actions), "actions": lines}
    if module._diff and actions:
        result["diff"] = {"before": "", "after": "\n".join(lines) + "\n",
                          "after_header": "component accounts and directories"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
