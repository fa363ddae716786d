#!/usr/bin/env python3
"""kernelfence benchmarks, one command: `python3 bench/run.py` (as root, from the checkout).

Writes bench/results/bench.json, bench/results/bench.md and bench/results/bench.png.
Not a timed test and not part of `./kf test`.

1. Workload overhead, inside a VM (`bench/workload.py`, copied into the guest): the executor's
   real `cargo audit` and /bin/true, bare, under the hardened unit, under bubblewrap alone and
   under podman+runc (the lab image has no podman: its .debs and their dependencies are fetched
   on this machine against the image's dpkg status and installed in the bench VM only;
   `--podman-debs DIR` uses a directory of .debs instead, `--no-podman` skips the mode).
2. Rollout: boots a fresh VM (tools/kflab, instance `bench`), installs the demo components
   (demo/prepare.yml, not timed), then times site.yml twice (first converge, idempotent
   re-run) with the benchmark's own callback (bench/callback_plugins: per-task seconds and
   module invocations).
   The same workload again without emulation: bench/native_workload.py (an nspawn machine).
3. Fleet scaling: bench/fleet_scale.py, site.yml on 1, 2, 4 and 8 systemd-nspawn machines
   booted on this machine from the lab image (one batch, and the site's default batches).
4. Verification: bench/proc_scan.py with 1,000 and 10,000 processes (on this host).

The VM is destroyed at the end unless --keep-vm. On a shared machine take the VM lock:
`flock /tmp/kf-helpers-vm.lock python3 bench/run.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/run.py runs as a script from the checkout: the repository root must be on sys.path
# before bench/ and tools/ can be imported, hence the imports below the path set-up (E402).
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from tools.kflab import setup, vm  # noqa: E402
from tools.kflab.common import CACHE, log, run  # noqa: E402
from tools.kflab.image import ensure_image  # noqa: E402

RESULTS = REPO / "bench" / "results"
INSTANCE = "bench"
GUEST_DIR = "/root/kfbench"
FLEET_NOTE = "Not measured: run without --skip-fleet (bench/fleet_scale.py)."


def machine() -> str:
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return (f"{os.cpu_count()} cores, {int(mem) // 1024 // 1024} GiB, kernel "
            f"{platform.release()}; guests are qemu TCG (emulated: absolute times are inflated, "
            f"compare the ratios)")


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def inventory(info: dict) -> Path:
    inv_dir = CACHE / "bench"
    inv_dir.mkdir(parents=True, exist_ok=True)
    host = {"ansible_host": info["address"], "ansible_port": info["port"],
            "ansible_user": info["user"], "ansible_ssh_private_key_file": info["identity_file"],
            "ansible_ssh_common_args": " ".join(vm.SSH_OPTS),
            "ansible_python_interpreter": "/usr/bin/python3",
            "kernelfence_release_dir": str(setup.RELEASE)}
    path = inv_dir / "hosts.json"
    path.write_text(json.dumps({"all": {"children": {"kernelfence": {"hosts": {
        INSTANCE: host}}}}}, indent=2))
    group_vars = inv_dir / "group_vars"
    if group_vars.is_symlink() or group_vars.exists():
        group_vars.unlink()
    group_vars.symlink_to(REPO / "inventory" / "example" / "group_vars")
    return path


def playbook(inv: Path, book: str, timing: Path | None) -> float:
    env = setup.tool_env()
    if timing is not None:
        env["ANSIBLE_CALLBACK_PLUGINS"] = str(REPO / "bench" / "callback_plugins")
        env["ANSIBLE_CALLBACKS_ENABLED"] = "kf_bench_timing"
        env["KF_BENCH_TIMING_OUT"] = str(timing)
    began = time.monotonic()
    run([str(setup.venv_dir() / "bin" / "ansible-playbook"), "-i", str(inv), str(REPO / book)],
        env=env, cwd=REPO, timeout=5400)
    return time.monotonic() - began


def scp_to(info: dict, files: list[Path], dest: str) -> None:
    run(["scp", *vm.SSH_OPTS, "-i", info["identity_file"], "-P", str(info["port"]),
         *map(str, files), f"{info['user']}@{info['address']}:{dest}"], timeout=600)


def ssh(info: dict, command: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return run(vm.ssh_argv(info, command), timeout=timeout, capture=True)


def fetch_podman_debs(distro: str) -> Path:
    """podman, runc and what they need beyond the guest image, as .debs fetched on this
    machine from the Debian mirror against the image's own dpkg status (the image stays
    without them: they serve this benchmark only)."""
    image = ensure_image(distro)
    debs = CACHE / "bench" / f"podman-debs-{image.path.name}"
    if any(debs.glob("podman_*.deb")):
        return debs
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    mnt = CACHE / "bench" / "image-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "loop,ro", str(image.disk), str(mnt)])
    try:
        run(["apt-get", "-q", "-y", "--download-only", "--no-install-recommends",
             "-o", f"Dir::State::status={mnt}/var/lib/dpkg/status",
             "-o", f"Dir::Cache::archives={debs}", "-o", "Debug::NoLocking=1",
             "install", "podman", "runc"], timeout=900)
    finally:
        run(["umount", str(mnt)], check=False)
    return debs


def vm_parts(args: argparse.Namespace, out: dict) -> None:
    info = vm.up(INSTANCE, args.distro)
    try:
        out["guest"] = {"distro": info["distro"], "systemd": info["systemd"],
                        "accel": info["accel"], "boot_s": info.get("boot_seconds")}
        inv = inventory(info)
        log("bench: demo/prepare.yml (not timed)")
        playbook(inv, "demo/prepare.yml", None)
        rollout = {}
        for key in ("first", "rerun"):
            log(f"bench: site.yml ({key}), timed")
            timing = RESULTS / f"rollout_{key}.json"
            outer = playbook(inv, "site.yml", timing)
            summary = report.rollout_summary(json.loads(timing.read_text()))
            summary["outer_wall_s"] = round(outer, 1)
            summary["host_loadavg"] = loadavg()
            rollout[key] = summary
        out["rollout"] = rollout
        ssh(info, f"mkdir -p {GUEST_DIR}/debs")
        if not args.no_podman:
            debs = sorted(Path(args.podman_debs or fetch_podman_debs(args.distro)).glob("*.deb"))
            scp_to(info, debs, f"{GUEST_DIR}/debs/")
            log(f"bench: installing {len(debs)} podman .debs in the guest (bench only)")
            installed = run(vm.ssh_argv(info, f"dpkg -i {GUEST_DIR}/debs/*.deb"), timeout=1800,
                            capture=True, check=False)
            out["podman_install"] = {"rc": installed.returncode, "debs": [d.name for d in debs],
                                     "stderr": (installed.stderr or "")[-1500:]}
        scp_to(info, [REPO / "bench" / "workload.py",
                      REPO / "plugins" / "module_utils" / "attack_plan.py"], GUEST_DIR)
        log("bench: workload overhead in the guest")
        out["host_loadavg_workload_start"] = loadavg()
        ssh(info, f"python3 {GUEST_DIR}/workload.py --out {GUEST_DIR}/workload.json "
                  f"--runs-trivial {args.runs_trivial} --runs-audit {args.runs_audit}")
        out["host_loadavg_workload_end"] = loadavg()
        wl = ssh(info, f"cat {GUEST_DIR}/workload.json").stdout
        (RESULTS / "workload.json").write_text(wl)
    finally:
        if not args.keep_vm:
            vm.down(INSTANCE)


def native_part(args: argparse.Namespace) -> None:
    log("bench: workload without emulation (bench/native_workload.py, nspawn machine)")
    subprocess.run([sys.executable, str(REPO / "bench" / "native_workload.py"),
                    "--runs-trivial", str(args.runs_trivial), "--runs-audit",
                    str(args.runs_audit)], check=True, env=setup.tool_env())


def fleet_part(sizes: str) -> dict:
    path = RESULTS / "fleet.json"
    log(f"bench: fleet scaling, site.yml on {sizes} systemd-nspawn machines")
    subprocess.run([sys.executable, str(REPO / "bench" / "fleet_scale.py"), "--sizes", sizes,
                    "--out", str(path)], check=True, env=setup.tool_env())
    return json.loads(path.read_text())


def scan_part(sizes: list[int], runs: int) -> list[dict]:
    results = []
    for size in sizes:
        path = RESULTS / f"proc_scan_{size}.json"
        log(f"bench: process scan vs pscap -a, {size} processes")
        subprocess.run([sys.executable, str(REPO / "bench" / "proc_scan.py"), "--processes",
                        str(size), "--runs", str(runs), "--out", str(path)], check=True,
                       env=setup.tool_env())
        results.append(json.loads(path.read_text()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distro", default="debian12", choices=["debian12", "debian13"])
    parser.add_argument("--runs-trivial", type=int, default=15)
    parser.add_argument("--runs-audit", type=int, default=7)
    parser.add_argument("--scan-runs", type=int, default=7)
    parser.add_argument("--podman-debs", help="directory of .debs (podman, runc and their "
                        "dependencies missing from the guest image) to install in the guest")
    parser.add_argument("--no-podman", action="store_true",
                        help="measure without the podman mode (nothing fetched)")
    parser.add_argument("--skip-vm", action="store_true", help="keep the VM parts' last results")
    parser.add_argument("--skip-scan", action="store_true", help="keep the scan's last results")
    parser.add_argument("--skip-native", action="store_true",
                        help="keep the no-emulation workload's last results")
    parser.add_argument("--skip-fleet", action="store_true",
                        help="keep the fleet scaling's last results")
    parser.add_argument("--fleet-sizes", default="1,2,4,8")
    parser.add_argument("--report-only", action="store_true",
                        help="only re-render bench.md/bench.png from bench/results/bench.json")
    parser.add_argument("--keep-vm", action="store_true")
    args = parser.parse_args()
    # A SIGTERM (e.g. from `timeout`) unwinds like an exception, so the VM is still destroyed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "bench.json"
    out: dict = {}
    if not args.report_only:
        if os.geteuid() != 0:
            sys.exit("run as root (qemu, unshare for the process scan)")
        out.update({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": machine(), "host_loadavg_start": loadavg()})
        if not args.skip_vm:
            vm_parts(args, out)
            out["workload"] = json.loads((RESULTS / "workload.json").read_text())
        if not args.skip_native:
            native_part(args)
        if not args.skip_fleet:
            out["fleet_scale"] = fleet_part(args.fleet_sizes)
        if not args.skip_scan:
            out["scan"] = scan_part([1000, 10000], args.scan_runs)
        out["host_loadavg_end"] = loadavg()
    # Merged into the last results when the file is written (a part skipped keeps its figures).
    merged: dict = json.loads(previous.read_text()) if previous.exists() else {}
    merged.update(out)
    out = merged
    timings = {key: RESULTS / f"rollout_{key}.json" for key in ("first", "rerun")}
    if not out.get("rollout") and all(path.exists() for path in timings.values()):
        # A run cut short after the rollout part still reports it (the callback wrote its files).
        out["rollout"] = {key: report.rollout_summary(json.loads(path.read_text()))
                          for key, path in timings.items()}
    if out.get("workload"):
        out["workload_table"] = report.workload_table(out["workload"])
    native = RESULTS / "workload_native.json"
    if native.exists():  # bench/native_workload.py
        out["workload_native"] = json.loads(native.read_text())
        out["workload_native_table"] = report.workload_table(out["workload_native"])
    if not out.get("fleet_scale") and (RESULTS / "fleet.json").exists():
        out["fleet_scale"] = json.loads((RESULTS / "fleet.json").read_text())
    out["fleet_note"] = FLEET_NOTE
    out["fleet"] = report.fleet_walls(out.get("fleet_scale"))
    host_path = RESULTS / "start_path_host.json"  # bench/workload.py --start-path-only
    if host_path.exists():
        out["start_path_host"] = json.loads(host_path.read_text())
    out["goals"] = report.goals(out.get("workload_table"), out.get("rollout"),
                                out.get("scan", []), out.get("fleet"),
                                (out.get("workload") or {}).get("start_path"))
    if out.get("workload_native_table") or out.get("start_path_host"):
        out["goals_native"] = report.goals(
            out.get("workload_native_table"), out.get("rollout"), out.get("scan", []),
            out.get("fleet"), (out.get("workload_native") or {}).get("start_path")
            or out.get("start_path_host"))
    previous.write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "bench.md").write_text(report.markdown(out))
    if out.get("workload_table"):
        (RESULTS / "bench.png").write_bytes(report.chart(out["workload_table"]))
    print((RESULTS / "bench.md").read_text())


if __name__ == "__main__":
    main()
