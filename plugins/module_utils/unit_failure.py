# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why did a unit fail? Read systemd's own words from `systemctl show` and `journalctl -o json`.

The result names what a person can act on: systemd's exit status (`226/NAMESPACE`), the unit
line behind a set-up failure (the directive whose path systemd could not mount), the syscalls
the kernel's seccomp audit records name (`type=SECCOMP ... syscall=N`, mapped to a name), and
the workload's last words when it exited by itself.
"""

from __future__ import annotations

import json
import re
import signal

from ansible_collections.kernelfence.isolation.plugins.module_utils.syscall_names import (
    syscall_name,
)

# systemd's own exit codes (`systemd-analyze exit-status`, class systemd), and what to change.
SYSTEMD_EXIT: dict[int, tuple[str, str]] = {
    200: ("CHDIR", "WorkingDirectory= does not exist or is not reachable in the sandbox"),
    203: ("EXEC", "the command's binary is missing, not executable or hidden by the sandbox: "
                  "check the component's `command`"),
    204: ("MEMORY", "systemd ran out of memory setting up the process"),
    205: ("LIMITS", "a Limit*= directive could not be applied"),
    209: ("STDOUT", "StandardOutput= could not be set up"),
    214: ("SETSCHEDULER", "a CPUScheduling*= directive was refused"),
    216: ("GROUP", "the component's group does not exist: check `group`"),
    217: ("USER", "the component's user does not exist: check `user`"),
    218: ("CAPABILITIES", "systemd could not apply the capability sets: check `capabilities`"
                          " and `ambient_capabilities`"),
    219: ("CGROUP", "the cgroup could not be set up (a resource-control directive?)"),
    225: ("NETWORK", "the network namespace could not be set up"),
    226: ("NAMESPACE", "the mount namespace could not be set up: a path in a *Paths= directive "
                       "(`readonly_paths`, `state_paths`, `directives`) does not exist on this "
                       "host or cannot be mounted"),
    227: ("NO_NEW_PRIVILEGES", "NoNewPrivileges= could not be applied"),
    228: ("SECCOMP", "the seccomp filter could not be applied (SystemCall*= lines)"),
    232: ("ADDRESS_FAMILIES", "RestrictAddressFamilies= could not be applied"),
    233: ("RUNTIME_DIRECTORY", "RuntimeDirectory= could not be created"),
    238: ("STATE_DIRECTORY", "StateDirectory= could not be created"),
    241: ("CONFIGURATION_DIRECTORY", "ConfigurationDirectory= could not be created"),
    243: ("CREDENTIALS", "a credential could not be loaded: check `credentials` (does src exist,"
                         " can this host decrypt it?)"),
}
# ExecMainCode= of `systemctl show` (the CLD_* codes of waitid(2)).
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
AUDIT_SECCOMP = "1326"
# The upper 16 bits of the audit record's code= (SECCOMP_RET_ACTION_FULL).
SECCOMP_ACTIONS = {0x8000: "killed the process", 0x0000: "killed the thread", 0x0003: "trapped",
                   0x0005: "refused with an errno", 0x7fc0: "notified", 0x7ff0: "traced",
                   0x7ffc: "logged", 0x7fff: "allowed"}

# sha256sum's words when the check of the compiled seccomp program (ExecStartPre=, systemd
# < 257) fails: the program or its profile is missing or no longer what was deployed.
SECCOMP_CHECK_RE = re.compile(r"^(/\S+/seccomp\.(?:bpf|json)): FAILED(?: open or read)?$")
MAIN_EXIT_RE = re.compile(r"Main process exited, code=(\w+), status=(\d+)(?:/(\w+))?")
STEP_RE = re.compile(r"Failed at step (\w+) spawning (\S+): (.+)")
PATH_RE = re.compile(r"(/[^\s:'\"]+)")
SETUP_FAILURE_RE = re.compile(r"(Failed to (set up|prepare|mount|load|apply|drop|open|execute|"
                              r"spawn|create|determine|change|acquire|resolve)|Unable to)\b",
                              re.I)


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p A,B UNIT` output as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_journal(text: str) -> list[dict]:
    """`journalctl -o json` output (one JSON object a line) as a list; junk lines are skipped."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald stores non-UTF-8 messages as byte arrays
            entry["MESSAGE"] = bytes(message).decode("utf-8", "replace")
        entries.append(entry)
    return entries


def _audit_fields(message: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', message)}


def seccomp_events(entries: list[dict]) -> list[dict]:
    """Kernel seccomp audit records (type=1326) with the syscall named, oldest first."""
    events = []
    for entry in entries:
        message = entry.get("MESSAGE", "")
        is_seccomp = (entry.get("_AUDIT_TYPE") == AUDIT_SECCOMP
                      or entry.get("_AUDIT_TYPE_NAME") == "SECCOMP"
                      or "type=1326" in message or message.startswith("SECCOMP "))
        if not is_seccomp or "syscall=" not in message:
            continue
        fields = _audit_fields(message)
        try:
            number = int(fields["syscall"])
        except (KeyError, ValueError):
            continue
        arch = fields.get("arch", "c000003e")
        events.append({
            "syscall": syscall_name(number, arch), "number": number, "arch": arch,
            "comm": fields.get("comm", ""), "exe": fields.get("exe", ""),
            "pid": int(fields["pid"]) if fields.get("pid", "").isdigit() else None,
            "signal": _signal_name(int(fields["sig"])) if fields.get("sig", "0") not in
            ("0", "") and fields["sig"].isdigit() else None,
            "action": _seccomp_action(fields.get("code", "")),
        })
    return events


def _seccomp_action(code: str) -> str:
    try:
        return SECCOMP_ACTIONS.get(int(code, 16) >> 16, f"code {code}")
    except ValueError:
        return f"code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_status(show: dict[str, str], entries: list[dict]) -> str:
    """systemd's words for how the main process ended: `226/NAMESPACE`, `killed by SIGSYS`,
    `1/FAILURE`; the journal's last 'Main process exited' line wins over `systemctl show`,
    which a restart in progress may already have reset."""
    for entry in reversed(entries):
        match = MAIN_EXIT_RE.search(entry.get("MESSAGE", ""))
        if not match:
            continue
        code, status, name = match.group(1), int(match.group(2)), match.group(3)
        if code in ("killed", "dumped"):
            return f"killed by {_signal_name(status)}" + (" (core dumped)" if code == "dumped"
                                                          else "")
        return f"{status}/{name}" if name else str(status)
    code = int(show.get("ExecMainCode") or 0)
    status = int(show.get("ExecMainStatus") or 0)
    if code in (CLD_KILLED, CLD_DUMPED):
        return f"killed by {_signal_name(status)}"
    if code == CLD_EXITED:
        if status in SYSTEMD_EXIT:
            return f"{status}/{SYSTEMD_EXIT[status][0]}"
        if status > 128 and status - 128 < 65:
            # a wrapper (bubblewrap) reports its child's death by signal N as 128+N
            return f"{status} (128+{_signal_name(status - 128)})"
        return str(status)
    return show.get("Result", "unknown")


def _systemd_lines(entries: list[dict], unit: str) -> list[str]:
    """Errors systemd itself logged about the unit's set-up (not the workload's output): from
    PID 1 or from the forked executor before exec (`(sleep)`, systemd-executor), tagged UNIT=."""
    lines = []
    for entry in entries:
        message = entry.get("MESSAGE", "")
        if entry.get("_TRANSPORT") != "journal" or MAIN_EXIT_RE.search(message):
            continue
        about_unit = entry.get("UNIT") == unit or message.startswith(f"{unit}: ")
        try:
            error = int(entry.get("PRIORITY", 6)) <= 3
        except ValueError:
            error = False
        if about_unit and (error or SETUP_FAILURE_RE.search(message) or STEP_RE.search(message)):
            lines.append(message.removeprefix(f"{unit}: "))
    return lines


def _wrapper_notice(message: str) -> bool:
    """The bubblewrap launcher's start-up notice (systemd < 257), not the workload's output.
    A crash-looping unit logs it again at each restart, right after the previous crash."""
    return message.startswith("kf-launch: ") and " names not known here: " in message


def _workload_lines(entries: list[dict]) -> list[str]:
    """The workload's own output (stdout/stderr to the journal), in order."""
    return [e.get("MESSAGE", "") for e in entries
            if e.get("_TRANSPORT") == "stdout" and e.get("MESSAGE")
            and not _wrapper_notice(e["MESSAGE"])]


def directive_for(lines: list[str], unit_text: str) -> tuple[str, str] | tuple[None, None]:
    """The unit line that names a path systemd complained about (e.g. InaccessiblePaths=/x),
    and the complaint."""
    for line in lines:
        for path in PATH_RE.findall(line):
            # older systemd prefixes the sandbox's mount root
            for root in ("/run/systemd/unit-root", "/run/systemd/mount-rootfs"):
                if path.startswith(root + "/"):
                    path = path[len(root):]
            path = path.rstrip(".,")
            for unit_line in unit_text.splitlines():
                key, sep, value = unit_line.partition("=")
                if not sep or key.strip().startswith(("#", ";", "ExecStart")):
                    continue
                values = [v.lstrip("-+:") for v in value.split()]
                if any(v == path or v.split(":")[0] == path for v in values):
                    return unit_line.strip(), line
    return None, None


def _directive_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", ";", "[")):
            out.append((key, value))
    return out


def changed_directives(previous_text: str | None, unit_text: str) -> list[str]:
    """What this run changed in the unit, directive by directive: `+InaccessiblePaths=/x`,
    `SystemCallFilter=~... (added accept4)`. A new unit has no previous text: []."""
    if previous_text is None:
        return []
    old, new = _directive_lines(previous_text), _directive_lines(unit_text)
    out = []
    for key in dict.fromkeys(pair[0] for pair in old + new):
        before = [v for k, v in old if k == key]
        after = [v for k, v in new if k == key]
        if before == after:
            continue
        if len(before) == len(after):
            for was, now in zip(before, after, strict=True):
                if was == now:
                    continue
                # list values (SystemCallFilter=~a b c): name the entries, not the whole line
                old_items, new_items = was.lstrip("~").split(), now.lstrip("~").split()
                if was[:1] == now[:1] and max(len(old_items), len(new_items)) > 1:
                    added = [t for t in new_items if t not in old_items]
                    removed = [t for t in old_items if t not in new_items]
                    out.append(f"{key}={'~' if now.startswith('~') else ''}... " + ", ".join(
                        ([f"added {' '.join(added)}"] if added else [])
                        + ([f"removed {' '.join(removed)}"] if removed else [])))
                else:
                    out.append(f"{key}={now} (was {key}={was})")
        else:
            out += [f"+{key}={v}" for v in after if v not in before]
            out += [f"-{key}={v}" for v in before if v not in after]
    return out


def explain(unit: str, show: dict[str, str], entries: list[dict], unit_text: str = "",
            component: str | None = None, previous_text: str | None = None) -> dict:
    """Everything known about why `unit` failed, and one sentence a person can act on."""
    status = exit_status(show, entries)
    changes = changed_directives(previous_text, unit_text)
    setup = _systemd_lines(entries, unit)
    workload = _workload_lines(entries)
    events = seccomp_events(entries)
    directive, complaint = directive_for(setup, unit_text)
    where = f"kernelfence_components[{component}]" if component else unit
    causes = []
    fix = None
    code = int(status.split("/")[0]) if status.split("/")[0].isdigit() else None
    if events:
        names = sorted({e["syscall"] for e in events})
        acted = sorted({f"{e['comm'] or e['exe']}: {e['syscall']} ({e['action']}"
                        + (f", {e['signal']}" if e["signal"] else "") + ")" for e in events})
        causes.append(f"the kernel's seccomp filter stopped {', '.join(acted)}")
        fix = (f"if the workload needs {', '.join(names)}, add it to {where}.syscalls.allow "
               "(and remove it from syscalls.deny); otherwise fix the workload")
    if directive:
        causes.append(f"systemd could not apply `{directive}` ({complaint})")
        fix = fix or (f"correct or remove `{directive.split('=')[0]}` in {where} (the path it "
                      "names must exist on this host; prefix it with '-' to make it optional)")
    elif setup:
        causes.append(f"systemd: {setup[0]}")
    if code in SYSTEMD_EXIT and not fix:
        fix = f"{SYSTEMD_EXIT[code][1]} ({where})"
    checked = [line for line in workload if SECCOMP_CHECK_RE.match(line)]
    if checked:
        # The start stopped before the workload: what sha256sum printed is not its output.
        workload = [line for line in workload if line not in checked
                    and not line.startswith("sha256sum: ")]
        causes.append("the check of its compiled seccomp program before the start failed: "
                      + "; ".join(dict.fromkeys(checked)))
        files = ", ".join(dict.fromkeys(SECCOMP_CHECK_RE.match(c).group(1) for c in checked))
        fix = fix or (f"{files} is missing or not what was deployed: run the play again "
                      f"(component_unit compiles and installs the program and its checksums "
                      f"for {where}); if it changes again, find what writes there")
    if workload and not setup:
        last = workload[-1]
        causes.append(f"its last output: {last!r}")
        refused = "PermissionError" in last or "Operation not permitted" in last \
            or "EPERM" in last
        denied = [name for change in changes if change.startswith("SystemCallFilter=~")
                  for name in change.partition(" added ")[2].partition(",")[0].split()]
        if not fix and refused and denied:
            fix = (f"the workload needs a syscall this run denied: remove {' '.join(denied)} "
                   f"from {where}.syscalls.deny")
        if not fix and refused:
            fix = (f"the workload was refused an operation it needs: a syscall its filter "
                   f"denies ({where}.syscalls) or a path or capability its sandbox withholds; "
                   "the lines before it in `journalctl -u " + unit + "` show which")
    if status.startswith("killed by SIGSYS") and not events:
        fix = fix or (f"a syscall was killed by a seccomp filter; enable kernel auditing or "
                      f"set SystemCallLog= to see which, then allow it in {where}.syscalls")
    if changes:
        causes.append(f"this run changed {'; '.join(changes)}")
        fix = fix or f"undo or correct that change in {where}"
    fix = fix or f"read `journalctl -u {unit}` and correct {where}"
    restarts = show.get("NRestarts")
    text = (f"{unit} failed its health check: exit status {status}"
            + (f" (restarted {restarts} times)" if restarts and restarts != "0" else "")
            + ("; " + "; ".join(causes) if causes else "") + f". Fix: {fix}")
    return {"unit": unit, "component": component, "exit_status": status, "directive": directive,
            "syscalls": events, "systemd": setup[-5:], "output": workload[-5:], "changes": changes,
            "fix": fix,
            "text": text}
