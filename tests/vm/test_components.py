"""The hardened components, proven from outside each process and by attempted violations."""

import json

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import threshold
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    parse_size,
)
from conftest import as_user, exe, ns_ids, proc_status, systemd_version, unit_pids

COMPONENTS = ["orchestrator", "executor", "model_backend"]
WRAPPER = "/usr/bin/bwrap"


@pytest.fixture(scope="module")
def recs(components):
    return {r["name"]: r for r in components}


def workload_pids(host, name):
    """The component's own processes: everything in its cgroup but the bubblewrap wrapper."""
    pids = unit_pids(host, f"kf-{name}.service")
    work = [p for p in pids if exe(host, p) != WRAPPER]
    assert work, f"kf-{name}.service runs no workload process (pids {pids})"
    return pids, work


@pytest.mark.parametrize("name", COMPONENTS)
def test_unit_active(host, name):
    assert host.service(f"kf-{name}.service").is_running
    assert host.service(f"kf-{name}.socket").is_running
    # Running right now is not enough: a crash loop is "active" between two restarts.
    restarts = host.run("systemctl show -P NRestarts kf-%s.service", name).stdout.strip()
    assert restarts == "0", f"kf-{name}.service restarted {restarts} times"


@pytest.mark.parametrize("name", COMPONENTS)
def test_identity_caps_nnp_seccomp_of_every_thread(host, recs, name):
    rec = recs[name]
    uid = host.user(rec["user"]).uid
    gid = host.group(rec["group"]).gid
    pids, _ = workload_pids(host, name)
    for pid in pids:
        for task in proc_status(host, pid):
            where = f"{name} {task['task']}"
            assert task["Uid"].split() == [str(uid)] * 4, where
            assert task["Gid"].split() == [str(gid)] * 4, where
            for capset in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(task[capset], 16) == 0, f"{where} {capset}={task[capset]}"
            assert task["NoNewPrivs"] == "1", where
            assert task["Seccomp"] == "2", where
            assert int(task.get("Seccomp_filters", "1")) >= 1, where


@pytest.mark.parametrize("name", COMPONENTS)
def test_private_namespaces(host, name):
    host_ns = ns_ids(host, 1)
    _, work = workload_pids(host, name)
    for pid in work:
        ns = ns_ids(host, pid)
        for kind in ("pid", "ipc", "mnt", "uts", "user"):
            assert ns[kind] != host_ns[kind], f"{name} pid {pid} shares the host {kind} namespace"
        if name != "executor":
            assert ns["net"] != host_ns["net"], f"{name} shares the host network namespace"


def _mount_for(mountinfo, path):
    best = None
    for line in mountinfo.splitlines():
        fields = line.split()
        point, opts = fields[4], fields[5]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and (
                best is None or len(point) >= len(best[0])):
            best = (point, opts, fields[3])
    return best


def _mount_line(mountinfo, path):
    """The mount that holds path: its point, device, fstype and super options."""
    best = None
    for line in mountinfo.splitlines():
        fields = line.split()
        point = fields[4]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and (
                best is None or len(point) >= len(best["point"])):
            tail = fields[fields.index("-") + 1:]
            best = {"point": point, "dev": fields[2], "fstype": tail[0],
                    "super": tail[2] if len(tail) > 2 else ""}
    return best


@pytest.mark.parametrize("name", COMPONENTS)
def test_read_only_system_and_private_tmp(host, recs, name):
    _, work = workload_pids(host, name)
    mountinfo = host.run("cat /proc/%s/mountinfo", str(work[-1])).stdout
    for path in ("/usr", "/etc", "/usr/bin/python3"):
        point, opts, _ = _mount_for(mountinfo, path)
        assert "ro" in opts.split(","), f"{name}: {path} is writable via {point} ({opts})"
    # The scratch space: a private tmpfs of resources.tmp_size at each path (issue 18), a file
    # system of its own (its device differs from the host's at the same path).
    host_mounts = host.run("cat /proc/1/mountinfo").stdout
    size_kib = parse_size("tmp_size", recs[name]["resources"]["tmp_size"], percent=False)[1]
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        line = _mount_line(mountinfo, path)
        assert line["point"] == path, f"{name}: {path} is not a mount of its own ({line})"
        assert line["fstype"] == "tmpfs", f"{name}: {path} is {line['fstype']}"
        assert f"size={int(size_kib) // 1024}k" in line["super"].split(","), (name, line)
        assert line["dev"] != _mount_line(host_mounts, path)["dev"], f"{name}: {path} is the host's"


def test_credential_readable_by_its_owner_only(host, recs):
    cred = "/run/credentials/kf-orchestrator.service/signing.key"
    code = (f"import errno\ntry:\n    open({cred!r}, 'rb').read()\n    print('OK')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])")
    assert as_user(host, recs["orchestrator"]["user"], code) == "OK"  # control
    for other in ("executor", "model_backend", "advisory_sync"):
        assert as_user(host, recs[other]["user"], code) == "EACCES"


def test_encrypted_credential_is_decrypted_for_its_owner_only(host, recs):
    sealed = "/etc/kernelfence/secrets/orchestrator-api.token.cred"
    delivered = "/run/credentials/kf-orchestrator.service/api.token"
    plain = host.run("systemd-creds decrypt --name=api.token %s -", sealed)
    assert plain.rc == 0 and len(plain.stdout.strip()) == 32, plain.stderr
    assert plain.stdout.strip() not in host.file(sealed).content_string  # encrypted at rest
    code = (f"import errno\ntry:\n    print(open({delivered!r}).read().strip())\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])")
    assert as_user(host, recs["orchestrator"]["user"], code) == plain.stdout.strip()  # control
    for other in ("executor", "model_backend", "advisory_sync"):
        assert as_user(host, recs[other]["user"], code) == "EACCES"


def test_sockets_reach_only_allowed_clients(host, recs):
    code = ("import errno, socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
            "    s.connect(%r)\n    print('OK')\nexcept OSError as e:\n"
            "    print(errno.errorcode[e.errno])")
    model = recs["model_backend"]["sockets"][0]["path"]
    # The executor's user cannot connect to the model backend; the group that can is granted
    # only inside the orchestrator's unit (SupplementaryGroups=), never in /etc/group.
    assert as_user(host, recs["executor"]["user"], code % model) == "EACCES"
    assert "kf-model-backend-clients" not in host.run("id -Gn kf-orchestrator").stdout
    out = host.run("systemd-run --wait --pipe --quiet -p User=kf-orchestrator "
                   "-p SupplementaryGroups=kf-model-backend-clients python3 -c %s", code % model)
    assert out.stdout.strip() == "OK", out.stderr  # control: the granted group connects


def test_end_to_end_signed_cargo_audit(host):
    request = json.dumps({"goal": "audit dependencies"})
    probe = (
        "import json, socket, base64\n"
        "from cryptography.hazmat.primitives import serialization\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(300)\n"
        "s.connect('/run/kernelfence/orchestrator/orchestrator.sock')\n"
        f"s.sendall({request!r}.encode() + b'\\n')\n"
        "data = b''\n"
        "while not data.endswith(b'\\n'):\n"
        "    chunk = s.recv(65536)\n"
        "    if not chunk: break\n"
        "    data += chunk\n"
        "signed = json.loads(data)\n"
        "key = serialization.load_pem_private_key(open("
        "'/etc/kernelfence/secrets/orchestrator-signing.key', 'rb').read(), None)\n"
        "payload = base64.b64decode(signed['payload'])\n"
        "key.public_key().verify(base64.b64decode(signed['signature']), payload)\n"
        "print(payload.decode())\n")
    out = host.run("python3 -c %s", probe)
    assert out.rc == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["plan"] == {"answer": "cargo-audit"}
    report = payload["result"]["report"]
    assert report["vulnerabilities"]["count"] == 1
    assert report["vulnerabilities"]["list"][0]["advisory"]["id"] == "RUSTSEC-2099-0001"


@pytest.mark.parametrize("name", COMPONENTS)
def test_live_exposure_within_profile_threshold(host, recs, name):
    out = host.run("systemd-analyze security --no-pager kf-%s.service", name)
    assert out.rc == 0, out.stderr
    score = float(out.stdout.strip().splitlines()[-1].split(":")[1].split()[0])
    limit = threshold(recs[name]["profile"], systemd_version(host))
    print(f"EXPOSURE {host.backend.get_hostname()} kf-{name}.service {score} (limit {limit})")
    assert score <= limit
