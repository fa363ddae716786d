# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attack plan of a compromised component, its expected outcomes, and how they are judged.

The plan is data: one entry per attempt with the outcome the confinement must produce (an errno
name, or "OK" for the controls that must succeed so a broken probe cannot pass). The probe
(attack_probe.py) runs the plan twice: in a sibling of the attacked unit that has its exact
confinement, and in a plain unit with the same user and no hardening (the baseline). The baseline
shows what the confinement, not file permissions alone, takes away.

Where the expected errno differs between the bubblewrap path (systemd < 257) and the native one
(PrivatePIDs=, systemd 257), the entry says why.
"""

from __future__ import annotations

import re

NATIVE_PID_NAMESPACE = 257
PROBE_DIR = "/run/kf-attack"

# Outcomes meaning the attacker got what it tried for. EINVAL counts: the attempts built on an
# invalid argument (hostname, reboot, clock) fail on it only after the privilege check passed.
LET_THROUGH = ("OK", "EINVAL", "privileged")


def _unit(record: dict) -> str:
    return record.get("unit") or f"kf-{record['name']}.service"


def _entry(ident: str, category: str, attempt: str, kind: str, args: list, expect: str,
           control: bool = False, why: str = "") -> dict:
    return {"id": ident, "category": category, "attempt": attempt, "kind": kind, "args": args,
            "expect": expect, "control": control, "why": why}


def build_plan(attacker: dict, records: list[dict], systemd: int, facts: dict) -> list[dict]:
    """Every attempt of `attacker` against the other components and the host.

    facts: what the module read on the host as root: `pids` {component: main PID},
    `host_pid` (a root process of the host PID namespace), `files` {path: first regular file
    under it}, `block_device` (/dev/NAME or None).
    """
    native = systemd >= NATIVE_PID_NAMESPACE
    peers = [r for r in records if r["name"] != attacker["name"]]
    plan: list[dict] = []
    add = plan.append

    # -- credentials and state of the others ------------------------------------------------
    for peer in peers:
        cred_dir = f"/run/credentials/{_unit(peer)}"
        for cred in peer.get("credentials") or []:
            add(_entry(f"read-credential-{peer['name']}-{cred['name']}", "credentials",
                       f"read {peer['name']}'s credential {cred['name']}", "open_read",
                       [f"{cred_dir}/{cred['name']}"], "EACCES"))
            add(_entry(f"read-credential-source-{peer['name']}-{cred['name']}", "credentials",
                       f"read the source of {peer['name']}'s credential {cred['name']}",
                       "open_read", [cred["src"]], "EACCES"))
        if peer.get("credentials"):
            add(_entry(f"list-credentials-{peer['name']}", "credentials",
                       f"list {peer['name']}'s credential directory", "listdir", [cred_dir],
                       "EACCES"))
        add(_entry(f"read-state-{peer['name']}", "state", f"list {peer['name']}'s state",
                   "listdir", [peer["state_dir"]], "EACCES"))
        add(_entry(f"write-state-{peer['name']}", "state",
                   f"create a file in {peer['name']}'s state", "create_file",
                   [f"{peer['state_dir']}/.kf-attack"], "EACCES"))
        for path in peer.get("readonly_paths") or []:
            target = facts.get("files", {}).get(path)
            if target:
                add(_entry(f"write-data-{peer['name']}-{path}", "state",
                           f"open {peer['name']}'s data file {target} for writing", "open_write",
                           [target], "EACCES",
                           why="root-owned 0644: write permission is checked before the "
                               "read-only mount"))
            add(_entry(f"create-data-{peer['name']}-{path}", "state",
                       f"add a file to {peer['name']}'s data directory {path}", "create_file",
                       [f"{path}/.kf-attack"], "EROFS",
                       why="ProtectSystem=strict: a read-only mount refuses creation before "
                           "the directory's permissions are consulted"))
        for sock in peer.get("sockets") or []:
            if attacker["name"] in (sock.get("allow") or []):
                continue
            add(_entry(f"connect-socket-{peer['name']}-{sock['name']}", "sockets",
                       f"connect to {peer['name']}'s socket {sock['path']}", "unix_connect",
                       [sock["path"]], "EACCES"))
            add(_entry(f"replace-socket-{peer['name']}-{sock['name']}", "sockets",
                       f"create an entry beside {peer['name']}'s socket (replace it)",
                       "create_file", [sock["path"].rsplit("/", 1)[0] + "/.kf-attack"],
                       "EACCES"))

    # -- processes ---------------------------------------------------------------------------
    for peer in peers:
        pid = facts.get("pids", {}).get(peer["name"])
        if not pid:
            continue
        name = peer["name"]
        add(_entry(f"see-{name}", "processes", f"see {name}'s process in /proc",
                   "proc_exists", [pid], "ENOENT"))
        add(_entry(f"signal-{name}", "processes", f"signal {name}'s process (kill 0)",
                   "signal_pid", [pid], "ESRCH",
                   why="its own PID namespace: the host PID names no process there"))
        add(_entry(f"ptrace-{name}", "processes", f"ptrace {name}'s process", "ptrace_attach",
                   [pid], "EPERM", why="ptrace is outside @system-service: seccomp EPERM"))
        add(_entry(f"cmdline-{name}", "processes", f"read {name}'s command line",
                   "open_read", [f"/proc/{pid}/cmdline"], "ENOENT"))
        add(_entry(f"environ-{name}", "processes", f"read /proc/{pid}/environ of {name}",
                   "open_read", [f"/proc/{pid}/environ"], "ENOENT"))
        add(_entry(f"mem-{name}", "processes", f"read /proc/{pid}/mem of {name}", "open_read",
                   [f"/proc/{pid}/mem"], "ENOENT"))
        add(_entry(f"root-{name}", "processes", f"reach {name}'s state through /proc/{pid}/root",
                   "listdir", [f"/proc/{pid}/root{peer['state_dir']}"], "ENOENT"))
    host_pid = facts.get("host_pid")
    if host_pid:
        add(_entry("see-host-pid", "processes", "see a root process of the host in /proc",
                   "proc_exists", [host_pid], "ENOENT"))
        add(_entry("signal-host-pid", "processes", "signal a root process of the host",
                   "signal_pid", [host_pid], "ESRCH"))
    add(_entry("procfs-of-host", "processes", "find the host's PIDs in /proc (a /proc of "
               "another PID namespace)", "procfs_is_own", [], "ENOENT",
               why="a /proc of its own PID namespace: /proc/self is its own PID"))
    orchestrator = next((p for p in peers if p.get("credentials")), None)
    if orchestrator:
        cred = orchestrator["credentials"][0]["name"]
        add(_entry("proc1-root-credential", "processes",
                   f"read {orchestrator['name']}'s credential through /proc/1/root", "open_read",
                   [f"/proc/1/root/run/credentials/{_unit(orchestrator)}/{cred}"], "EACCES",
                   why="PID 1 of its own PID namespace is its own (the probe under PrivatePIDs=, "
                       "bubblewrap under the wrapper): that root is its own view, where the "
                       "credential's permissions refuse"))

    add(_entry("write-proc-sys", "kernel", "write a kernel tunable (/proc/sys/kernel/core_pattern)",
               "open_write", ["/proc/sys/kernel/core_pattern"], "ENOENT" if native else "EACCES",
               why="257: ProcSubset=pid leaves no /proc/sys; 252: root-owned, and root is not "
                   "mapped in its user namespace (bubblewrap also mounts /proc/sys read-only)"))
    add(_entry("read-kmsg", "kernel", "read the kernel log (/proc/kmsg)", "open_read",
               ["/proc/kmsg"], "ENOENT" if native else "EACCES",
               why="257: ProcSubset=pid leaves no /proc/kmsg; 252: root-only, and root is "
                   "not mapped in its user namespace"))

    # -- kernel interfaces -------------------------------------------------------------------
    for kind in ("user", "net", "mnt"):
        add(_entry(f"unshare-{kind}", "kernel", f"create a {kind} namespace", "unshare", [kind],
                   "EPERM"))
    for ident, kind, text in (
            ("mount", "mount_tmpfs", "mount a tmpfs"),
            ("init-module", "init_module", "load a kernel module (init_module)"),
            ("finit-module", "finit_module", "load a kernel module (finit_module)"),
            ("bpf", "bpf_map_create", "create a BPF map (bpf)"),
            ("perf-event-open", "perf_event_open", "open a perf event on itself"),
            ("keyctl", "keyctl", "reach the session keyring (keyctl)"),
            ("kexec-load", "kexec_load", "load a new kernel (kexec_load)"),
            ("ptrace-own-child", "ptrace_own_child", "ptrace a child of its own"),
            ("io-uring-setup", "io_uring_setup", "set up an io_uring"),
            ("adjtimex", "adjtimex_invalid", "adjust the clock (adjtimex)"),
            ("clock-settime", "clock_settime_now", "set the clock (clock_settime)"),
            ("sethostname", "sethostname_invalid", "change the hostname"),
            ("reboot", "reboot_invalid", "reboot the host"),
            ("mmap-wx", "mmap_wx", "map memory writable and executable"),
            ("mprotect-wx", "mprotect_wx", "make writable memory executable"),
            ("raw-socket", "raw_socket", "open a raw IP socket")):
        add(_entry(ident, "kernel", text, kind, [], "EPERM"))
    add(_entry("packet-socket", "network", "open a packet socket", "packet_socket", [],
               "EAFNOSUPPORT", why="RestrictAddressFamilies= admits AF_INET and AF_UNIX only"))
    add(_entry("netlink-socket", "network", "open a netlink socket (routes, firewall)",
               "netlink_socket", [], "EAFNOSUPPORT"))
    add(_entry("inet6-socket", "network", "open an IPv6 socket (around an IPv4 allow list)",
               "inet6_socket", [], "EAFNOSUPPORT"))
    add(_entry("personality", "kernel", "switch to READ_IMPLIES_EXEC (personality)",
               "personality_exec", [], "EPERM", why="LockPersonality=yes"))
    add(_entry("setuid-plant", "privilege", "plant a setuid file of its own", "chmod_setuid",
               [attacker["state_dir"]], "EPERM", why="RestrictSUIDSGID=yes"))
    add(_entry("bind-privileged-port", "network", "bind 127.0.0.1:80", "bind_port", [80],
               "EACCES"))
    add(_entry("setuid-su", "privilege", "gain root through the setuid-root /usr/bin/su",
               "setuid_exec", ["/usr/bin/su"], "unprivileged",
               why="NoNewPrivileges=yes: the setuid bit is ignored at execve"))
    add(_entry("setuid-passwd", "privilege", "gain root through the setuid-root /usr/bin/passwd",
               "setuid_exec", ["/usr/bin/passwd"], "unprivileged"))
    for marker in facts.get("markers") or []:
        add(_entry(f"shared{marker.rsplit('/', 1)[0].replace('/', '-')}", "filesystem",
                   f"find a file another user left in {marker.rsplit('/', 1)[0]}", "open_read",
                   [marker], "ENOENT", why="its own size-bounded tmpfs at /tmp, /var/tmp and "
                   "/dev/shm (TemporaryFileSystem=; PrivateTmp=yes where a unit has no "
                   "resources)"))

    # -- the host file system ----------------------------------------------------------------
    for path in ("/etc", "/usr/lib", "/boot", "/var/lib/dpkg"):
        add(_entry(f"write{path.replace('/', '-')}", "filesystem", f"create a file in {path}",
                   "create_file", [f"{path}/.kf-attack"], "EROFS"))
    add(_entry("read-dev-mem", "filesystem", "read /dev/mem", "open_read", ["/dev/mem"],
               "ENOENT", why="PrivateDevices=yes: no /dev/mem in its /dev"))
    if facts.get("block_device"):
        add(_entry("read-block-device", "filesystem", f"read {facts['block_device']}",
                   "open_read", [facts["block_device"]], "ENOENT"))

    # -- network -----------------------------------------------------------------------------
    egress = [e for e in (attacker.get("network") or {}).get("egress") or []
              if e.get("proto", "tcp") == "tcp" and re.match(r"^127\.", str(e.get("host")))]
    if egress:
        allowed = egress[0]
        listed = {(e["host"], int(e["port"])) for e in egress}
        other_port = next(p for p in range(int(allowed["port"]) + 1, 65536)
                          if (allowed["host"], p) not in listed)
        add(_entry("egress-other-port", "network",
                   f"connect to {allowed['host']}:{other_port} (not in its allow list)",
                   "tcp_connect", [allowed["host"], other_port], "EHOSTUNREACH",
                   why="the nftables policy rejects with admin-prohibited"))
        add(_entry("egress-other-address", "network",
                   f"connect to 127.0.0.2:{allowed['port']} (not in its allow list)",
                   "tcp_connect", ["127.0.0.2", int(allowed["port"])], "EHOSTUNREACH"))
        add(_entry("egress-dns", "network", "ask a DNS resolver outside its allow list "
                   "(127.0.0.53:53)", "udp_exchange", ["127.0.0.53", 53], "EPERM",
                   why="IPAddressAllow= admits only its allowed addresses: the BPF filter "
                       "refuses the datagram"))
        add(_entry("control-egress-allowed", "control",
                   f"connect to its allowed endpoint {allowed['host']}:{allowed['port']}",
                   "tcp_connect", [allowed["host"], int(allowed["port"])], "OK", control=True))

    # -- controls: the probe works ------------------------------------------------------------
    add(_entry("control-own-state", "control", "list its own state", "listdir",
               [attacker["state_dir"]], "OK", control=True))
    add(_entry("control-write-own-state", "control", "create a file in its own state",
               "create_file", [f"{attacker['state_dir']}/.kf-attack-control"], "OK",
               control=True))
    for path in attacker.get("readonly_paths") or []:
        if facts.get("files", {}).get(path):
            add(_entry(f"control-read-{path}", "control", f"read its own data {path}",
                       "open_read", [facts["files"][path]], "OK", control=True))
    add(_entry("control-own-socket", "control", "connect to a socket of its own",
               "unix_self", [attacker["state_dir"]], "OK", control=True))
    add(_entry("control-see-itself", "control", "see itself in /proc", "proc_exists",
               ["self"], "OK", control=True))
    add(_entry("control-inet-socket", "control", "open a TCP socket", "inet_socket", [], "OK",
               control=True))
    add(_entry("control-mmap-rw", "control", "map memory writable (not executable)",
               "mmap_rw", [], "OK", control=True))
    add(_entry("control-bad-pointer", "control", "uname() with an unmapped address",
               "bad_pointer", [], "EFAULT", control=True,
               why="a raw call that reaches the kernel reports its errno"))
    return plan


def evaluate(plan: list[dict], confined: dict, baseline: dict | None) -> dict:
    """Judge the outcomes: every attempt blocked with its errno, every control passing."""
    rows = []
    for item in plan:
        got = confined.get(item["id"], "missing")
        row = {"id": item["id"], "category": item["category"], "attempt": item["attempt"],
               "control": item["control"], "expected": item["expect"], "observed": got,
               "passed": got == item["expect"],
               "escaped": not item["control"] and got in LET_THROUGH, "why": item["why"]}
        if baseline is not None:
            base = baseline.get(item["id"], "missing")
            row["baseline"] = base
            row["baseline_let_through"] = (not item["control"]) and base in LET_THROUGH
        rows.append(row)
    attacks = [r for r in rows if not r["control"]]
    summary = {
        "attempted": len(attacks),
        "blocked": sum(1 for r in attacks if r["passed"]),
        "escaped": [r["id"] for r in attacks if r["escaped"]],
        "unexpected": [r["id"] for r in attacks if not r["passed"] and not r["escaped"]],
        "controls": len(rows) - len(attacks),
        "controls_failed": [r["id"] for r in rows if r["control"] and not r["passed"]],
    }
    if baseline is not None:
        summary["baseline_let_through"] = [r["id"] for r in attacks if r["baseline_let_through"]]
        summary["baseline_controls_failed"] = [
            r["id"] for r in rows if r["control"] and r["baseline"] != r["expected"]]
    return {"rows": rows, "summary": summary}


# -- the units the probe runs in --------------------------------------------------------------

def _sections(text: str) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
    return sections


DROP_SERVICE_KEYS = ("Type", "ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload",
                     "ExecStop", "ExecStopPost", "Restart", "RestartSec", "Sockets",
                     "StandardOutput", "StandardError", "StandardInput", "WatchdogSec",
                     "TimeoutStartSec", "RemainAfterExit", "NotifyAccess")


def _seccomp_check(key: str, value: str) -> bool:
    """kernelfence's check of the compiled seccomp program before each start (systemd < 257):
    part of the confinement, so a sibling keeps it."""
    return (key == "ExecStartPre" and value.startswith("/usr/bin/sha256sum --check ")
            and value.endswith(".bpf.sha256"))


def sibling_unit(merged: str, record: dict, probe_argv: list[str], result_file: str) -> str:
    """The attacked unit's own text (`systemctl cat`: file and drop-ins) made into a oneshot run
    of the probe: every sandboxing, identity and resource directive stays as it is; only the
    start-up (ExecStart=, Type=, restarts, socket wiring) and [Install] change. The component's
    command in its last ExecStart= is replaced by the probe, so a bubblewrap wrapper stays."""
    command = record.get("command") or ""
    execs = [line.split("=", 1)[1] for section, lines in _sections(merged)
             if section == "[Service]" for line in lines if line.startswith("ExecStart=")]
    execs = [e for e in execs if e.strip()]
    if not execs:
        raise ValueError(f"{_unit(record)} has no ExecStart= to take the probe's place")
    exec_start = execs[-1]
    if not command or not exec_start.rstrip().endswith(command):
        raise ValueError(f"{_unit(record)}: its ExecStart= does not end with the component's "
                         f"command {command!r}; the probe cannot take the workload's place")
    probe = " ".join(probe_argv)
    new_exec = exec_start.rstrip()[: -len(command)] + probe
    sockets = {f"kf-{record['name']}.socket"}
    out = [f"# kernelfence attack probe: {_unit(record)} with its command replaced (runtime "
           "unit, removed after the run)"]
    for section, lines in _sections(merged):
        if section == "[Install]":
            continue
        kept = []
        for line in lines:
            key, value = line.split("=", 1) if "=" in line else (line, "")
            if section == "[Unit]" and key in ("Requires", "After", "Wants", "BindsTo",
                                               "PartOf") and value.strip() in sockets:
                continue
            if section == "[Unit]" and key == "Description":
                continue
            if section == "[Service]" and key in DROP_SERVICE_KEYS and not _seccomp_check(
                    key, value):
                continue
            kept.append(line)
        if section == "[Unit]":
            kept = [f"Description=kernelfence attack probe in {_unit(record)}'s confinement",
                    f"JoinsNamespaceOf={_unit(record)}", *kept]
        if section == "[Service]":
            kept += ["Type=oneshot", f"ExecStart={new_exec}",
                     f"StandardOutput=truncate:{result_file}", "StandardError=journal",
                     "TimeoutStartSec=300"]
        out.append(section)
        out.extend(kept)
    return "\n".join(out) + "\n"


def baseline_unit(record: dict, probe_argv: list[str], result_file: str) -> str:
    """The same probe as the component's user, in a plain unit: no hardening at all."""
    return "\n".join([
        "# kernelfence attack probe baseline: the component's user, no hardening (runtime unit)",
        "[Unit]",
        f"Description=kernelfence attack probe baseline as {record['user']}",
        "[Service]",
        "Type=oneshot",
        f"User={record['user']}",
        f"Group={record['group']}",
        f"ExecStart={' '.join(probe_argv)}",
        f"StandardOutput=truncate:{result_file}",
        "StandardError=journal",
        "TimeoutStartSec=300",
    ]) + "\n"
