# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan the system groups, users and directories of the components as a list of actions.

Planning reads the host's account databases and directory metadata and never changes
anything, so check mode, diff and the real run share one decision. The actions are plain
data; the component_accounts module carries them out with the distribution's shadow tools.
"""

from __future__ import annotations

from collections.abc import Callable

# stat(path) -> (uid, gid, mode bits) or None when the path does not exist.
Stat = Callable[[str], "tuple[int, int, int] | None"]

LOCKED_PREFIXES = ("!", "*")


def parse_db(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def plan(groups: list[str], users: list[dict], directories: list[dict], passwd: str,
         group: str, shadow: str, stat: Stat) -> list[dict]:
    """The actions that bring the host to the wanted accounts and directories, in order."""
    group_by_name = {g[0]: g for g in parse_db(group)}
    gid_name = {int(g[2]): g[0] for g in group_by_name.values()}
    user_by_name = {u[0]: u for u in parse_db(passwd)}
    uid_name = {int(u[2]): u[0] for u in user_by_name.values()}
    password = {s[0]: s[1] for s in parse_db(shadow) if len(s) > 1}
    members: dict[str, set[str]] = {}
    for entry in group_by_name.values():
        for member in filter(None, entry[3].split(",") if len(entry) > 3 else []):
            members.setdefault(member, set()).add(entry[0])
    actions: list[dict] = []
    for name in groups:
        if name not in group_by_name:
            actions.append({"action": "groupadd", "name": name})
    for user in users:
        name = user["name"]
        current = user_by_name.get(name)
        if current is None:
            actions.append({"action": "useradd", **user})
            continue
        changes = {}
        if gid_name.get(int(current[3])) != user["group"]:
            changes["group"] = user["group"]
        if current[5] != user["home"]:
            changes["home"] = user["home"]
        if current[6] != user["shell"]:
            changes["shell"] = user["shell"]
        if current[4] != user["comment"]:
            changes["comment"] = user["comment"]
        extra = sorted(members.get(name, set()) - {user["group"]})
        if extra:
            changes["remove_from"] = extra
        if changes:
            actions.append({"action": "usermod", "name": name, **changes})
        if not password.get(name, "!").startswith(LOCKED_PREFIXES):
            actions.append({"action": "lock", "name": name})
    for want in directories:
        current = stat(want["path"])
        if current is None:
            actions.append({"action": "mkdir", "path": want["path"], "owner": want["owner"],
                            "group": want["group"], "mode": want["mode"]})
            continue
        uid, gid, mode = current
        if uid_name.get(uid) != want["owner"] or gid_name.get(gid) != want["group"]:
            actions.append({"action": "chown", "path": want["path"], "owner": want["owner"],
                            "group": want["group"]})
        if mode != int(want["mode"], 8):
            actions.append({"action": "chmod", "path": want["path"], "mode": want["mode"]})
    return actions


def describe(action: dict) -> str:
    """One line per action, for the diff and the task output."""
    kind = action["action"]
    if kind == "groupadd":
        return f"+ group {action['name']}"
    if kind == "useradd":
        return (f"+ user {action['name']} group={action['group']} home={action['home']} "
                f"shell={action['shell']}")
    if kind == "usermod":
        fields = " ".join(f"{k}={v}" for k, v in action.items() if k not in ("action", "name"))
        return f"~ user {action['name']} {fields}"
    if kind == "lock":
        return f"~ user {action['name']} password locked"
    if kind == "mkdir":
        return f"+ dir {action['path']} {action['owner']}:{action['group']} {action['mode']}"
    if kind == "chown":
        return f"~ dir {action['path']} owner {action['owner']}:{action['group']}"
    return f"~ dir {action['path']} mode {action['mode']}"
