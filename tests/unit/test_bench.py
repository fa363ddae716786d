"""The benchmark's statistics, goals, report page and chart (bench/report.py), and its callback.

The benchmark itself is never run here (it is not a timed test); these check the arithmetic and
the artifacts it writes, on samples whose answers are worked out by hand and on recorded output.
"""

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from bench import report

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "bench"
RESULTS = REPO / "bench" / "results"


def _samples(values, **extra):
    return [{"s": v, **extra} for v in values]


def test_summarise_median_quartiles_and_spread():
    got = report.summarise([5.0, 1.0, 3.0, 2.0, 4.0])
    assert got == {"n": 5, "median": 3.0, "q1": 2.0, "q3": 4.0, "iqr": 2.0, "min": 1.0,
                   "max": 5.0}
    even = report.summarise([1.0, 2.0, 3.0, 10.0])
    assert even["median"] == 2.5 and even["q1"] == 1.75 and even["q3"] == 4.75
    assert report.summarise([0.5])["iqr"] == 0


def test_summarise_refuses_an_empty_sample():
    with pytest.raises(ValueError, match="no samples"):
        report.summarise([])


def test_workload_table_ratios_are_median_over_bare_median():
    wl = {"samples": {"trivial": {
        "bare": _samples([0.01, 0.02, 0.03]),
        "hardened": _samples([0.1, 0.2, 0.3], activation_s=0.05),
        "podman": _samples([1.0, 2.0, 9.0]),
    }}}
    table = report.workload_table(wl)["trivial"]
    assert table["bare"]["ratio_to_bare"] == 1.0
    assert table["hardened"]["ratio_to_bare"] == 10.0
    assert table["hardened"]["activation_median"] == 0.05
    assert table["podman"]["ratio_to_bare"] == 100.0
    assert "bwrap" not in table  # a mode without samples is left out, not shown as zero


def _table(bare_t, hard_t, podman_t, bare_a, hard_a):
    wl = {"samples": {"trivial": {"bare": _samples([bare_t]), "hardened": _samples([hard_t]),
                                  "podman": _samples([podman_t])},
                      "cargo-audit": {"bare": _samples([bare_a]),
                                      "hardened": _samples([hard_a])}}}
    return report.workload_table(wl)


def test_goals_met_and_missed_with_their_measured_ratios():
    scan = [{"ratio": 1.2}, {"ratio": 1.9}]
    rollout = {"first": {"wall_s": 400.0}, "rerun": {"wall_s": 80.0}}
    got = {g["goal"]: g for g in report.goals(_table(0.01, 0.06, 1.01, 4.0, 4.2), rollout,
                                              scan, {"1": 100.0, "8": 250.0})}
    act = got["hardened activation / podman container start"]
    assert act["measured"] == 0.05 and act["met"] is True
    over = got["hardened job overhead over bare (job >= 1 s)"]
    assert over["measured"] == 0.05 and over["met"] is True
    assert got["idempotent re-run / first converge"]["measured"] == 0.2
    assert got["8 hosts / 1 host converge"]["met"] is False
    scan_goal = got["process scan / pscap -a (worst size)"]
    assert scan_goal["measured"] == 1.9 and scan_goal["met"] is False


def test_goals_not_measured_are_none_never_met():
    got = report.goals(_table(0.01, 0.06, 1.01, 0.5, 0.6), None, [], None)
    # cargo audit under one second: the job-overhead goal does not apply, so it is not judged.
    assert [g["met"] for g in got] == [True, None, None, None, None, None]
    no_podman = report.goals({"trivial": {"bare": {"median": 0.01},
                                          "hardened": {"median": 0.05}}}, None, [], None)
    assert no_podman[0]["met"] is None and no_podman[0]["measured"] is None


def test_rollout_summary_counts_tasks_invocations_and_ranks_the_slowest():
    timing = json.loads((FIXTURES / "callback_localhost.json").read_text())
    got = report.rollout_summary(timing, top=2)
    assert got["tasks"] == 3 and got["invocations"] == 4 and got["changed"] == 1
    assert [t["seconds"] for t in got["slowest"]] == [1.555, 1.387]


def _png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels, row by row, of a PNG (decoded by Pillow)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        rgb = image.convert("RGB")
        raw = rgb.tobytes()
    return rgb.size[0], rgb.size[1], [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_chart_is_a_valid_png_with_one_bar_per_mode():
    table = _table(0.01, 0.06, 1.01, 4.0, 4.2)
    _width, _height, pixels = _png_pixels(report.chart(table))
    # The podman bar (ratio 101, the longest) is drawn in its colour, hardened's in its own.
    assert _rgb(report.COLOURS["podman"]) in pixels
    assert _rgb(report.COLOURS["hardened"]) in pixels
    assert _rgb(report.COLOURS["bwrap"]) not in pixels  # no bwrap samples, no bwrap bar


def test_chart_cuts_no_label_the_image_has_a_blank_margin():
    # The committed TCG-VM results: podman's bar is the longest and its label the widest.
    table = report.load(RESULTS)["workload_table"]
    width, height, pixels = _png_pixels(report.chart(table))
    white = (255, 255, 255)
    margin = 3
    edge = [pixels[y * width + x] for y in range(height) for x in range(width)
            if x < margin or x >= width - margin or y < margin or y >= height - margin]
    drawn = [p for p in edge if p != white]
    assert not drawn, f"{len(drawn)} drawn pixels at the image's edge: a label or bar is cut"
    assert sum(p != white for p in pixels) > 0.02 * len(pixels), "chart is blank"


def test_docs_benchmarks_page_is_what_the_committed_results_give():
    """docs/benchmarks.md is generated: no figure on it is typed by hand or left stale."""
    committed = (REPO / "docs" / report.PAGE).read_text()
    assert committed == report.page(report.load(RESULTS)), (
        "docs/benchmarks.md is out of date with bench/results: run python3 bench/report.py")
    assert report.main(["--check"]) == 0


def test_page_says_when_each_part_ran_and_every_figure_comes_from_the_results(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    bench = json.loads((results / "bench.json").read_text())
    text = report.page(report.load(results))
    assert f"| workload, in a qemu TCG VM | {bench['workload']['date'][:10]} |" in text
    assert f"| fleet scaling | {bench['fleet_scale']['date'][:10]} |" in text
    # A new figure in the results changes the page: nothing on it is fixed text.
    bench["fleet_scale"]["rows"][0]["wall_s"] = 12345.6
    bench["workload"]["date"] = "2031-01-02T03:04Z"
    (results / "bench.json").write_text(json.dumps(bench))
    changed = report.page(report.load(results))
    assert "| 12345.6 |" in changed and "| workload, in a qemu TCG VM | 2031-01-02 |" in changed
    written = report.write(report.load(results), tmp_path / "docs")
    assert written.read_text() == changed
    assert (tmp_path / "docs" / report.CHART).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_has_every_measured_row_and_the_goals():
    scan = json.loads((FIXTURES / "proc_scan_1000.json").read_text())
    # A scan of this bench version also has the JSON-less and CPU time ratios; an older one
    # (the fixture) renders with dashes for them.
    newer = dict(scan, processes_in_namespace=10001, ratio_read_only=1.21, cpu_ratio=2.1,
                 cpu_ratio_read_only=1.3)
    result = {"date": "2026-11-23", "machine": "test", "scan": [scan, newer],
              "workload": {"kernel": "6.1", "systemd": "252", "cpus": 2, "bwrap_as": "x",
                           "podman": None, "podman_missing": "podman is not installed"},
              "workload_table": _table(0.01, 0.06, 1.01, 4.0, 4.2)}
    result["goals"] = report.goals(result["workload_table"], None, [scan], None)
    text = report.markdown(result)
    assert "| cargo-audit | hardened | 1 | 4.2000 |" in text
    assert "not measured (podman is not installed)" in text
    assert (f"| {scan['processes_in_namespace']} | {scan['date']} | {scan['pscap_median_s']} |"
            in text)
    assert text.count("| n/a | - |") == 1  # the older scan
    assert "| 10001 |" in text and "| 1.21 | 2.1 (1.3) |" in text
    assert "| process scan / pscap -a (worst size) | 1.5 |" in text


def test_scan_reports_result_bytes_beside_the_time():
    """A run of this bench version: both formats' times and result sizes, and the goals judged
    on the compact report (issue 20: the scan goal is with the compact report)."""
    scan = json.loads((FIXTURES / "proc_scan_1000_bytes.json").read_text())
    text = report.markdown({"date": scan["date"], "machine": "test", "scan": [scan]})
    row = next(line for line in text.splitlines()
               if line.startswith(f"| {scan['processes_in_namespace']} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:6] == [str(scan["scan_median_s"]), str(scan["ratio"]),
                          str(scan["scan_bytes"])]
    assert cells[-3:] == [str(scan["compact_median_s"]), str(scan["ratio_compact"]),
                          f"{scan['compact_bytes']} ({scan['bytes_ratio_compact']:g})"]
    got = {g["goal"]: g for g in report.goals(None, None, [scan], None)}
    assert got["process scan / pscap -a (worst size)"]["measured"] == scan["ratio_compact"]
    size = got["compact scan bytes / names scan bytes (worst size)"]
    assert size["measured"] == scan["bytes_ratio_compact"] and size["limit"] == 0.1


def test_timing_callback_counts_loop_items_and_skips(tmp_path):
    book = tmp_path / "pb.yml"
    book.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: looped\n      ansible.builtin.command: 'true'\n      loop: [1, 2, 3]\n"
        "      changed_when: false\n"
        "    - name: changed\n      ansible.builtin.command: 'true'\n"
        "    - name: skipped\n      ansible.builtin.debug: {msg: x}\n      when: false\n")
    out = tmp_path / "timing.json"
    env = {**os.environ, "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "bench" / "callback_plugins"),
           "ANSIBLE_CALLBACKS_ENABLED": "kf_bench_timing", "KF_BENCH_TIMING_OUT": str(out)}
    subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                    "ansible_python_interpreter=/usr/bin/python3", str(book)],
                   env=env, check=True, capture_output=True, cwd=tmp_path)
    tasks = {t["name"]: t for t in json.loads(out.read_text())["tasks"]}
    assert tasks["looped"]["invocations"] == 3 and tasks["looped"]["changed"] == 0
    assert tasks["changed"]["invocations"] == 1 and tasks["changed"]["changed"] == 1
    assert tasks["skipped"]["invocations"] == 0 and tasks["skipped"]["skipped"] == 1


def test_hardened_bench_unit_keeps_every_executor_directive_and_runs_the_job():
    """The benchmark's hardened mode is the executor's own unit (recorded `systemctl cat`,
    Debian 12) with only its start-up changed: no sandbox directive may be lost."""
    import sys

    sys.path[:0] = [str(REPO / "bench"), str(REPO / "plugins" / "module_utils")]
    try:
        import workload
    finally:
        del sys.path[:2]
    merged = (Path(__file__).parent / "fixtures" / "attack"
              / "systemctl-cat-kf-executor-252.txt").read_text()
    unit = workload.sibling_unit(merged, workload.RECORD, workload.JOBS["cargo-audit"],
                                 "/run/kfbench/cargo-audit.out")
    kept = [line for line in merged.splitlines()
            if "=" in line and not line.startswith("#")
            and line.split("=", 1)[0] in ("User", "NoNewPrivileges", "SystemCallFilter",
                                          "ProtectSystem", "PrivateUsers", "IPAddressDeny",
                                          "RestrictNamespaces", "ReadOnlyPaths")]
    assert len(kept) >= 9
    for line in kept:
        assert line in unit.splitlines(), line
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    # systemd 252: still behind the seccomp launcher and the bubblewrap wrapper.
    assert "kf-launch.py" in exec_start[0] and "/usr/bin/bwrap" in exec_start[0]
    assert exec_start[0].endswith(" ".join(workload.JOBS["cargo-audit"]))
    assert "Type=oneshot" in unit and "Restart=on-failure" not in unit


def test_fleet_scaling_rows_become_walls_a_table_and_the_eight_host_goal():
    scale = json.loads((FIXTURES / "fleet.json").read_text())  # bench/fleet_scale.py output
    walls = report.fleet_walls(scale)
    one = [r for r in scale["rows"] if r["batches"] == "one batch"]
    assert walls == {str(r["hosts"]): r["wall_s"] for r in one} and walls
    text = report.markdown({"date": "d", "machine": "m", "fleet_scale": scale,
                            "goals": report.goals(None, None, [], walls)})
    for row in scale["rows"]:
        assert f"| {row['hosts']} | {row['batches']} | {row['wall_s']:.1f} |" in text
    assert "| 1 | one batch | " + f"{walls['1']:.1f} | 1 |" in text  # its own reference
    goal = {g["goal"]: g for g in report.goals(None, None, [], walls)}[
        "8 hosts / 1 host converge"]
    if "8" in walls:
        assert goal["measured"] == round(walls["8"] / walls["1"], 3)
    else:
        assert goal["met"] is None
    # Another batching is compared with its own one-host run, never the one-batch one.
    assert report.fleet_walls(scale, "no such batching") == {}


def test_job_overhead_goal_takes_the_cpu_job_when_cargo_audit_is_under_a_second():
    table = report.workload_table({"samples": {
        "cargo-audit": {"bare": _samples([0.19]), "hardened": _samples([1.17])},
        "dd-1s": {"bare": _samples([1.6]), "hardened": _samples([2.0])}}})
    goal = {g["goal"]: g for g in report.goals(table, None, [], None)}[
        "hardened job overhead over bare (job >= 1 s)"]
    assert goal["measured"] == 0.25 and goal["met"] is False
    assert goal["how"].endswith("medians of dd-1s")


def test_start_path_goal_and_table_from_a_real_run_on_this_machine():
    """bench/workload.py --start-path-only on this machine (bubblewrap 0.8.0, the real compiled
    executor profile, as nobody): the systemd 252 start path against bubblewrap alone."""
    run = json.loads((FIXTURES / "start_path_host.json").read_text())
    assert len(run["samples_ms"]["bwrap"]) >= 15 and len(run["samples_ms"]["hardened_start"]) >= 15
    assert "--seccomp 3" in run["exec_start"] and "--seccomp" not in run["bwrap"]
    assert run["exec_start_pre"][0].startswith("/usr/bin/sha256sum --check")
    goal = next(g for g in report.goals(None, None, [], None, run)
                if g["goal"].startswith("systemd 252 hardened start path"))
    assert goal["limit"] == 10.0 and goal["measured"] == run["over_bwrap_ms"]
    assert goal["met"] is (run["over_bwrap_ms"] <= 10.0)
    worse = dict(run, over_bwrap_ms=10.5)
    assert not report.goals(None, None, [], None, worse)[0]["met"]
    assert all(g["goal"] != goal["goal"] for g in report.goals(None, None, [], None))
    text = report.markdown({"date": "d", "machine": "m", "start_path_host": run,
                            "workload_native": {"date": "n", "start_path": {
                                "skipped": "systemd 257"}}})
    row = next(line for line in text.splitlines() if line.startswith("| this machine"))
    assert f"| {run['median_ms']['bwrap']} | {run['median_ms']['hardened_start']} | " in row
    # a setting without a measurement is left out of the start-path table
    assert not any(line.startswith("| nspawn machine, no systemd job")
                   for line in text.splitlines())
