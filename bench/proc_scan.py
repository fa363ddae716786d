#!/usr/bin/env python3
"""Benchmark: scan every process with process_isolation_info's reader against `pscap -a`.

Run as root: `python3 bench/proc_scan.py [--processes 10000] [--runs 7]`. Not a timed test.

It re-executes itself as PID 1 of a new PID namespace with its own /proc, so the processes it
starts are bounded to that namespace and all die with it (the kernel kills a PID namespace's
processes when its PID 1 exits, whatever happens to this script). Inside, it forks N sleeping
children, then times, alternately, `pscap -a` and a fresh Python process that scans every
process with ProcReader (per thread creds, caps, NoNewPrivs, seccomp, namespaces vs PID 1,
cgroup, exe sha256 and file caps) and writes the result as JSON, both with output to /dev/null.
It prints the medians and their ratio and writes them to bench/results/proc_scan.json, with
the same scan without the JSON encoding (reading /proc only) and the CPU time (user + system)
of each, so the report can say where the ratio goes and a busy machine skews it less.
The scan runs in both capability formats: names (every set as CAP_* names, the format of unit
and PID scans) and compact (full and empty sets as "all"/"none" beside the raw masks, the
default of a host-wide scan); each one's result size in bytes is reported beside its time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCAN = (
    "import json, sys\n"
    f"sys.path[:0] = [{str(REPO / '.collections')!r}, {str(REPO)!r}]\n"
    "from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation "
    "import ProcReader\n"
    "sys.stdout.write(json.dumps(ProcReader().scan()))\n"
)
# The host-wide scan as process_isolation_info runs it by default (compact capability sets).
SCAN_COMPACT = SCAN.replace("ProcReader().scan()", "ProcReader(compact=True).scan()")
# The same fresh interpreter and import without the scan: the fixed start-up cost the ratio
# includes (pscap is a C binary), reported so the per-process cost can be compared as well.
STARTUP = SCAN.rsplit("sys.stdout.write", 1)[0]
# The scan without the JSON encoding of its records: how much of the ratio is reading /proc
# and how much is writing the report (every capability name of every set).
READ_ONLY = STARTUP + "records = ProcReader().scan()\n"


def start_sleepers(count: int) -> list[int]:
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            while True:
                signal.pause()
        pids.append(pid)
    return pids


def timed(argv: list[str], cpu: list[float] | None = None) -> float:
    """Wall time of argv; its CPU time (user + system, the reaped child's) appended to cpu."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def result_bytes(script: str) -> int:
    """Size in bytes of the JSON a scan script writes (one extra, untimed run)."""
    done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, check=True)
    return len(done.stdout)


def bench(count: int, runs: int, out: Path) -> None:
    pids = start_sleepers(count)
    try:
        seen = sum(1 for name in os.listdir("/proc") if name.isdigit())
        pscap, scan, startup, read_only, compact = [], [], [], [], []
        cpu: dict[str, list[float]] = {"pscap": [], "scan": [], "read_only": [], "compact": []}
        timed(["pscap", "-a"])  # warm the dentry cache for both
        for _ in range(runs):
            pscap.append(timed(["pscap", "-a"], cpu["pscap"]))
            scan.append(timed([sys.executable, "-c", SCAN], cpu["scan"]))
            startup.append(timed([sys.executable, "-c", STARTUP]))
            read_only.append(timed([sys.executable, "-c", READ_ONLY], cpu["read_only"]))
            compact.append(timed([sys.executable, "-c", SCAN_COMPACT], cpu["compact"]))
        names_bytes, compact_bytes = result_bytes(SCAN), result_bytes(SCAN_COMPACT)
        cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
        result = {
            "processes_in_namespace": seen, "runs": runs,
            "pscap_median_s": round(statistics.median(pscap), 3),
            "scan_median_s": round(statistics.median(scan), 3),
            "ratio": round(statistics.median(scan) / statistics.median(pscap), 2),
            "scan_bytes": names_bytes,
            # The compact report (process_isolation_info's default for a host scan).
            "compact_median_s": round(statistics.median(compact), 3),
            "ratio_compact": round(statistics.median(compact) / statistics.median(pscap), 2),
            "compact_bytes": compact_bytes,
            "bytes_ratio_compact": round(compact_bytes / names_bytes, 3),
            "startup_median_s": round(statistics.median(startup), 3),
            "ratio_without_startup": round((statistics.median(scan) - statistics.median(startup))
                                           / statistics.median(pscap), 2),
            "read_only_median_s": round(statistics.median(read_only), 3),
            "ratio_read_only": round(statistics.median(read_only) / statistics.median(pscap), 2),
            # CPU time (user + system): what the work costs whatever else the machine runs.
            "cpu_median_s": {name: round(value, 3) for name, value in cpu_median.items()},
            "cpu_ratio": round(cpu_median["scan"] / cpu_median["pscap"], 2),
            "cpu_ratio_read_only": round(cpu_median["read_only"] / cpu_median["pscap"], 2),
            "pscap_s": [round(t, 3) for t in pscap], "scan_s": [round(t, 3) for t in scan],
            "compact_s": [round(t, 3) for t in compact],
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        }
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{seen} processes: pscap -a median {result['pscap_median_s']} s, "
          f"process_isolation scan median {result['scan_median_s']} s, "
          f"ratio {result['ratio']}, {names_bytes} bytes; compact {result['compact_median_s']} s, "
          f"ratio {result['ratio_compact']} (limit 1.5), {compact_bytes} bytes "
          f"({result['bytes_ratio_compact']} of the names); without the JSON "
          f"{result['ratio_read_only']}; CPU time {result['cpu_ratio']} "
          f"({result['cpu_ratio_read_only']} without the JSON)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/proc_scan.json")
    args = parser.parse_args()
    if not 1 <= args.processes <= 20000:
        parser.error("--processes must be between 1 and 20000")
    if os.getpid() != 1:
        sys.exit(subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                                 os.path.abspath(__file__), *sys.argv[1:]]).returncode)
    bench(args.processes, args.runs, args.out)


if __name__ == "__main__":
    main()
