"""The per-component nftables policy, proven by connections attempted from inside the sandboxes.

Every endpoint is a server these tests start inside the VM on its own loopback: the executor's
allowed endpoint 127.0.0.1:8088 (example inventory), a port of the same host it may not reach
(127.0.0.1:8089: the unit's IPAddressAllow=127.0.0.1 BPF filter lets it through, so only
nftables can refuse it), another loopback address (127.0.0.2:8088) and a fake DNS resolver on
127.0.0.53:53. Nothing is sent outside the VM.

The reboot test is the last test of this file and the only reboot of the suite.
"""

import copy
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import full, run_playbook

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
TABLE = "inet kernelfence"

# The [Service] keys of a component unit that decide what a process may do on the network.
NETWORK_KEYS = ("User", "Group", "NoNewPrivileges", "CapabilityBoundingSet",
                "AmbientCapabilities", "PrivateNetwork", "RestrictAddressFamilies",
                "IPAddressDeny", "IPAddressAllow")

ENDPOINTS = """
import socket, time
tcp = []
for host, port in (("127.0.0.1", 8088), ("127.0.0.1", 8089), ("127.0.0.2", 8088)):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(64); tcp.append(s)
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dns.bind(("127.0.0.53", 53))
while True:
    data, peer = dns.recvfrom(512); dns.sendto(data, peer)
"""

# Prints {"proto host port": "OK" | errno name | "timeout"} for each target given as argument.
PROBE = """
import errno, json, socket, sys
out = {}
for target in sys.argv[1:]:
    proto, host, port = target.split(":")
    try:
        if proto == "tcp":
            socket.create_connection((host, int(port)), timeout=4).close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(4)
            s.connect((host, int(port))); s.send(b"kf"); s.recv(16)
        out[target] = "OK"
    except TimeoutError:
        out[target] = "timeout"
    except OSError as e:
        out[target] = errno.errorcode[e.errno]
print(json.dumps(out))
"""

ALLOWED = "tcp:127.0.0.1:8088"
SAME_HOST_OTHER_PORT = "tcp:127.0.0.1:8089"
OTHER_LOOPBACK = "tcp:127.0.0.2:8088"
FAKE_DNS = "udp:127.0.0.53:53"


def unit_properties(host, name):
    """The network-related [Service] lines of the component's installed unit, as -p options."""
    text = host.file(f"/etc/systemd/system/kf-{name}.service").content_string
    props = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in NETWORK_KEYS:
            props.append(f"{key}={value}")
    return props


def run_in_sandbox(host, props, code, *args):
    """Run Python in a transient unit with the given properties; return its stdout."""
    cmd = host.run(shlex.join(["systemd-run", "--wait", "--pipe", "--quiet", "--collect",
                               *(f"--property={p}" for p in props), "/usr/bin/python3", "-c",
                               code, *args]))
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def probe(host, props, *targets):
    return json.loads(run_in_sandbox(host, props, PROBE, *targets))


def counter(host, name):
    out = host.run(f"nft -j list counter {TABLE} {shlex.quote(name)}")
    assert out.rc == 0, out.stderr
    entry = next(e["counter"] for e in json.loads(out.stdout)["nftables"] if "counter" in e)
    return entry["packets"]


def counters(host, *names):
    return {n: counter(host, n) for n in names}


def stateless_table(host):
    out = host.run(f"nft -s list table {TABLE}")
    assert out.rc == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def endpoints(host):
    """The servers, in a transient unit. No teardown here: a module fixture is torn down after
    the module's last test, the reboot, which already stopped them (and reconnecting to the
    rebooted VM through the stale SSH master of the run is what the reboot test avoids)."""
    host.run("systemctl stop kf-test-endpoints.service")
    start = host.run("systemd-run --unit=kf-test-endpoints --collect /usr/bin/python3 -c %s",
                     ENDPOINTS)
    assert start.rc == 0, start.stderr
    for _ in range(30):
        if host.run("ss -Hltn 'sport = :8089' | grep -q 127.0.0.1").rc == 0:
            break
        time.sleep(1)


def test_table_is_ours_alone_and_matches_only_component_identities(host, components):
    table = stateless_table(host)
    listing = host.run("nft list tables").stdout.split("\n")
    assert "table inet kernelfence" in listing
    for rec in components:
        uid = host.user(rec["user"]).uid
        assert "meta skuid vmap {" in table and f"{uid} : jump {rec['name']}" in table
    # No input chain, no drop policy: the operator's session is never matched.
    assert "hook input" not in table and "policy drop" not in table
    unit = host.run("systemd-analyze verify /etc/systemd/system/kf-network-policy.service")
    assert unit.rc == 0 and unit.stderr.strip() == "", unit.stderr


def test_executor_reaches_only_its_allow_list(host, endpoints):
    props = unit_properties(host, "executor")
    # The probe runs with the executor's identity and BPF filter (the host is allowed there).
    assert "IPAddressAllow=127.0.0.1" in props and "User=kf-executor" in props
    names = ("executor_rejected",)
    before = counters(host, *names)
    seen = probe(host, props, ALLOWED, SAME_HOST_OTHER_PORT, OTHER_LOOPBACK, FAKE_DNS)
    after = counters(host, *names)
    print(f"EXECUTOR-PROBE {host.backend.get_hostname()} {seen} counters {before} -> {after}")
    assert seen[ALLOWED] == "OK"  # control: the sandbox reaches its endpoint
    # Same host as the allowed endpoint: only nftables can refuse it (reject -> ICMP
    # admin-prohibited -> EHOSTUNREACH at once, not a timeout and not the BPF filter's EPERM).
    assert seen[SAME_HOST_OTHER_PORT] == "EHOSTUNREACH"
    assert seen[OTHER_LOOPBACK] == "EHOSTUNREACH"
    # UDP: the output hook's verdict fails the send itself.
    assert seen[FAKE_DNS] == "EPERM"
    assert after["executor_rejected"] - before["executor_rejected"] == 3
    # Control: the same endpoints answer other users (root and nobody are never matched).
    assert probe(host, ["User=nobody"], SAME_HOST_OTHER_PORT, OTHER_LOOPBACK, FAKE_DNS) == {
        SAME_HOST_OTHER_PORT: "OK", OTHER_LOOPBACK: "OK", FAKE_DNS: "OK"}
    assert json.loads(host.run("python3 -c %s %s", PROBE, SAME_HOST_OTHER_PORT).stdout) == {
        SAME_HOST_OTHER_PORT: "OK"}
    uid = host.user("kf-executor").uid
    log = host.run("journalctl -k -o cat --no-pager | grep 'kernelfence executor egress reject'")
    assert "DPT=8089" in log.stdout and f"UID={uid}" in log.stdout, log.stdout[-2000:]


def test_model_backend_cannot_open_an_inet_socket(host, endpoints):
    props = unit_properties(host, "model_backend")
    assert "PrivateNetwork=yes" in props and "RestrictAddressFamilies=AF_UNIX" in props
    code = ("import errno, socket\nfor fam in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):\n"
            "    try:\n        socket.socket(fam).close(); print(fam.name, 'OK')\n"
            "    except OSError as e:\n        print(fam.name, errno.errorcode[e.errno])")
    out = run_in_sandbox(host, props, code).splitlines()
    assert out == ["AF_UNIX OK", "AF_INET EAFNOSUPPORT", "AF_INET6 EAFNOSUPPORT"]


def test_model_backend_identity_is_refused_by_nftables_too(host, endpoints):
    """Defence in depth: without its unit's sandbox, the model backend's user still gets out
    nowhere, while another user reaches the same endpoint."""
    before = counter(host, "model_backend_rejected")
    assert probe(host, ["User=kf-model-backend"], ALLOWED) == {ALLOWED: "EHOSTUNREACH"}
    assert counter(host, "model_backend_rejected") - before == 1
    assert probe(host, ["User=nobody"], ALLOWED) == {ALLOWED: "OK"}  # control


def test_components_answer_no_inbound_inet_connection(host, endpoints):
    """A listener of the executor's (its sandbox admits AF_INET) never completes a handshake:
    its SYN-ACK is a reply-direction packet of its socket, dropped and counted."""
    props = unit_properties(host, "executor")
    listener = ("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', %d)); "
                "s.listen(); time.sleep(60)")
    outcomes = {}
    for user_props, port in ((props, 9001), (["User=nobody"], 9002)):
        unit = f"kf-test-listener-{port}"
        start = host.run(shlex.join(["systemd-run", f"--unit={unit}", "--collect",
                                     *(f"--property={p}" for p in user_props),
                                     "/usr/bin/python3", "-c", listener % port]))
        assert start.rc == 0, start.stderr
        for _ in range(30):
            if host.run("ss -Hltn 'sport = :%s' | grep -q LISTEN", str(port)).rc == 0:
                break
            time.sleep(1)
        before = counter(host, "executor_ingress_dropped")
        target = f"tcp:127.0.0.1:{port}"
        outcomes[port] = (json.loads(host.run("python3 -c %s %s", PROBE, target).stdout)[target],
                          counter(host, "executor_ingress_dropped") - before)
        host.run("systemctl stop %s", unit)
    assert outcomes[9002] == ("OK", 0)  # control: the same listener as another user answers
    assert outcomes[9001][0] == "timeout"
    assert outcomes[9001][1] >= 1


def _inventory_ssh(host):
    name = host.backend.get_hostname()
    instances = yaml.safe_load(Path(os.environ["MOLECULE_INSTANCE_CONFIG"]).read_text())
    info = next(i for i in instances if i["instance"] == name)
    return ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ControlMaster=no",
            "-o", "ControlPath=none", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=6", "-i", info["identity_file"], "-p", str(info["port"]),
            f"{info['user']}@{info['address']}"]


def _playbook(host, playbook, extra, tmp_path):
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    proc = run_playbook(host, playbook, "-e", f"@{extra_file}")
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


@full
def test_role_twice_over_the_same_connection_keeps_the_session(host, endpoints, tmp_path):
    """The role runs twice in one play (one SSH connection): first with an extra endpoint
    (the handler reloads the table and the executor reaches 8089), then with the model again
    (reloaded back: refused). A shell session opened before keeps ticking throughout."""
    session = subprocess.Popen(
        [*_inventory_ssh(host), "i=0; while [ $i -lt 900 ]; do echo $i; i=$((i+1)); sleep 1; done"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert session.stdout.readline().strip() == "0"  # control: the session is up
        began = time.monotonic()
        model = copy.deepcopy(EXAMPLE["kernelfence_components"])
        widened = copy.deepcopy(model)
        next(c for c in widened if c["name"] == "executor")["network"]["egress"].append(
            {"host": "127.0.0.1", "port": 8089})
        rc, out = _playbook(host, REPO / "tests/vm/playbooks/network_policy_twice.yml",
                            {"kf_test_model": model, "kf_test_widened": widened}, tmp_path)
        assert rc == 0, out[-4000:]
        assert out.count("Reload the kernelfence network policy]") == 2, out[-4000:]
        assert "WIDENED OK" in out, out[-4000:]
        assert "NARROWED EHOSTUNREACH" in out, out[-4000:]
        elapsed = time.monotonic() - began
        # The session lived through both reloads and still answers: the pipe holds every tick
        # since it started; read up to the ticks of now (EOF first means the session died).
        last = -1
        while last < int(elapsed) - 5:
            line = session.stdout.readline().strip()
            if not line:
                break
            last = int(line)
        assert session.poll() is None, "the session ended during the play"
        assert last >= int(elapsed) - 5, (last, elapsed)
        print(f"SESSION {host.backend.get_hostname()} survived {elapsed:.0f} s, last tick {last}")
    finally:
        session.kill()
        session.wait()


BAD_INPUT = {
    "malformed-address": (
        {"executor": {"network": {"egress": [{"host": "127.0.0.300", "port": 8088}]}}},
        {},
        "kernelfence_components[executor].network.egress[0].host: '127.0.0.300' is not an "
        "IPv4 or IPv6 address. Fix: give a literal address"),
    "port-out-of-range": (
        {"executor": {"network": {"egress": [{"host": "127.0.0.1", "port": 65536}]}}},
        {},
        "kernelfence_components[executor].network.egress[0].port: port 65536 is out of range. "
        "Fix: give an integer from 1 to 65535"),
    "unknown-component": (
        {"executor": {"network": {"egress": [{"host": "127.0.0.1", "port": 8088}],
                                  "ingress": [{"port": 9000, "from": ["orchestrater"]}]}}},
        {},
        "kernelfence_components[executor].network.ingress[0].from: unknown component "
        "'orchestrater'. Fix: name one of"),
    "rule-nft-rejects": (
        {},
        {"network_policy_log_rate": "6/fortnight"},
        "failed to validate"),
}


def policy_state(host):
    files = host.run("sha256sum /etc/kernelfence/network-policy.nft "
                     "/etc/systemd/system/kf-network-policy.service").stdout
    loaded = host.run("systemctl show -p ActiveEnterTimestampMonotonic "
                      "kf-network-policy.service").stdout
    return stateless_table(host), files, loaded


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_and_keeps_the_loaded_ruleset(host, case, tmp_path):
    changes, extra, message = BAD_INPUT[case]
    before = policy_state(host)
    assert "chain executor" in before[0]  # control: a loaded table to disturb
    model = copy.deepcopy(EXAMPLE["kernelfence_components"])
    for comp in model:
        comp.update(changes.get(comp["name"], {}))
    rc, out = _playbook(host, REPO / "playbooks/site.yml",
                        {"kernelfence_components": model, **extra}, tmp_path)
    assert rc == 2, out[-3000:]
    assert message in out, out[-3000:]
    if case == "rule-nft-rejects":
        assert "fortnight" in out, out[-3000:]  # nft's own diagnosis reaches the operator
    assert policy_state(host) == before


@full
def test_rules_are_back_after_reboot_before_the_components(host):
    """The one reboot of the suite: the table is loaded by our unit early at boot, and every
    component unit became active after it."""
    ssh = _inventory_ssh(host)
    host.run("systemctl stop kf-test-endpoints.service")
    table = stateless_table(host)
    boot_id = host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    last_host_run = time.monotonic()
    subprocess.run([*ssh, "systemd-run --on-active=2 /bin/systemctl reboot"], check=True,
                   timeout=60, capture_output=True)
    began = time.monotonic()
    new_boot = boot_id
    while time.monotonic() - began < 420:
        time.sleep(5)
        probe_boot = subprocess.run([*ssh, "cat /proc/sys/kernel/random/boot_id"],
                                    capture_output=True, text=True, timeout=60, check=False)
        if probe_boot.returncode == 0 and probe_boot.stdout.strip() not in ("", boot_id):
            new_boot = probe_boot.stdout.strip()
            break
    assert new_boot != boot_id, "the VM did not come back within 420 s"
    print(f"REBOOT {host.backend.get_hostname()} back over SSH after "
          f"{time.monotonic() - began:.0f} s")
    script = ("systemctl is-system-running --wait >/dev/null; "
              "nft -s list table inet kernelfence; echo @@; "
              "systemctl show -p ActiveEnterTimestampMonotonic --value kf-network-policy.service "
              "kf-orchestrator.service kf-executor.service kf-model_backend.service; echo @@; "
              "journalctl -b -o short-monotonic --no-pager -u kf-network-policy.service "
              "-u kf-executor.service | grep -E 'Finished|Started' ")
    out = subprocess.run([*ssh, script], capture_output=True, text=True, timeout=300, check=True)
    loaded, stamps, journal = out.stdout.split("@@\n")
    assert loaded == table
    policy, *components = [int(s) for s in stamps.split()]
    print(f"BOOT-ORDER {host.backend.get_hostname()} policy active at {policy} us, components "
          f"at {components} us\n{journal}")
    assert policy > 0 and all(c > policy for c in components), (policy, components)
    # Later tests talk through the run's SSH master (ControlPersist=60s), which the reboot
    # cut: let it expire so they open a fresh connection.
    time.sleep(max(0.0, 65 - (time.monotonic() - last_host_run)))


@full
def test_host_baseline_is_live_after_the_reboot(host):
    """After the reboot above: every setting of the host baseline's drop-in is live again, set
    at boot from the file (the boot is newer than the file, so it was not the role's live apply)."""
    from test_host_baseline import FILE, live_mismatches
    booted = int(host.run("awk '/^btime/ {print $2}' /proc/stat").stdout)
    assert booted > int(host.run(f"stat -c %Y {FILE}").stdout)
    settings, bad = live_mismatches(host)
    assert "kernel.yama.ptrace_scope" in settings and len(settings) >= 10, settings
    assert bad == {}
