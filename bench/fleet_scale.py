#!/usr/bin/env python3
"""Fleet scaling: `site.yml` wall time on 1, 2, 4 and 8 hosts (bench part 3).

The hosts are systemd-nspawn machines booted on this machine (no emulation) from the lab's
Debian 12 guest image: a read-only loop mount of its rootfs, one overlay per machine (every
size starts from a clean host), each machine in a network namespace of its own reached from
here over a veth pair (10.251.N.1 here, 10.251.N.2 there; nothing else is addressed). They
share this machine's kernel: they measure the controller's fan-out and the per-host work, not
isolation (the VM scenarios prove that).

Per size: boot the machines, `demo/prepare.yml` (not timed), then `site.yml` timed, with the
default forks and one batch (`kernelfence_serial: ['100%']`) so the figure is the fan-out, and
with the site's default batches ([1, '25%']) too unless --skip-batched; the one-batch run is
timed again right after (the idempotent re-run, changed=0 expected). The host baseline's
sysctl switches are off: a container's /proc/sys is read-only (the VM scenarios test them).

Run as root from the checkout: `python3 bench/fleet_scale.py [--sizes 1,2,4,8]`; it writes
bench/results/fleet.json, which the report step (bench/report.py) puts in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A script run from the checkout: the repository root goes on sys.path before the imports.
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from tools.kflab import setup, vm  # noqa: E402
from tools.kflab.common import CACHE, HarnessError, log, run  # noqa: E402
from tools.kflab.image import ensure_image, ssh_keypair  # noqa: E402

WORK = CACHE / "fleet-bench"
RESULTS = REPO / "bench" / "results"
# Every switch of roles/host_baseline/defaults/main.yml that writes a sysctl.
BASELINE_OFF = {f"host_baseline_{name}": False for name in (
    "ptrace_scope", "unprivileged_bpf_disabled", "bpf_jit_harden", "kptr_restrict",
    "dmesg_restrict", "perf_event_paranoid", "protected_hardlinks", "protected_symlinks",
    "protected_fifos", "protected_regular", "suid_dumpable")}


class Machine:
    def __init__(self, index: int, lower: Path, nspawn_args: tuple[str, ...] = ()) -> None:
        self.index, self.lower, self.nspawn_args = index, lower, nspawn_args
        self.name = f"kfb{index}"
        self.dir = WORK / self.name
        self.root = self.dir / "root"
        self.address = f"10.251.{index}.2"
        self.proc: subprocess.Popen | None = None

    def boot(self) -> None:
        self.destroy()
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.lower},upperdir={self.dir}/upper,workdir={self.dir}/work",
             str(self.root)])
        (self.root / "etc/hostname").write_text(f"{self.name}\n")
        (self.root / "etc/machine-id").write_text("")  # a new id per boot
        run(["ip", "netns", "add", self.name])
        host_if, guest_if = f"kfbh{self.index}", "kfv0"
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", guest_if, "netns",
             self.name])
        run(["ip", "addr", "add", f"10.251.{self.index}.1/30", "dev", host_if])
        run(["ip", "link", "set", host_if, "up"])
        for argv in (["addr", "add", f"{self.address}/30", "dev", guest_if],
                     ["link", "set", guest_if, "up"], ["link", "set", "lo", "up"]):
            run(["ip", "-n", self.name, *argv])
        console = open(self.dir / "console.log", "wb")  # noqa: SIM115 (closed by the child)
        # --register=no --keep-unit: this machine's PID 1 is not systemd. CAP_NET_ADMIN: the
        # machine loads its own nftables table in its own network namespace.
        proc = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive",
             "-D", str(self.root), "-M", self.name, "--capability=CAP_NET_ADMIN",
             f"--network-namespace-path=/run/netns/{self.name}", *self.nspawn_args],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True,
            # This machine mounts cgroups hybrid (v1 controllers, v2 at .../unified): the
            # machines get a cgroup2-only hierarchy, as the targets have.
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"})
        console.close()
        self.proc = proc

    def wait_ssh(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            probe = subprocess.run(self.ssh("systemctl is-system-running --wait"),
                                   capture_output=True, text=True, timeout=120, check=False)
            if probe.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(1)
        raise HarnessError(f"{self.name}: no SSH login; console: "
                           f"{(self.dir / 'console.log').read_text()[-2000:]}")

    def ssh(self, command: str) -> list[str]:
        return ["ssh", *vm.SSH_OPTS, "-i", str(ssh_keypair()), f"root@{self.address}", command]

    def host(self) -> dict:
        return {"ansible_host": self.address, "ansible_user": "root",
                "ansible_ssh_private_key_file": str(ssh_keypair()),
                "ansible_ssh_common_args": " ".join(vm.SSH_OPTS),
                "ansible_python_interpreter": "/usr/bin/python3",
                "kernelfence_release_dir": str(setup.RELEASE)}

    def destroy(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # nspawn halts the machine's systemd cleanly
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
            self.proc = None
        # A machine of an earlier, interrupted run (the lock below keeps runs apart).
        for pid in subprocess.run(["pgrep", "-f", f"systemd-nspawn .* -M {self.name} "],
                                  capture_output=True, text=True, check=False).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        if self.root.is_mount():
            run(["umount", "-l", str(self.root)], check=False)
        run(["ip", "link", "del", f"kfbh{self.index}"], check=False, capture=True)
        run(["ip", "netns", "del", self.name], check=False, capture=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def write_inventory(path: Path, hosts: dict[str, dict]) -> Path:
    """An inventory of nspawn machines with the example's group_vars beside it (the three
    reference components): each part that boots machines writes its own, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"all": {"children": {"kernelfence": {"hosts": hosts}}}},
                               indent=2))
    group_vars = path.parent / "group_vars"
    target = REPO / "inventory" / "example" / "group_vars"
    if group_vars.is_symlink() and group_vars.resolve() != target.resolve():
        group_vars.unlink()  # a link of another checkout
    if not group_vars.is_symlink():
        if group_vars.exists():
            raise HarnessError(f"{group_vars} is not the link to {target}; remove it: "
                               f"rm -r {group_vars}")
        group_vars.symlink_to(target)
    return path


def playbook(inv: Path, book: str, extra: Path, timing: Path | None) -> float:
    env = setup.tool_env()
    # Every measurement boots machines on the same addresses: no SSH master of an earlier
    # machine (the directory is the measurement's own, see measure()).
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(extra.parent / "cp")
    if timing is not None:
        env["ANSIBLE_CALLBACK_PLUGINS"] = str(REPO / "bench" / "callback_plugins")
        env["ANSIBLE_CALLBACKS_ENABLED"] = "kf_bench_timing"
        env["KF_BENCH_TIMING_OUT"] = str(timing)
    began = time.monotonic()
    run([str(setup.venv_dir() / "bin" / "ansible-playbook"), "-i", str(inv), "-e",
         f"@{extra}", str(REPO / book)], env=env, cwd=REPO, timeout=3600)
    return time.monotonic() - began


def measure(size: int, lower: Path, serial: list, label: str) -> dict:
    machines = [Machine(i, lower) for i in range(1, size + 1)]
    try:
        began = time.monotonic()
        for m in machines:
            m.boot()
        for m in machines:
            m.wait_ssh(time.monotonic() + 180)
        boot_s = time.monotonic() - began
        inv = write_inventory(WORK / f"hosts-{size}.json", {m.name: m.host() for m in machines})
        run_dir = WORK / f"run-{size}-{serial[0]}".replace("%", "pct")
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        extra = run_dir / "extra.json"
        extra.write_text(json.dumps({**BASELINE_OFF, "kernelfence_serial": serial}))
        log(f"fleet bench: {size} host(s), {label}: demo/prepare.yml (not timed)")
        playbook(inv, "demo/prepare.yml", extra, None)
        log(f"fleet bench: {size} host(s), {label}: site.yml, timed")
        timing = WORK / f"timing-{size}-{label}.json"
        timing.unlink(missing_ok=True)
        wall = playbook(inv, "site.yml", extra, timing)
        summary = report.rollout_summary(json.loads(timing.read_text()))
        rerun = {}
        if serial == ["100%"]:
            log(f"fleet bench: {size} host(s), {label}: site.yml again (idempotent), timed")
            again = WORK / f"timing-{size}-rerun.json"
            again.unlink(missing_ok=True)
            rerun_wall = playbook(inv, "site.yml", extra, again)
            rerun_summary = report.rollout_summary(json.loads(again.read_text()))
            rerun = {"rerun_wall_s": round(rerun_wall, 1),
                     "rerun_changed": rerun_summary.get("changed"),
                     "rerun_module_invocations": rerun_summary.get("invocations")}
        return {**rerun, "hosts": size, "batches": label, "serial": serial,
                "wall_s": round(wall, 1),
                "callback_wall_s": summary.get("wall_s"), "tasks": summary.get("tasks"),
                "module_invocations": summary.get("invocations"),
                "changed": summary.get("changed"), "boot_s": round(boot_s, 1),
                "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up is not interrupted
        for m in machines:
            try:
                m.destroy()
            except (OSError, HarnessError, subprocess.SubprocessError) as exc:
                log(f"fleet bench: {m.name} not fully destroyed: {exc}")
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(*_args) -> None:
    # Unwind like an exception so the machines are destroyed; a second SIGTERM (timeout(1)
    # forwards its own) must not interrupt that clean-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit("fleet bench: terminated")


@contextlib.contextmanager
def locked():
    """One nspawn benchmark at a time: the machines' names and addresses are fixed."""
    if not shutil.which("systemd-nspawn"):
        sys.exit("systemd-nspawn is missing: apt-get install systemd-container")
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"nspawn bench: another run holds {WORK}/.lock")
        yield


@contextlib.contextmanager
def mounted_image():
    """The lab's Debian 12 image, mounted read-only: the lower layer of every machine."""
    image = ensure_image("debian12")
    lower = WORK / "lower"
    lower.mkdir(exist_ok=True)
    if not lower.is_mount():
        run(["mount", "-o", "loop,ro", str(image.disk), str(lower)])
    try:
        yield lower
    finally:
        run(["umount", str(lower)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--skip-batched", action="store_true",
                        help="only the one-batch run per size")
    parser.add_argument("--out", default=str(RESULTS / "fleet.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (loop mount, overlays, network namespaces, systemd-nspawn)")
    signal.signal(signal.SIGTERM, _terminated)
    rows = []
    with locked(), mounted_image() as lower:
        for size in [int(s) for s in args.sizes.split(",")]:
            rows.append(measure(size, lower, ["100%"], "one batch"))
            if not args.skip_batched:
                rows.append(measure(size, lower, [1, "25%"], "default [1, 25%]"))
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{os.cpu_count()} cores, systemd-nspawn machines from the Debian 12 "
                      "lab image (systemd 252), sharing this machine's kernel",
           "forks": "20 (ansible.cfg)", "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    for row in rows:
        print(f"{row['hosts']} host(s), {row['batches']}: {row['wall_s']} s, "
              f"{row['module_invocations']} module invocations, changed={row['changed']}")


if __name__ == "__main__":
    main()
