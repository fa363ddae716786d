"""The /proc reader on a real recorded tree (tests/unit/fixtures/proc/README.md)."""

import json
import struct
from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
    cap_names,
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
