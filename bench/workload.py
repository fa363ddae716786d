#!/usr/bin/env python3
"""Benchmark part 1, run as root INSIDE a converged VM: the executor's jobs under each confinement.

`python3 workload.py --out workload.json [--runs-trivial 15] [--runs-audit 7]`. Not a timed test.
Stdlib only (the guest has no venv); bench/run.py copies it with attack_plan.py next to it.

Three jobs (a trivial /bin/true, the executor's real `cargo audit`, argv as in
demo/components/executor.py, and dd of /dev/zero sized to about 1.5 s bare) are started,
interleaved round by round with the mode order rotated,
in each confinement:
- bare: the job as the executor's user (setpriv: uid, gid and groups only), no sandbox;
- hardened: a runtime unit with the executor unit's own directives (`systemctl cat`, made into a
  oneshot by attack_plan.sibling_unit, the same transformation the attack suite uses), timed
  from `systemctl start` to its return (start to exit), plus systemd's own timestamps;
- bwrap: bubblewrap alone (all namespaces unshared, read-only /usr and job inputs);
- podman: `podman run --rm` with runc, of an image imported from the guest's Debian rootfs,
  with equivalent confinement (no network, read-only, no capabilities, no new privileges,
  the executor's uid); only if podman is installed.
On systemd < 257 the unit's own start path is also timed without systemd's job (`start_path`):
its ExecStartPre= check of the compiled seccomp program and its ExecStart= hand-off to
bubblewrap (--seccomp), /bin/true as the command, against the same bubblewrap argv alone.
`--start-path-only UNIT` times only that, for a unit file rendered elsewhere (a host whose PID 1
is not systemd).
Every run's result is checked (exit status, and for cargo audit the JSON report's vulnerability
count must be the same in every mode), so a mode that failed to run the job cannot look fast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
# Beside it in the guest; from the checkout, where the collection keeps it.
sys.path[:0] = [HERE, os.path.join(HERE, "..", "plugins", "module_utils")]
from attack_plan import sibling_unit  # noqa: E402

CARGO_AUDIT = "/opt/kernelfence/bin/executor/cargo-audit/current/cargo-audit"
WORKSPACE = "/srv/kernelfence/executor"
# A job of at least a second (bare), for the "job of one second or longer" goal when
# cargo audit on the fixture takes less: dd copying N MiB from /dev/zero to /dev/null (every
# read and write passes the job's seccomp filter), N calibrated. No argument has a space or
# a quote: the hardened unit's ExecStart= takes the argv joined by spaces.
CPU_JOB = ["/usr/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=1M"]
JOBS = {
    "trivial": ["/bin/true"],
    "cargo-audit": [CARGO_AUDIT, "audit", "--db", f"{WORKSPACE}/advisory-db", "--no-fetch",
                    "--json", "--file", f"{WORKSPACE}/Cargo.lock"],
    "dd-1s": [*CPU_JOB, "count=1000"],
}
RECORD = {"name": "executor", "user": "kf-executor", "group": "kf-executor",
          "command": "/usr/bin/python3 /opt/kernelfence/demo/executor.py"}
UNIT_DIR = Path("/run/systemd/system")
OUT_DIR = Path("/run/kfbench")
IMAGE = "localhost/kfbench-rootfs"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
PROPS = ("InactiveExitTimestampMonotonic", "ExecMainStartTimestampMonotonic",
         "ExecMainExitTimestampMonotonic", "ExecMainStatus")


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def unit_name(job: str) -> str:
    return f"kf-bench-{job}.service"


def calibrate_cpu_job(target_s: float = 1.5) -> None:
    """Size the CPU job so that it takes about target_s bare on this machine."""
    best = min(run_direct(as_user([*CPU_JOB, "count=1000"]))["s"] for _ in range(3))
    JOBS["dd-1s"] = [*CPU_JOB, f"count={max(1000, int(1000 * target_s / max(best, 1e-3)))}"]


def install_units() -> None:
    merged = sh(["systemctl", "cat", "kf-executor.service"])
    if merged.returncode:
        sys.exit(f"kf-executor.service is not installed (converge site.yml first): {merged.stderr}")
    OUT_DIR.mkdir(mode=0o755, exist_ok=True)
    for job, argv in JOBS.items():
        text = sibling_unit(merged.stdout, RECORD, argv, str(OUT_DIR / f"{job}.out"))
        (UNIT_DIR / unit_name(job)).write_text(text)
    sh(["systemctl", "daemon-reload"])


def remove_units() -> None:
    for job in JOBS:
        sh(["systemctl", "reset-failed", unit_name(job)])
        (UNIT_DIR / unit_name(job)).unlink(missing_ok=True)
    sh(["systemctl", "daemon-reload"])


def ids() -> tuple[int, int]:
    entry = pwd.getpwnam(RECORD["user"])
    return entry.pw_uid, entry.pw_gid


def as_user(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={RECORD['user']}", f"--regid={RECORD['group']}",
            "--init-groups", "--", *argv]


def bwrap_argv(argv: list[str], unprivileged: bool) -> list[str]:
    uid, gid = ids()
    inner = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
             "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
             "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
             "--symlink", "usr/sbin", "/sbin", "--ro-bind", "/etc", "/etc",
             "--ro-bind", "/opt/kernelfence/bin", "/opt/kernelfence/bin",
             "--ro-bind", WORKSPACE, WORKSPACE, "--proc", "/proc", "--dev", "/dev",
             "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    if unprivileged:
        return as_user([*inner, "--", *argv])
    return [*inner, "--unshare-user", "--uid", str(uid), "--gid", str(gid), "--", *argv]


def podman_argv(argv: list[str]) -> list[str]:
    uid, gid = ids()
    return ["podman", "run", "--rm", "--runtime", "runc", "--network", "none", "--read-only",
            "--cap-drop", "all", "--security-opt", "no-new-privileges", "--user", f"{uid}:{gid}",
            "--env", "HOME=/nonexistent",
            "-v", "/opt/kernelfence/bin:/opt/kernelfence/bin:ro",
            "-v", f"{WORKSPACE}:{WORKSPACE}:ro", IMAGE, *argv]


def build_podman_image() -> str | None:
    """Import the guest's own Debian rootfs (usr merged, no kernel modules or docs) as the image."""
    if not shutil.which("podman"):
        return "podman is not installed in the guest"
    if sh(["podman", "image", "exists", IMAGE]).returncode == 0:
        return None
    tar = subprocess.Popen(["tar", "-C", "/", "--exclude=usr/lib/modules", "--exclude=usr/share",
                            "--exclude=usr/lib/firmware", "--exclude=etc/kernelfence",
                            "--exclude=etc/shadow", "--exclude=etc/ssh", "-cf", "-",
                            "usr", "bin", "lib", "lib64", "sbin", "etc"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    imported = subprocess.run(["podman", "import", "-", IMAGE], stdin=tar.stdout,
                              capture_output=True, text=True, check=False)
    tar.wait()
    if imported.returncode:
        return f"podman import failed: {imported.stderr.strip()[-500:]}"
    return None


def vulnerabilities(stdout: str) -> int | None:
    try:
        return int(json.loads(stdout)["vulnerabilities"]["count"])
    except (ValueError, KeyError, TypeError):
        return None


def run_direct(argv: list[str]) -> dict:
    began = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
    return {"s": time.perf_counter() - began, "rc": proc.returncode, "stdout": proc.stdout,
            "stderr": proc.stderr[-400:]}


def run_unit(job: str) -> dict:
    unit = unit_name(job)
    began = time.perf_counter()
    proc = sh(["systemctl", "start", unit])
    elapsed = time.perf_counter() - began
    shown = sh(["systemctl", "show", unit, *(f"-p{p}" for p in PROPS)]).stdout
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    sh(["systemctl", "reset-failed", unit])
    out = OUT_DIR / f"{job}.out"
    mono = {k: int(props.get(k) or 0) for k in PROPS[:3]}
    return {"s": elapsed, "rc": int(props.get("ExecMainStatus") or -1),
            "stdout": out.read_text() if out.exists() else "",
            "stderr": proc.stderr[-400:],
            "activation_s": (mono["ExecMainStartTimestampMonotonic"]
                             - mono["InactiveExitTimestampMonotonic"]) / 1e6,
            "main_s": (mono["ExecMainExitTimestampMonotonic"]
                       - mono["ExecMainStartTimestampMonotonic"]) / 1e6}


def start_lines(merged: str) -> list[tuple[str, str]]:
    """A unit's ExecStartPre= lines and its last ExecStart= line ([Service], drop-ins merged)."""
    pre, start = [], None
    for line in merged.splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStartPre" and value.strip():
            pre.append(("ExecStartPre", value.strip()))
        elif key == "ExecStart" and value.strip():
            start = ("ExecStart", value.strip())
    return [*pre, start] if start else pre


def systemd_argv(value: str) -> list[str]:
    """An Exec*= value as systemd splits it (quotes; "$$" is a literal "$")."""
    return [word.replace("$$", "$") for word in shlex.split(value)]


def start_path(merged: str, command: str, user: str, runs: int) -> dict:
    """systemd 252's hardened start path against bubblewrap alone, without systemd's job:
    the unit's ExecStartPre= commands (the check of the compiled seccomp program) then its
    ExecStart= (the hand-off to bubblewrap with --seccomp), the component's command replaced
    by /bin/true, against the same bubblewrap argv without --seccomp; both as the component's
    user, interleaved, medians in milliseconds."""
    lines = start_lines(merged)
    pre = [systemd_argv(v) for k, v in lines if k == "ExecStartPre"]
    start = systemd_argv(lines[-1][1])
    words = systemd_argv(command)
    if start[-len(words):] != words or "/usr/bin/bwrap" not in start:
        return {"skipped": "the unit's ExecStart= is not bubblewrap around the command "
                           "(systemd 257 and later start the command itself)"}
    start = [*start[:-len(words)], "/bin/true"]
    bwrap = start[start.index("/usr/bin/bwrap"):]
    if "--seccomp" in bwrap:
        cut = bwrap.index("--seccomp")
        del bwrap[cut:cut + 2]
    entry = pwd.getpwnam(user)
    ident = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def run(argv: list[str]) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, env=ENV, **ident)
        if proc.returncode:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {proc.stderr[-400:]}")

    def hardened() -> None:
        for argv in pre:  # systemd runs ExecStartPre= first; a failure stops the start
            run(argv)
        run(start)

    modes = {"bwrap": lambda: run(bwrap), "hardened_start": hardened}
    samples: dict[str, list[float]] = {m: [] for m in modes}
    for mode in modes:  # warm-up
        modes[mode]()
    names = list(modes)
    for r in range(runs):
        for mode in names[r % 2:] + names[:r % 2]:
            began = time.perf_counter()
            modes[mode]()
            samples[mode].append(round((time.perf_counter() - began) * 1000, 3))
    medians = {m: round(statistics.median(v), 3) for m, v in samples.items()}
    return {"samples_ms": samples, "median_ms": medians,
            "over_bwrap_ms": round(medians["hardened_start"] - medians["bwrap"], 3),
            "as_user": user, "exec_start_pre": [" ".join(a) for a in pre],
            "exec_start": " ".join(start), "bwrap": " ".join(bwrap),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs-trivial", type=int, default=15)
    parser.add_argument("--runs-audit", type=int, default=7)
    parser.add_argument("--start-path-only", type=Path, metavar="UNIT",
                        help="only time the start path of this unit file (with its compiled "
                        "seccomp program installed) against bubblewrap alone, e.g. on a host "
                        "without systemd as PID 1")
    parser.add_argument("--command", default=RECORD["command"],
                        help="the component's command at the end of UNIT's ExecStart=")
    parser.add_argument("--user", default=RECORD["user"], help="run as this user")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root inside the VM")
    if args.start_path_only:
        result = start_path(args.start_path_only.read_text(), args.command, args.user,
                            args.runs_trivial)
        result.update({"date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
                       "kernel": platform.release(), "cpus": os.cpu_count(),
                       "bwrap_version": sh(["bwrap", "--version"]).stdout.strip()})
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["median_ms"]))
        return
    calibrate_cpu_job()
    install_units()
    try:
        unprivileged = sh(bwrap_argv(["/bin/true"], True), env=ENV).returncode == 0
        podman_missing = build_podman_image()
        modes: dict = {
            "bare": lambda job: run_direct(as_user(JOBS[job])),
            "hardened": run_unit,
            "bwrap": lambda job: run_direct(bwrap_argv(JOBS[job], unprivileged)),
        }
        if podman_missing is None:
            modes["podman"] = lambda job: run_direct(podman_argv(JOBS[job]))
        names = list(modes)
        samples: dict = {job: {m: [] for m in names} for job in JOBS}
        checks: dict = {job: {m: set() for m in names} for job in JOBS}
        errors: list[str] = []
        for job in JOBS:  # warm-up, not recorded: caches, podman storage, the unit load
            for mode in names:
                modes[mode](job)
        rounds = max(args.runs_trivial, args.runs_audit)
        for r in range(rounds):
            for job, runs in (("trivial", args.runs_trivial), ("cargo-audit", args.runs_audit),
                              ("dd-1s", args.runs_audit)):
                if r >= runs:
                    continue
                order = names[r % len(names):] + names[: r % len(names)]
                for mode in order:
                    res = modes[mode](job)
                    if job in ("trivial", "dd-1s"):
                        key = res["rc"]
                    else:
                        key = (res["rc"], vulnerabilities(res["stdout"]))
                    checks[job][mode].add(str(key))
                    if (job == "trivial" and res["rc"] != 0) or (
                            job == "dd-1s" and res["rc"] != 0) or (
                            job == "cargo-audit" and vulnerabilities(res["stdout"]) is None):
                        errors.append(f"{job}/{mode}: rc {res['rc']} {res['stderr']!r}")
                        continue
                    samples[job][mode].append({k: round(v, 4) for k, v in res.items()
                                               if k in ("s", "activation_s", "main_s")})
        merged = sh(["systemctl", "cat", "kf-executor.service"]).stdout
        start = start_path(merged, RECORD["command"], RECORD["user"], args.runs_trivial)
        load = Path("/proc/loadavg").read_text().split()[:3]
        result = {
            "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "systemd": sh(["systemctl", "--version"]).stdout.split()[1],
            "bwrap_as": "kf-executor (unprivileged user namespace)" if unprivileged
            else "root with --unshare-user --uid/--gid (no unprivileged user namespaces)",
            "podman": None if podman_missing else sh(["podman", "--version"]).stdout.strip(),
            "podman_missing": podman_missing, "guest_loadavg_end": load,
            "argv": JOBS, "samples": samples,
            "results_seen": {j: {m: sorted(v) for m, v in c.items()} for j, c in checks.items()},
            "errors": errors[:20], "start_path": start,
        }
    finally:
        remove_units()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({j: {m: len(v) for m, v in s.items()} for j, s in samples.items()}))


if __name__ == "__main__":
    main()
