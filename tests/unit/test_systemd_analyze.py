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
