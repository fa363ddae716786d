"""The /proc reader on a real recorded tree (tests/unit/fixtures/proc/README.md)."""

import json
import struct
from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    CAPABILITIES,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
    cap_names,
    capability_names,
    decode_file_caps,
    unit_of_cgroup,
)

FIX = Path(__file__).parent / "fixtures/proc"
ROLES = json.loads((FIX / "roles.json").read_text())["roles"]
CASES = yaml.safe_load((FIX / "cases.yml").read_text())


def observed(record: dict, path: str):
    if path == "thread_count":
        return 1 + len(record["threads"])
    if path == "differing_thread":
        main = record["capabilities"]
        other = [t for t in record["threads"] if t["capabilities"] != main]
        assert len(other) == 1, other
        return {"name": other[0]["name"],
                "missing_from_bounding": sorted(set(main["bounding"])
                                                - set(other[0]["capabilities"]["bounding"])),
                "missing_from_effective": sorted(set(main["effective"])
                                                 - set(other[0]["capabilities"]["effective"]))}
    value = record
    for part in path.split("."):
        value = value[part]
    return value


@pytest.fixture(scope="module")
def scan():
    return ProcReader(str(FIX / "tree")).scan()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_recorded_process(case, scan):
    by_pid = {p["pid"]: p for p in scan["processes"]}
    record = by_pid[ROLES[case["role"]]]
    got = {path: observed(record, path) for path in case["expect"]}
    assert got == case["expect"]


def test_process_that_vanished_mid_scan_is_reported_not_raised(scan):
    assert scan["vanished"] == [ROLES["vanished"]]
    assert ROLES["vanished"] not in {p["pid"] for p in scan["processes"]}
    assert len(scan["processes"]) == len(ROLES) - 1


def test_pid_gone_before_the_read_is_vanished():
    result = ProcReader(str(FIX / "tree")).scan([ROLES["ambient"], 424242])
    assert result["vanished"] == [424242]
    assert [p["pid"] for p in result["processes"]] == [ROLES["ambient"]]


def test_live_proc_reads_this_process():
    import hashlib
    import os
    import threading

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        reader = ProcReader()
        me = reader.process(os.getpid())
    finally:
        stop.set()
        worker.join()
    real = os.path.realpath(f"/proc/{os.getpid()}/exe")
    with open(real, "rb") as handle:
        assert me["exe"]["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert me["exe"]["path"] == real and me["exe"]["error"] is None
    assert me["uids"]["real"] == os.getuid()
    # task/ listed through the process's directory fd: the second thread is there, the main
    # thread is the process itself.
    assert worker.native_id in [t["tid"] for t in me["threads"]], me["threads"]
    assert me["pid"] not in [t["tid"] for t in me["threads"]], "threads: the other threads"
    # The digest is cached under the identity of the file it hashed: a second read hits it.
    assert len(reader._digests) == 1
    assert reader.process(os.getpid())["exe"]["sha256"] == me["exe"]["sha256"]
    assert len(reader._digests) == 1


FILE_CAPS = [
    ("v2 effective net_raw", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0),
     {"version": 2, "permitted": ["CAP_NET_RAW"], "inheritable": [], "effective": True,
      "rootid": None}),
    ("v3 with rootid, bit 38 in the upper word",
     struct.pack("<IIIIII", 0x03000000, 1 << 10, 1 << 10, 1 << 6, 0, 100000),
     {"version": 3, "permitted": ["CAP_NET_BIND_SERVICE", "CAP_PERFMON"],
      "inheritable": ["CAP_NET_BIND_SERVICE"], "effective": False, "rootid": 100000}),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in FILE_CAPS],
                         ids=[c[0] for c in FILE_CAPS])
def test_decode_file_caps(raw, expected):
    assert decode_file_caps(raw) == expected


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x00\x00", "too short"),
    (struct.pack("<I", 0x07000000), "unknown revision"),
    (struct.pack("<II", 0x02000000, 0), "truncated"),
])
def test_decode_file_caps_rejects_bad_xattr(raw, message):
    with pytest.raises(ValueError, match=message):
        decode_file_caps(raw)


def test_cap_names_unknown_bit_is_named_by_number():
    assert cap_names((1 << 0) | (1 << 45)) == ["CAP_CHOWN", "cap_45"]


@pytest.mark.parametrize(("lines", "unit"), [
    (["0::/system.slice/kf-executor.service"], "kf-executor.service"),
    (["0::/system.slice/kf-executor.service/payload"], "kf-executor.service"),
    (["0::/user.slice/user-0.slice/session-3.scope"], "session-3.scope"),
    (["4:memory:/x", "0::/"], None),
])
def test_unit_of_cgroup(lines, unit):
    assert unit_of_cgroup(lines) == unit


def test_status_key_keeps_the_last_character_when_a_marker_is_missing():
    """A status text cut before `Speculation...` (old kernels, recorded trees): two texts that
    differ only in their last character must not share a cache entry."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
        StatusCache,
    )

    head = ("Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t\n"
            "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
            "CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n"
            "Seccomp:\t2\nSeccomp_filters:\t")
    cache = StatusCache()
    assert cache.isolation(head + "0")[1]["seccomp"]["filters"] == 0
    assert cache.isolation(head + "2")[1]["seccomp"]["filters"] == 2


# -- compact capability sets (issue 20 item 3) --------------------------------------------------

def tree_with(tmp_path: Path, cap_last_cap: str | None, masks: dict[str, str]) -> str:
    """The recorded tree with its kernel's cap_last_cap set (None: unreadable, as on a /proc
    without sys/) and the `seccomp` process's capability masks replaced (CapBnd=...)."""
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(FIX / "tree", tree)
    last = tree / "sys/kernel/cap_last_cap"
    if cap_last_cap is None:
        last.unlink()
    else:
        last.write_text(cap_last_cap + "\n")
    status = tree / str(ROLES["seccomp"]) / "status"
    lines = [f"{line.split(':')[0]}:\t{masks[line.split(':')[0]]}"
             if line.split(":")[0] in masks else line
             for line in status.read_text().splitlines()]
    status.write_text("\n".join(lines) + "\n")
    return str(tree)


FULL_40 = "000001ffffffffff"  # bits 0-40: every capability of Linux 5.9 to 6.18


def test_recorded_sets_compact_only_where_full_or_empty():
    """The recorder ran without CAP_SYS_RESOURCE (bounding 000001fffeffffff): not full, so
    names; its empty sets are "none"; the masks are the status text in both formats."""
    names = ProcReader(str(FIX / "tree")).process(ROLES["seccomp"])
    compact = ProcReader(str(FIX / "tree"), compact=True).process(ROLES["seccomp"])
    assert compact["capabilities"]["bounding"] == names["capabilities"]["bounding"]
    assert "CAP_SYS_RESOURCE" not in compact["capabilities"]["bounding"]
    assert compact["capabilities"]["ambient"] == "none" and names["capabilities"]["ambient"] == []
    assert compact["capability_masks"] == names["capability_masks"] == {
        "inheritable": "0000000000000000", "permitted": "000001fffeffffff",
        "effective": "000001fffeffffff", "bounding": "000001fffeffffff",
        "ambient": "0000000000000000"}
    ambient = ProcReader(str(FIX / "tree"), compact=True).process(ROLES["ambient"])
    assert ambient["capabilities"]["ambient"] == ["CAP_NET_BIND_SERVICE"]
    assert ProcReader(str(FIX / "tree")).cap_last_cap == 40


def test_full_set_is_all_and_the_mask_stays(tmp_path):
    tree = tree_with(tmp_path, "40", {"CapBnd": FULL_40, "CapEff": FULL_40, "CapPrm": FULL_40})
    compact = ProcReader(tree, compact=True).process(ROLES["seccomp"])
    assert compact["capabilities"] == {"inheritable": "none", "permitted": "all",
                                       "effective": "all", "bounding": "all", "ambient": "none"}
    assert compact["capability_masks"]["bounding"] == FULL_40
    names = ProcReader(tree).process(ROLES["seccomp"])
    assert len(names["capabilities"]["bounding"]) == 41
    for cap_set in names["capabilities"]:
        assert capability_names(compact, cap_set) == names["capabilities"][cap_set]


def test_full_means_the_kernels_set_not_the_name_table(tmp_path):
    """On a kernel with two capabilities the name table lacks (cap_last_cap 42), the table's
    41 are not "all"; bits 0-42 are, and the unknown ones keep their numbers as names."""
    tree = tree_with(tmp_path, "42", {"CapBnd": "000007ffffffffff", "CapEff": FULL_40,
                                      "CapPrm": "000003ffffffffff"})
    record = ProcReader(tree, compact=True).process(ROLES["seccomp"])
    assert record["capabilities"]["bounding"] == "all"
    assert len(record["capabilities"]["effective"]) == 41
    assert record["capabilities"]["permitted"][-1] == "cap_41"
    assert capability_names(record, "bounding")[-2:] == ["cap_41", "cap_42"]


def test_older_kernel_full_set_is_all(tmp_path):
    """Linux 5.4 stops at CAP_AUDIT_READ (37): its full set is all, though the table has 41."""
    tree = tree_with(tmp_path, "37", {"CapBnd": "0000003fffffffff"})
    assert ProcReader(tree, compact=True).process(ROLES["seccomp"])["capabilities"][
        "bounding"] == "all"


def test_unreadable_cap_last_cap_never_says_all(tmp_path):
    tree = tree_with(tmp_path, None, {"CapBnd": FULL_40})
    reader = ProcReader(tree, compact=True)
    record = reader.process(ROLES["seccomp"])
    assert reader.cap_last_cap is None
    assert len(record["capabilities"]["bounding"]) == 41
    assert record["capabilities"]["ambient"] == "none"


def test_all_without_its_mask_is_refused_by_name():
    with pytest.raises(ValueError, match=r"capabilities.bounding is 'all' without "
                                         r"capability_masks.bounding"):
        capability_names({"capabilities": {"bounding": "all"}}, "bounding")
    assert capability_names({"capabilities": {"bounding": "none"}}, "bounding") == []


def run_module(tmp_path: Path, args: dict) -> dict:
    """process_isolation_info run as Ansible runs it (a Python process with its args file)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    done = subprocess.run(
        [sys.executable, str(repo / "plugins/modules/process_isolation_info.py"), str(args_file)],
        capture_output=True, text=True, check=False, timeout=60,
        env=dict(os.environ, PYTHONPATH=f"{repo / '.collections'}:{repo}"))
    return json.loads(done.stdout)


@pytest.mark.parametrize(("args", "expected"), [
    ({"all": True}, "compact"),
    ({}, "compact"),
    ({"pids": [ROLES["seccomp"]]}, "names"),
    ({"all": True, "compact_capabilities": False}, "names"),
    ({"pids": [ROLES["seccomp"]], "compact_capabilities": True}, "compact"),
], ids=["all", "nothing-given", "pids", "all-names", "pids-compact"])
def test_module_default_is_compact_for_the_host_scan_only(tmp_path, args, expected):
    tree = tree_with(tmp_path, "40", {"CapBnd": FULL_40})
    result = run_module(tmp_path, dict(args, proc_root=tree))
    assert result["capability_format"] == expected, result.get("msg")
    assert result["cap_last_cap"] == 40
    record = next(p for p in result["processes"] if p["pid"] == ROLES["seccomp"])
    assert record["capability_masks"]["bounding"] == FULL_40
    bounding = record["capabilities"]["bounding"]
    assert bounding == ("all" if expected == "compact" else
                        [f"CAP_{c}" for c in CAPABILITIES])
