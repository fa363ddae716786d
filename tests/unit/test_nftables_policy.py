"""The nftables policy: rendered from the component model, checked and loaded by the real nft.

The load tests run nft in a network namespace of their own (`unshare -n`), so they never touch
the machine's ruleset; they need root, as the CI machine has.
"""

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.nftables_policy import (
    PolicyError,
    component_chain,
    parse_getent,
    render,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures/nftables"
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
# Recorded in the Debian 12 guest after converge: getent passwd / getent group of the users.
PASSWD = (FIXTURES / "getent-passwd.txt").read_text()
GROUP = (FIXTURES / "getent-group.txt").read_text()


@pytest.fixture(scope="module")
def records():
    return normalize_components(EXAMPLE["kernelfence_components"])


def ids():
    return parse_getent(PASSWD), parse_getent(GROUP)


def chain(records, name, options=None):
    return component_chain(next(r for r in records if r["name"] == name), options)


def test_getent_parsed_from_recorded_output():
    uids, gids = ids()
    assert uids["kf-executor"] == 997
    assert gids["kf-model-backend"] == 995
    assert "kf-model-backend-clients" in gids


def test_executor_reaches_only_its_allow_list(records):
    rules = chain(records, "executor")
    accepts = [r for r in rules if r.endswith(" accept")]
    assert accepts == ["ip daddr 127.0.0.1 tcp dport 8088 accept"]
    # Everything after the allow list is counted, logged with a rate limit and rejected.
    assert rules[-2] == ('limit rate 6/minute burst 5 packets log prefix '
                         '"kernelfence executor egress reject: " level warn flags skuid')
    assert rules[-1] == 'counter name "executor_rejected" reject with icmpx admin-prohibited'


def test_model_backend_reaches_nothing_even_with_egress(records):
    bad = [dict(r) for r in records]
    backend = next(r for r in bad if r["name"] == "model_backend")
    backend["network"] = {"egress": [{"host": "127.0.0.1", "port": 1, "proto": "tcp",
                                      "family": "ip"}], "ingress": []}
    assert not [r for r in component_chain(backend) if r.endswith(" accept")]


def test_components_answer_no_inbound_connection_without_ingress(records):
    for rec in records:
        rules = component_chain(rec)
        reply = [r for r in rules if r.startswith("ct direction reply")]
        assert reply[-1] == f'ct direction reply counter name "{rec["name"]}_ingress_dropped" drop'
        assert rules.index(reply[-1]) < min(i for i, r in enumerate(rules) if "dport" in r
                                            or "reject" in r)


def test_ingress_admits_loopback_replies_on_its_port_only():
    recs = normalize_components([
        {"name": "orchestrator", "profile": "orchestrator",
         "network": {"egress": [{"host": "127.0.0.1", "port": 9000}]}},
        {"name": "executor", "profile": "executor",
         "network": {"ingress": [{"port": 9000, "from": ["orchestrator"]}]}},
    ])
    rules = component_chain(recs[1])
    assert rules[:2] == ["ct direction reply ip daddr 127.0.0.0/8 tcp sport 9000 accept",
                         "ct direction reply ip6 daddr ::1 tcp sport 9000 accept"]
    assert "ip daddr 127.0.0.1 tcp dport 9000 accept" in component_chain(recs[0])


def test_only_component_identities_are_matched(records):
    uids, gids = ids()
    text = "\n".join(line for line in render(records, uids, gids).splitlines()
                     if not line.strip().startswith("#"))
    assert ("meta skuid vmap { 999 : jump orchestrator, 997 : jump executor, "
            "996 : jump model_backend }") in text
    assert ("meta skgid vmap { 997 : jump orchestrator, 996 : jump executor, "
            "995 : jump model_backend }") in text
    # No input chain, no drop policy, no flush: nothing here can cut the operator's session.
    assert "hook input" not in text and "policy drop" not in text and "flush" not in text
    assert text.count("type filter hook output priority filter; policy accept;") == 1


def test_file_replaces_only_our_table(records):
    uids, gids = ids()
    head = [line for line in render(records, uids, gids).splitlines()
            if line and not line.startswith("#")][:3]
    assert head == ["table inet kernelfence {}", "delete table inet kernelfence",
                    "table inet kernelfence {"]


def test_missing_account_names_component_and_fix(records):
    uids, gids = ids()
    del uids["kf-executor"]
    with pytest.raises(PolicyError, match=r"kernelfence_components\[executor\].user: user "
                       r"'kf-executor' does not exist on the host. Fix: run "
                       r"kernelfence.isolation.component_identity first"):
        render(records, uids, gids)


@pytest.mark.parametrize("value", ["6/minute; flush ruleset", "6/minute\nflush ruleset",
                                   '6/minute" drop #', "6/minute }"])
def test_option_cannot_inject_statements(records, value):
    uids, gids = ids()
    with pytest.raises(PolicyError, match=r"network_policy_log_rate: .* is not a single nft "
                       r"option value"):
        render(records, uids, gids, {"log_rate": value})


def nft_in_netns(script):
    """Run a shell script in a fresh network namespace (its own, empty ruleset)."""
    return subprocess.run(["unshare", "-n", "sh", "-ec", script], capture_output=True,
                          text=True, timeout=60, check=False)


def test_nft_accepts_the_rendered_policy(records, tmp_path):
    uids, gids = ids()
    policy = tmp_path / "policy.nft"
    policy.write_text(render(records, uids, gids))
    out = nft_in_netns(f"nft -c -f {policy}")
    assert out.returncode == 0, out.stderr


def test_nft_rejects_a_bad_option_that_passes_the_syntax_guard(records, tmp_path):
    uids, gids = ids()
    policy = tmp_path / "policy.nft"
    policy.write_text(render(records, uids, gids, {"log_rate": "6/fortnight"}))
    out = nft_in_netns(f"nft -c -f {policy}")
    assert out.returncode == 1
    assert "fortnight" in out.stderr


def test_reload_replaces_our_table_and_leaves_others_alone(records, tmp_path):
    uids, gids = ids()
    good = tmp_path / "good.nft"
    good.write_text(render(records, uids, gids))
    bad = tmp_path / "bad.nft"
    bad.write_text(render(records, uids, gids, {"reject_with": "icmpx no-such-code"}))
    other = tmp_path / "other.nft"
    other.write_text("table ip operator {\n\tchain input {\n\t\ttype filter hook input "
                     "priority 0; policy accept;\n\t\ttcp dport 22 counter accept\n\t}\n}\n")
    out = nft_in_netns(
        f"nft -f {other}; nft -f {good}; nft -f {good}; before=$(nft list ruleset); "
        f"if nft -f {bad}; then exit 9; fi; after=$(nft list ruleset); "
        '[ "$before" = "$after" ] || exit 8; nft list tables')
    assert out.returncode == 0, (out.returncode, out.stderr)
    # Twice loaded, still one table of ours; the operator's table survived every load.
    assert out.stdout.split("\n")[:2] == ["table ip operator", "table inet kernelfence"]


def test_rejects_other_ports_of_the_allowed_host_for_the_component_uid_only(tmp_path):
    """The policy in a real kernel: nobody (65534) stands in for a component user."""
    recs = normalize_components([{"name": "executor", "profile": "executor", "user": "nobody",
                                  "group": "nogroup",
                                  "network": {"egress": [{"host": "127.0.0.1", "port": 8088}]}}])
    policy = tmp_path / "policy.nft"
    policy.write_text(render(recs, {"nobody": 65534}, {"nogroup": 65534}))
    # Passed inline: nobody cannot traverse pytest's private tmp directory.
    probe = shlex.quote(
        "import errno, socket, sys\n"
        "try:\n    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n"
        "    print('OK')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    servers = ("import socket, time\nfor p in (8088, 8089):\n    s = socket.socket()\n"
               "    s.bind(('127.0.0.1', p)); s.listen(); globals()[f's{p}'] = s\n"
               "time.sleep(30)\n")
    nobody = "setpriv --reuid 65534 --regid 65534 --clear-groups /usr/bin/python3"
    out = nft_in_netns(
        f"ip link set lo up; nft -f {policy}; /usr/bin/python3 -c \"{servers}\" & sleep 1; "
        f"echo root-8089 $(/usr/bin/python3 -c {probe} 8089); "
        f"echo nobody-8088 $({nobody} -c {probe} 8088); "
        f"echo nobody-8089 $({nobody} -c {probe} 8089); "
        "nft list counter inet kernelfence executor_rejected; kill $!")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["root-8089 OK", "nobody-8088 OK", "nobody-8089 EHOSTUNREACH"]
    assert "packets 1 " in out.stdout
