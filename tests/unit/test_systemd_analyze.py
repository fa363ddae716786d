"""Parsers of systemd-analyze output, on output recorded from systemd 252."""

from pathlib import Path

from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    parse_security,
    parse_verify,
)

FIX = Path(__file__).parent / "fixtures/systemd_analyze"


def test_verify_flags_every_ignored_line():
    findings = parse_verify((FIX / "verify-bad-252.stderr").read_text())
    kinds = {(f["line"], f["kind"]) for f in findings}
    assert kinds == {(3, "unknown-directive"), (5, "unparsable-value"), (6, "unsafe-user")}
    # The post's one-line filter: the deny part is silently dropped by systemd.
    assert any("~@privileged" in f["message"] for f in findings if f["line"] == 5)


def test_verify_keeps_only_the_files_asked_about():
    stderr = (FIX / "verify-bad-252.stderr").read_text()
    stderr += "/lib/systemd/system/other.service:9: Unknown key 'X' in section [Unit], ignoring.\n"
    assert {f["file"] for f in parse_verify(stderr, ["/etc/kernelfence/staged/bad.service"])} == {
        "/etc/kernelfence/staged/bad.service"}


def test_security_overall_and_failing_checks():
    result = parse_security((FIX / "security-wrapper-252.txt").read_text(),
                            (FIX / "security-wrapper-252.json").read_text())
    assert result["exposure"] == 1.6 and result["band"] == "OK"
    names = [c["name"] for c in result["failing"]]
    assert names[0] == "PrivateNetwork=", "heaviest first"
    assert "RestrictNamespaces=~user" in names
    assert all(c["exposure"] > 0 for c in result["failing"])


def test_misspelled_capability_is_a_finding():
    from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
        CAPABILITIES,
    )
    from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
        unknown_capabilities,
    )
    text = (FIX / "bad.service").read_text()
    text += "AmbientCapabilities=cap_net_raw\nCapabilityBoundingSet=~CAP_SYS_ADMIN CAP_BOGUS\n"
    findings = unknown_capabilities(text, "/x.service", CAPABILITIES)
    assert [(f["line"], f["kind"]) for f in findings] == [(4, "unknown-capability"),
                                                          (8, "unknown-capability")]
    assert "'CAP_NET_BIND_SERVIC'" in findings[0]["message"]
    assert "'CAP_BOGUS'" in findings[1]["message"]


def test_verify_reads_systemd_257s_wording_of_an_ignored_syscall():
    # Recorded in the Debian 13 guest (systemd 257) for the post's one-line filter.
    stderr = ("/run/kf-bad-test.service:5: System call ~@privileged is not known, ignoring.\n"
              "/run/kf-bad-test.service:4: Unknown key 'PrivateBPF' in section [Service], "
              "ignoring.\n")
    kinds = {(f["line"], f["kind"]) for f in parse_verify(stderr)}
    assert kinds == {(5, "unparsable-value"), (4, "unknown-directive")}
