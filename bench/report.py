"""Benchmark statistics, goals, and the report step: docs/benchmarks.md and its chart.

Pure functions over the JSON the benchmark parts write to bench/results/, so they are
unit-tested (tests/unit/test_bench.py) and the page is re-rendered without re-running anything:

    python3 bench/report.py          # docs/benchmarks.md and .png from bench/results
    python3 bench/report.py --check  # exit 1 if docs/benchmarks.md is not what they give

No figure on the page is typed by hand: every number comes from bench/results/*.json. The chart
is drawn with matplotlib (requirements-dev.txt), imported only when the chart is drawn.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs"
PAGE, CHART = "benchmarks.md", "benchmarks.png"
FLEET_NOTE = "Not measured: run bench/run.py without --skip-fleet (bench/fleet_scale.py)."

MODES = ("bare", "hardened", "bwrap", "podman")


def summarise(values: list[float]) -> dict:
    """Median, quartiles (inclusive method), IQR, min and max of a sample."""
    if not values:
        raise ValueError("summarise: no samples (every run of this mode failed?)")
    ordered = sorted(values)
    if len(ordered) == 1:
        q1 = q3 = ordered[0]
    else:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    return {"n": len(ordered), "median": round(statistics.median(ordered), 4),
            "q1": round(q1, 4), "q3": round(q3, 4), "iqr": round(q3 - q1, 4),
            "min": round(ordered[0], 4), "max": round(ordered[-1], 4)}


def workload_table(workload: dict) -> dict:
    """Per job and mode: the start-to-exit summary and its ratio to bare (median over median)."""
    table: dict = {}
    for job, modes in workload["samples"].items():
        rows: dict = {}
        for mode in MODES:
            samples = modes.get(mode)
            if not samples:
                continue
            row = summarise([s["s"] for s in samples])
            if samples[0].get("activation_s") is not None:
                row["activation_median"] = round(
                    statistics.median(s["activation_s"] for s in samples), 4)
            rows[mode] = row
        bare = rows.get("bare", {}).get("median")
        for row in rows.values():
            row["ratio_to_bare"] = round(row["median"] / bare, 3) if bare else None
        table[job] = rows
    return table


def rollout_summary(timing: dict, top: int = 10) -> dict:
    """Wall time, task and module-invocation counts and the slowest tasks of one playbook run."""
    tasks = timing["tasks"]
    slowest = sorted(tasks, key=lambda t: t["seconds"], reverse=True)[:top]
    return {"wall_s": timing["wall_s"], "tasks": len(tasks),
            "invocations": sum(t["invocations"] for t in tasks),
            "changed": sum(t["changed"] for t in tasks),
            "slowest": [{"name": t["name"], "action": t["action"], "seconds": t["seconds"]}
                        for t in slowest]}


def _goal(name: str, measured: float | None, limit: float, how: str) -> dict:
    if measured is None:
        return {"goal": name, "limit": limit, "measured": None, "met": None, "how": how}
    return {"goal": name, "limit": limit, "measured": round(measured, 3),
            "met": measured <= limit, "how": how}


def goals(table: dict | None, rollout: dict | None, scan: list[dict], fleet: dict | None,
          start_path: dict | None = None) -> list:
    """The issue's goals, each as measured/limit/met (met None: not measured)."""
    out = []
    if start_path is not None:
        over = start_path.get("over_bwrap_ms")
        out.append(_goal("systemd 252 hardened start path - bubblewrap alone (ms)", over, 10.0,
                         "medians: ExecStartPre= check + ExecStart= hand-off with --seccomp, "
                         "vs the same bwrap argv without it, /bin/true"))
    trivial = (table or {}).get("trivial", {})
    act = None
    if {"bare", "hardened", "podman"} <= trivial.keys():
        bare = trivial["bare"]["median"]
        podman_start = trivial["podman"]["median"] - bare
        if podman_start > 0:
            act = (trivial["hardened"]["median"] - bare) / podman_start
    out.append(_goal("hardened activation / podman container start", act, 0.10,
                     "(hardened - bare) / (podman - bare), medians of the trivial job"))
    over, judged = None, "cargo audit"
    # The goal is for a job of one second or longer: cargo audit when it takes that long bare,
    # else the dd job sized to about 1.5 s.
    for name in ("cargo-audit", "dd-1s"):
        rows = (table or {}).get(name, {})
        if {"bare", "hardened"} <= rows.keys() and rows["bare"]["median"] >= 1.0:
            over = rows["hardened"]["median"] / rows["bare"]["median"] - 1
            judged = name
            break
    out.append(_goal("hardened job overhead over bare (job >= 1 s)", over, 0.10,
                     f"hardened / bare - 1, medians of {judged}"))
    rerun = None
    if rollout and rollout.get("first") and rollout.get("rerun"):
        rerun = rollout["rerun"]["wall_s"] / rollout["first"]["wall_s"]
    out.append(_goal("idempotent re-run / first converge", rerun, 0.25, "wall times"))
    eight = None
    if fleet and fleet.get("1") and fleet.get("8"):
        eight = fleet["8"] / fleet["1"]
    out.append(_goal("8 hosts / 1 host converge", eight, 2.0, "wall times"))
    # The compact report (process_isolation_info's default for a host scan) where measured.
    worst = max((s.get("ratio_compact", s["ratio"]) for s in scan), default=None)
    out.append(_goal("process scan / pscap -a (worst size)", worst, 1.5,
                     "medians, compact report where measured"))
    size = max((s["bytes_ratio_compact"] for s in scan if "bytes_ratio_compact" in s),
               default=None)
    out.append(_goal("compact scan bytes / names scan bytes (worst size)", size, 0.1,
                     "JSON bytes of one scan in each format"))
    return out


def fleet_walls(scale: dict | None, batches: str = "one batch") -> dict[str, float]:
    """Converge wall time per fleet size ("1", "2", ...) of one batching of bench/fleet_scale."""
    return {str(row["hosts"]): row["wall_s"] for row in (scale or {}).get("rows", [])
            if row["batches"] == batches}


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:g}{unit}"


def _day(stamp: str | None) -> str:
    """The date part of a run's time stamp ('2026-11-24T05:12Z', '2026-11-24 05:23 UTC')."""
    return (stamp or "-")[:10]


def runs(result: dict) -> list[tuple[str, str, str]]:
    """(part, date, setting) of every part the results hold: the page says when each ran."""
    out = []
    wl = result.get("workload")
    if wl:
        out.append(("workload, in a qemu TCG VM", _day(wl.get("date")),
                    f"guest kernel {wl['kernel']}, systemd {wl['systemd']}, {wl['cpus']} vCPUs"))
    if result.get("rollout"):
        # The rollout is timed in the same VM, just before the workload part (bench/run.py).
        out.append(("rollout, in the same VM", _day((wl or {}).get("date")),
                    "site.yml on a fresh VM after demo/prepare.yml"))
    native = result.get("workload_native")
    if native:
        out.append(("workload, in a systemd-nspawn machine (no emulation)",
                    _day(native.get("date")),
                    f"kernel {native.get('kernel', '?')}, systemd {native.get('systemd', '?')}, "
                    f"{native.get('cpus', '?')} CPUs"))
    scale = result.get("fleet_scale")
    if scale:
        out.append(("fleet scaling", _day(scale.get("date")), scale["machine"]))
    for scan in result.get("scan", []):
        out.append((f"process scan, {scan['processes_in_namespace']} processes",
                    scan.get("date", "-"), f"kernel {scan.get('kernel', '-')}, "
                                           f"{scan.get('cpus', '-')} CPUs, controller host"))
    return out


def markdown(result: dict, chart_name: str | None = None) -> str:
    """docs/benchmarks.md: every figure of the results, the goals and when each part ran."""
    lines = ["# Benchmarks", "",
             "<!-- Generated by `python3 bench/report.py` from bench/results/*.json: do not edit "
             "by hand. -->", "",
             "Measured by `bench/run.py` (see [development](development.md#benchmarks)). The "
             "VM parts run under qemu TCG on a 2-core machine without hardware virtualisation: "
             "every process start is emulated, so compare ratios, not absolute times.", "",
             "## Runs", "", "| part | date | setting |", "|---|---|---|"]
    lines += [f"| {part} | {day} | {setting} |" for part, day, setting in runs(result)]
    lines.append("")
    for key, title in (("goals", "Goals (workload in the TCG VM)"),
                       ("goals_native", "Goals (workload in the nspawn machine, no emulation)")):
        if not result.get(key):
            continue
        lines += [f"## {title}", "", "| goal | limit | measured | met | how |",
                  "|---|---:|---:|---|---|"]
        for g in result[key]:
            met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
            lines.append(f"| {g['goal']} | {g['limit']} | {_fmt(g['measured'])} | {met} | "
                         f"{g['how']} |")
        lines.append("")
    for key, wl_key, title in (
            ("workload_table", "workload", "inside the TCG VM"),
            ("workload_native_table", "workload_native",
             "in a systemd-nspawn machine, no emulation")):
        table = result.get(key)
        if not table:
            continue
        wl = result[wl_key]
        podman = wl["podman"] or f"not measured ({wl['podman_missing']})"
        failed = [e for e in wl.get("errors", []) if "/podman:" in e]
        if wl["podman"] and failed and not any("podman" in rows for rows in table.values()):
            podman += f", every run failed: {failed[0][:300]}"
        lines += [f"## Workload overhead (start to exit, seconds, {title})", "",
                  f"Kernel {wl['kernel']}, systemd {wl['systemd']}, {wl['cpus']} CPUs; "
                  f"bubblewrap as {wl['bwrap_as']}; podman: {podman}.", "",
                  "| job | mode | n | median | IQR | min | max | ratio to bare |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for job, rows in table.items():
            for mode, row in rows.items():
                lines.append(f"| {job} | {mode} | {row['n']} | {row['median']:.4f} | "
                             f"{row['iqr']:.4f} | {row['min']:.4f} | {row['max']:.4f} | "
                             f"{_fmt(row['ratio_to_bare'])} |")
        lines.append("")
        if key == "workload_table" and chart_name:
            lines += [f"![median start-to-exit per mode, as a ratio to bare]({chart_name})", ""]
    paths = []
    if (result.get("start_path_host") or {}).get("median_ms"):
        paths.append(("this machine, no systemd job", result["start_path_host"]))
    for key, title in (("workload_native", "nspawn machine, no systemd job"),
                       ("workload", "TCG VM, no systemd job")):
        sp = (result.get(key) or {}).get("start_path") or {}
        if sp.get("median_ms"):
            paths.append((title, {"date": result[key].get("date", "-"), **sp}))
    if paths:
        lines += ["## Hardened start path on systemd 252 vs bubblewrap alone (ms)", "",
                  "| where | date | n | bubblewrap alone | hardened start | difference |",
                  "|---|---|---:|---:|---:|---:|"]
        for title, sp in paths:
            lines.append(f"| {title} | {sp.get('date', '-')} | "
                         f"{len(sp['samples_ms']['bwrap'])} | {sp['median_ms']['bwrap']} | "
                         f"{sp['median_ms']['hardened_start']} | {sp['over_bwrap_ms']} |")
        lines.append("")
    rollout = result.get("rollout")
    if rollout:
        lines += ["## Rollout (site.yml on one VM)", "",
                  "| run | wall s | tasks | module invocations | changed |",
                  "|---|---:|---:|---:|---:|"]
        for key in ("first", "rerun"):
            r = rollout.get(key)
            if r:
                lines.append(f"| {key} | {r['wall_s']:.1f} | {r['tasks']} | {r['invocations']} "
                             f"| {r['changed']} |")
        lines += ["", "Ten slowest tasks of the first converge:", "",
                  "| task | module | s |", "|---|---|---:|"]
        for t in rollout["first"]["slowest"]:
            lines.append(f"| {t['name']} | {t['action']} | {t['seconds']:.1f} |")
        lines.append("")
    lines += ["## Fleet scaling", ""]
    scale = result.get("fleet_scale")
    if scale:
        lines += [f"{scale['machine']}; forks {scale['forks']}; {scale['date']}.", "",
                  "| hosts | batches | wall s | ratio to 1 host | module invocations | changed |",
                  "|---:|---|---:|---:|---:|---:|"]
        for row in scale["rows"]:
            one = fleet_walls(scale, row["batches"]).get("1")
            ratio = round(row["wall_s"] / one, 2) if one else None
            lines.append(f"| {row['hosts']} | {row['batches']} | {row['wall_s']:.1f} | "
                         f"{_fmt(ratio)} | {row['module_invocations']} | {row['changed']} |")
        lines.append("")
    else:
        lines += [result.get("fleet_note", FLEET_NOTE), ""]
    if result.get("scan"):
        lines += ["## Verification: process scan vs `pscap -a` (controller host)", "",
                  "| processes | date | pscap -a median s | scan median s | ratio | result bytes | "
                  "python start-up + import s | ratio without start-up | ratio without the JSON | "
                  "CPU time ratio (without the JSON) | compact scan median s | compact ratio | "
                  "compact result bytes (share) |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in result["scan"]:
            cpu = "-" if s.get("cpu_ratio") is None else \
                f"{_fmt(s['cpu_ratio'])} ({_fmt(s.get('cpu_ratio_read_only'))})"
            compact_bytes = "n/a" if s.get("compact_bytes") is None else \
                f"{s['compact_bytes']} ({_fmt(s.get('bytes_ratio_compact'))})"
            lines.append(f"| {s['processes_in_namespace']} | {s.get('date', '-')} | "
                         f"{s['pscap_median_s']} | {s['scan_median_s']} | {s['ratio']} | "
                         f"{s.get('scan_bytes', 'n/a')} | "
                         f"{_fmt(s.get('startup_median_s'))} | "
                         f"{_fmt(s.get('ratio_without_startup'))} | "
                         f"{_fmt(s.get('ratio_read_only'))} | {cpu} | "
                         f"{_fmt(s.get('compact_median_s'))} | {_fmt(s.get('ratio_compact'))} | "
                         f"{compact_bytes} |")
        lines.append("")
    return "\n".join(lines) + "\n"




COLOURS = {"bare": "#787878", "hardened": "#1e6ec8", "bwrap": "#3ca050", "podman": "#c85a28"}


def chart(table: dict) -> bytes:
    """PNG: one group of horizontal bars per job, a bar per mode, its length the median ratio
    to bare, labelled with the ratio and the median seconds; nothing is cut at the edges."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = [(job, mode, row) for job, modes in table.items() for mode, row in modes.items()]
    fig = Figure(figsize=(9, 0.9 + 0.38 * len(rows)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{job}: {mode}" for job, mode, _row in reversed(rows)]
    ratios = [row["ratio_to_bare"] or 0 for _job, _mode, row in reversed(rows)]
    bars = ax.barh(labels, ratios, color=[COLOURS.get(mode, "#000000")
                                          for _job, mode, _row in reversed(rows)])
    ax.bar_label(bars, [f"{row['ratio_to_bare'] or 0:.2f}x  {row['median']:.3f} s"
                        for _job, _mode, row in reversed(rows)], padding=4)
    ax.set_xlim(0, max(ratios, default=1) * 1.3 or 1)  # room for the longest bar's label
    ax.set_xlabel("median start-to-exit, as a ratio to bare (label: ratio, median seconds)")
    ax.spines[["top", "right"]].set_visible(False)
    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight", pad_inches=0.2)
    return out.getvalue()


def complete(result: dict, results_dir: Path = RESULTS) -> dict:
    """The merged results with every derived table and goal, from the parts' own files where
    bench.json lacks them (a run cut short after a part still reports it)."""
    out = dict(result)
    timings = {key: results_dir / f"rollout_{key}.json" for key in ("first", "rerun")}
    if not out.get("rollout") and all(path.exists() for path in timings.values()):
        out["rollout"] = {key: rollout_summary(json.loads(path.read_text()))
                          for key, path in timings.items()}
    if out.get("workload"):
        out["workload_table"] = workload_table(out["workload"])
    native = results_dir / "workload_native.json"
    if native.exists():  # bench/native_workload.py
        out["workload_native"] = json.loads(native.read_text())
        out["workload_native_table"] = workload_table(out["workload_native"])
    if not out.get("fleet_scale") and (results_dir / "fleet.json").exists():
        out["fleet_scale"] = json.loads((results_dir / "fleet.json").read_text())
    out["fleet_note"] = FLEET_NOTE
    out["fleet"] = fleet_walls(out.get("fleet_scale"))
    host_path = results_dir / "start_path_host.json"  # bench/workload.py --start-path-only
    if host_path.exists():
        out["start_path_host"] = json.loads(host_path.read_text())
    out["goals"] = goals(out.get("workload_table"), out.get("rollout"), out.get("scan", []),
                         out.get("fleet"), (out.get("workload") or {}).get("start_path"))
    if out.get("workload_native_table") or out.get("start_path_host"):
        out["goals_native"] = goals(
            out.get("workload_native_table"), out.get("rollout"), out.get("scan", []),
            out.get("fleet"), (out.get("workload_native") or {}).get("start_path")
            or out.get("start_path_host"))
    return out


def load(results_dir: Path = RESULTS) -> dict:
    """bench/results/bench.json completed with the parts' files (what the page is made of)."""
    merged = results_dir / "bench.json"
    return complete(json.loads(merged.read_text()) if merged.exists() else {}, results_dir)


def page(result: dict) -> str:
    """The text of docs/benchmarks.md for these results."""
    return markdown(result, CHART if result.get("workload_table") else None)


def write(result: dict, docs_dir: Path = DOCS) -> Path:
    """Write docs/benchmarks.md and, when there is a workload table, its chart."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    if result.get("workload_table"):
        (docs_dir / CHART).write_bytes(chart(result["workload_table"]))
    (docs_dir / PAGE).write_text(page(result))
    return docs_dir / PAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"write nothing; exit 1 if docs/{PAGE} is not what the results give")
    args = parser.parse_args(argv)
    result = load()
    if args.check:
        current = DOCS / PAGE
        if not current.exists() or current.read_text() != page(result):
            print(f"docs/{PAGE} is out of date with bench/results: run python3 bench/report.py",
                  file=sys.stderr)
            return 1
        return 0
    print(f"wrote {write(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
