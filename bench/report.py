"""Benchmark statistics, goals, the markdown table and the PNG chart (stdlib only).

Pure functions over the JSON the benchmark parts write, so they are unit-tested
(tests/unit/test_bench.py) and the report can be re-rendered without re-running anything:
`python3 bench/run.py --report-only`.
"""

from __future__ import annotations

import statistics
import struct
import zlib

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


def markdown(result: dict) -> str:
    """The results as one markdown document (tables only; prose lives in README.md)."""
    lines = [f"# kernelfence benchmark results ({result['date']})", "",
             f"Machine: {result['machine']}", ""]
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
        lines += [f"## 1. Workload overhead (start to exit, seconds, {title})", "",
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
    paths = []
    if (result.get("start_path_host") or {}).get("median_ms"):
        paths.append(("this machine, no systemd job", result["start_path_host"]))
    for key, title in (("workload_native", "nspawn machine, no systemd job"),
                       ("workload", "TCG VM, no systemd job")):
        sp = (result.get(key) or {}).get("start_path") or {}
        if sp.get("median_ms"):
            paths.append((title, {"date": result[key].get("date", "-"), **sp}))
    if paths:
        lines += ["## 1a. Hardened start path on systemd 252 vs bubblewrap alone (ms)", "",
                  "| where | date | n | bubblewrap alone | hardened start | difference |",
                  "|---|---|---:|---:|---:|---:|"]
        for title, sp in paths:
            lines.append(f"| {title} | {sp.get('date', '-')} | "
                         f"{len(sp['samples_ms']['bwrap'])} | {sp['median_ms']['bwrap']} | "
                         f"{sp['median_ms']['hardened_start']} | {sp['over_bwrap_ms']} |")
        lines.append("")
    rollout = result.get("rollout")
    if rollout:
        lines += ["## 2. Rollout (site.yml on one VM)", "",
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
    lines += ["## 3. Fleet scaling", ""]
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
        lines += [result.get("fleet_note", "not measured"), ""]
    if result.get("scan"):
        lines += ["## 4. Verification: process scan vs `pscap -a` (controller host)", "",
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
    return "\n".join(lines) + "\n"


# --- PNG: horizontal bars, drawn on a pixel grid with a 5x7 bitmap font -----------------------

_GLYPHS = {
    "0": "0e1113151911 0e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f020402011 10e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", ".": "0000000000000c", "x": "0000110a040a11",
    " ": "00000000000000", "-": "0000001f000000", "/": "01010204081010", ":": "000c0c000c0c00",
    "(": "02040808080402", ")": "08040202020408", "%": "18190204081303", "=": "00001f001f0000",
}
_LETTERS = {
    "a": "00000e010f110f", "b": "10101e1111111e", "c": "00000e1010110e", "d": "01010f1111110f",
    "e": "00000e111f100e", "f": "06090838080808", "g": "000f11110f010e", "h": "1010161911 1111",
    "i": "0400040c04040e", "j": "02000602021209", "k": "10101214181412", "l": "0c04040404040e",
    "m": "00001a15151111", "n": "00001619111111", "o": "00000e1111110e", "p": "00001e111e1010",
    "q": "00000f110f0101", "r": "00001619101010", "s": "00000e100e011e", "t": "08081c0808090 6",
    "u": "00001111111 30d", "v": "0000111111 0a04", "w": "0000111115150a", "y": "000011110f010e",
    "z": "00001f0204081f", "_": "0000000000001f",
}
_GLYPHS.update(_LETTERS)


def _glyph(ch: str) -> list[int]:
    code = _GLYPHS.get(ch.lower(), _GLYPHS[" "]).replace(" ", "")
    return [int(code[i:i + 2], 16) for i in range(0, 14, 2)]


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x: int, y: int, w: int, h: int, rgb: tuple[int, int, int]) -> None:
        for yy in range(max(0, y), min(self.height, y + h)):
            for xx in range(max(0, x), min(self.width, x + w)):
                i = (yy * self.width + xx) * 3
                self.px[i:i + 3] = bytes(rgb)

    def text(self, x: int, y: int, s: str, scale: int = 2, rgb=(0, 0, 0)) -> None:
        for n, ch in enumerate(s):
            for row, bits in enumerate(_glyph(ch)):
                for col in range(5):
                    if bits & (1 << (4 - col)):
                        self.rect(x + (n * 6 + col) * scale, y + row * scale, scale, scale, rgb)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.width * 3:(y + 1) * self.width * 3])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


COLOURS = {"bare": (120, 120, 120), "hardened": (30, 110, 200), "bwrap": (60, 160, 80),
           "podman": (200, 90, 40)}


def chart(table: dict) -> bytes:
    """One panel per job: a bar per mode, its length the median ratio to bare, labelled."""
    rows = [(job, mode, row) for job, modes in table.items() for mode, row in modes.items()]
    width, bar_h, gap, left = 900, 22, 8, 330
    height = 60 + len(rows) * (bar_h + gap) + len(table) * 30
    canvas = Canvas(width, height)
    canvas.text(10, 10, "median start-to-exit, ratio to bare (label: seconds)", 2)
    top = max((row["ratio_to_bare"] or 0) for _, _, row in rows) or 1
    y = 45
    last_job = None
    for job, mode, row in rows:
        if job != last_job:
            canvas.text(10, y + 4, job, 2, (0, 0, 120))
            y += 30
            last_job = job
        ratio = row["ratio_to_bare"] or 0
        canvas.text(30, y + 4, mode, 2)
        length = int((width - left - 120) * ratio / top)
        canvas.rect(left, y, max(length, 1), bar_h, COLOURS.get(mode, (0, 0, 0)))
        canvas.text(left + length + 8, y + 4, f"{ratio:.2f}x {row['median']:.3f}", 2)
        y += bar_h + gap
    return canvas.png()
