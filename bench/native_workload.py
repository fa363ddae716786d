#!/usr/bin/env python3
"""Workload overhead without emulation (bench part 1, second setting).

Under qemu TCG every process start is emulated, which inflates the fixed costs (the hardened
unit's systemd job and launcher, podman's runtime) many times over. This runs the same
`bench/workload.py` in one systemd-nspawn machine booted on this machine from the lab's
Debian 12 image (systemd 252, the bubblewrap path), after `demo/prepare.yml` and `site.yml`,
with podman and runc installed in it from the .debs `bench/run.py` fetches. The machine shares
this machine's kernel: the figures are native start costs, not a proof of isolation.

Run as root from the checkout: `python3 bench/native_workload.py [--runs-trivial 15]
[--runs-audit 7]`; writes bench/results/workload_native.json (bench/run.py reports it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fleet_scale import (  # noqa: E402
    BASELINE_OFF,
    WORK,
    Machine,
    _terminated,
    locked,
    mounted_image,
    playbook,
    write_inventory,
)
from bench.run import fetch_podman_debs  # noqa: E402
from tools.kflab.common import log, run  # noqa: E402

RESULTS = REPO / "bench" / "results"
GUEST_DIR = "/root/kfbench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-trivial", type=int, default=15)
    parser.add_argument("--runs-audit", type=int, default=7)
    parser.add_argument("--out", default=str(RESULTS / "workload_native.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (loop mount, overlays, network namespaces, systemd-nspawn)")
    signal.signal(signal.SIGTERM, _terminated)
    debs = fetch_podman_debs("debian12")
    with locked(), mounted_image() as lower:
        # podman's overlay storage cannot sit on the machine's own overlay root: a tmpfs.
        # runc makes a session keyring per container: nspawn's own filter denies @keyring.
        machine = Machine(1, lower, ("--tmpfs=/var/lib/containers:mode=0700",
                                     "--system-call-filter=@keyring"))
        try:
            machine.boot()
            machine.wait_ssh(time.monotonic() + 180)
            # Its own inventory with the example's group_vars: no other part needs to run first.
            inv = write_inventory(WORK / "hosts-native.json", {machine.name: machine.host()})
            run_dir = WORK / "run-native"
            run_dir.mkdir(exist_ok=True)
            extra = run_dir / "extra.json"
            extra.write_text(json.dumps(BASELINE_OFF))
            for book in ("demo/prepare.yml", "site.yml"):
                log(f"native workload: {book}")
                playbook(inv, book, extra, None)
            guest = machine.root / GUEST_DIR.lstrip("/")
            (guest / "debs").mkdir(parents=True, exist_ok=True)
            for deb in debs.glob("*.deb"):
                (guest / "debs" / deb.name).write_bytes(deb.read_bytes())
            for name in ("bench/workload.py", "plugins/module_utils/attack_plan.py"):
                (guest / Path(name).name).write_bytes((REPO / name).read_bytes())
            log("native workload: podman .debs into the machine (bench only)")
            installed = subprocess.run(machine.ssh(f"dpkg -i {GUEST_DIR}/debs/*.deb"),
                                       capture_output=True, text=True, timeout=900, check=False)
            log("native workload: bench/workload.py in the machine")
            run(machine.ssh(f"python3 {GUEST_DIR}/workload.py --out {GUEST_DIR}/workload.json "
                            f"--runs-trivial {args.runs_trivial} --runs-audit {args.runs_audit}"),
                timeout=3600)
            result = json.loads((guest / "workload.json").read_text())
            result["setting"] = ("systemd-nspawn machine on this machine (no emulation), "
                                 "Debian 12 lab image, systemd 252, host kernel")
            result["podman_install_rc"] = installed.returncode
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            print(json.dumps({j: {m: len(v) for m, v in s.items()}
                              for j, s in result["samples"].items()}))
        finally:
            machine.destroy()


if __name__ == "__main__":
    main()
