#!/usr/bin/env python3
"""Record the per-process resource limits of processes with known limits, and build the cgroup
v2 tree they are read against, for tests/unit/test_live_limits.py.

Run as root on a Linux host: `python3 tools/record_limits_fixtures.py tests/unit/fixtures/limits`.

Recorded (real, copied from /proc of processes this script starts, then stopped):
  bounded       sleep in a mount namespace of its own with a size=64M tmpfs on /tmp, /var/tmp
                and /dev/shm (the executor's TemporaryFileSystem= lines), RLIMIT_NOFILE
                1024:1024, RLIMIT_CORE 0:0, oom_score_adj 500: the executor's model
  loosened      sleep with the host's mounts, RLIMIT_NOFILE 16384:16384, RLIMIT_CORE unlimited,
                oom_score_adj 0
  nocontrollers started like bounded
Per process `limits`, `oom_score_adj`, `mountinfo`; for the host `meminfo`,
`sys/kernel/threads-max` and `sys/kernel/pid_max`.

Built, not recorded: the build machine has no cgroup v2 hierarchy with the memory, pids, cpu
and io controllers (they are bound to cgroup v1 here), and a VM's cannot be copied. So each
process's `cgroup` file is written as `0::/<its unit's cgroup>`, and `cgroup/` is a cgroup2 tree
in the kernel's own file formats (one value and a newline; `max` for no limit; io.weight's
`default N` line): the executor's cgroup with the model's limits, a loosened one, and one under
a slice that enables only memory and pids for its children, so cpu.* and io.* are absent there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

SCRATCH_MOUNTS = ("mount -t tmpfs -o rw,nosuid,nodev,mode=1777,size=64M tmpfs /tmp && "
                  "mount -t tmpfs -o rw,nosuid,nodev,mode=1777,size=64M tmpfs /var/tmp && "
                  "mount -t tmpfs -o rw,nosuid,nodev,noexec,mode=1777,size=64M tmpfs /dev/shm && "
                  "exec prlimit --nofile=1024:1024 --core=0:0 sleep 600")
LOOSE = "exec prlimit --nofile=16384:16384 --core=unlimited:unlimited sleep 600"

UNITS = {"bounded": "/system.slice/kf-executor.service",
         "loosened": "/system.slice/kf-loosened.service",
         "nocontrollers": "/kf-test.slice/kf-nocontrollers.service"}

# The executor's model (resource_limits.PROFILE_DEFAULTS["executor"]) as the kernel shows it.
EXECUTOR = {"memory.max": "536870912", "memory.high": "520093696", "memory.low": "0",
            "memory.swap.max": "0", "pids.max": "128", "cpu.weight": "25",
            "cpu.max": "max 100000", "io.weight": "default 25"}
LOOSENED = {"memory.max": "max", "memory.high": "max", "memory.low": "0",
            "memory.swap.max": "max", "pids.max": "max", "cpu.weight": "100",
            "cpu.max": "max 100000", "io.weight": "default 100"}
ALL = "cpuset cpu io memory hugetlb pids rdma misc"


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def build_cgroups(root: str, pids: dict[str, int]) -> None:
    shutil.rmtree(root, ignore_errors=True)
    write(f"{root}/cgroup.controllers", ALL + "\n")
    write(f"{root}/cgroup.subtree_control", "cpu io memory pids\n")
    write(f"{root}/system.slice/cgroup.controllers", "cpu io memory pids\n")
    write(f"{root}/system.slice/cgroup.subtree_control", "cpu io memory pids\n")
    write(f"{root}/kf-test.slice/cgroup.controllers", "cpu io memory pids\n")
    write(f"{root}/kf-test.slice/cgroup.subtree_control", "memory pids\n")
    files = {"bounded": (EXECUTOR, "cpu io memory pids"),
             "loosened": (LOOSENED, "cpu io memory pids"),
             "nocontrollers": ({k: v for k, v in EXECUTOR.items()
                                if k.startswith(("memory.", "pids."))}, "memory pids")}
    for role, (values, controllers) in files.items():
        base = root + UNITS[role]
        write(f"{base}/cgroup.controllers", controllers + "\n")
        write(f"{base}/cgroup.subtree_control", "\n")
        write(f"{base}/cgroup.procs", f"{pids[role]}\n")
        for name, value in values.items():
            write(f"{base}/{name}", value + "\n")


def record(out: str) -> None:
    started = {
        "bounded": subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                     "sh", "-c", SCRATCH_MOUNTS]),
        "loosened": subprocess.Popen(["sh", "-c", LOOSE]),
        "nocontrollers": subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                           "sh", "-c", SCRATCH_MOUNTS]),
    }
    try:
        time.sleep(1.0)
        for role, proc in started.items():
            with open(f"/proc/{proc.pid}/oom_score_adj", "w") as handle:
                handle.write("0" if role == "loosened" else "500")
        tree = os.path.join(out, "proc")
        shutil.rmtree(tree, ignore_errors=True)
        pids = {}
        for role, proc in started.items():
            pid = proc.pid
            exe = os.readlink(f"/proc/{pid}/exe")
            if not exe.endswith("/sleep"):
                raise SystemExit(f"{role}: pid {pid} runs {exe}, not sleep")
            pids[role] = pid
            for name in ("limits", "oom_score_adj", "mountinfo", "status"):
                shutil.copyfile(f"/proc/{pid}/{name}", f"{tree}/{pid}/{name}"
                                if os.path.isdir(f"{tree}/{pid}") else _mk(f"{tree}/{pid}", name))
            write(f"{tree}/{pid}/cgroup", f"0::{UNITS[role]}\n")
        shutil.copyfile("/proc/meminfo", f"{tree}/meminfo")
        os.makedirs(f"{tree}/sys/kernel")
        for name in ("threads-max", "pid_max"):
            shutil.copyfile(f"/proc/sys/kernel/{name}", f"{tree}/sys/kernel/{name}")
        build_cgroups(os.path.join(out, "cgroup"), pids)
        with open(os.path.join(out, "roles.json"), "w") as handle:
            json.dump({"kernel": os.uname().release, "page_size": os.sysconf("SC_PAGE_SIZE"),
                       "roles": pids, "units": UNITS}, handle, indent=1)
            handle.write("\n")
    finally:
        for proc in started.values():
            proc.kill()
            proc.wait()


def _mk(directory: str, name: str) -> str:
    os.makedirs(directory)
    return f"{directory}/{name}"


if __name__ == "__main__":
    record(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "tests/unit/fixtures/limits"))
