"""Keyless inputs and trusted roots the verifier must refuse, with the true cause, on both paths.

Every trusted root and bundle here is generated at test time under a private test trust root
(fixtures/keyless/make_keyless.py builds the CA, the CT log key and the transparency-log key),
then one part is changed per case: a validity window that ends before or starts after the
signing time, a missing or foreign log, a client trust config instead of a root, inputs left
out. The module's and the action plugin's own argument checks are exercised through the real
module process and the real ansible-playbook.
"""

import copy
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    REASONS,
    Artifact,
    VerificationFailed,
    verify_artifact,
)

REPO = Path(__file__).resolve().parents[2]
FIX = Path(__file__).parent / "fixtures/keyless"
COSIGN = os.environ.get("KF_COSIGN") or shutil.which("cosign") or str(
    Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin/cosign")
# As in test_artifact_verify.py: the cosign path runs wherever the pinned cosign is built.
COSIGN3 = os.environ.get("KF_COSIGN3") or shutil.which("cosign3") or str(
    Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin/cosign3")
BACKENDS = ["python", pytest.param("cosign", marks=pytest.mark.skipif(
    not os.access(COSIGN, os.X_OK), reason=f"cosign not built yet at {COSIGN}")),
    pytest.param("cosign3", marks=pytest.mark.skipif(
        not os.access(COSIGN3, os.X_OK), reason=f"cosign3 not built yet at {COSIGN3}"))]
IDENTITY = "release-signer@kernelfence.test"
ISSUER = "https://issuer.kernelfence.test"
BLOB = b"kernelfence trust-root case artifact\n"


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_keyless", FIX / "make_keyless.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MK = _load_maker()
# make_keyless signs every bundle 30 days after its T0; the windows below sit around that.
SIGNED_AT = MK.T0 + datetime.timedelta(days=30)


def stamp(when):
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def signed():
    """A private root and a bundle of BLOB signed under it (generated once per module)."""
    root = MK.make_root("kernelfence test")
    return root, MK.make_bundle(root, BLOB)


def write_case(tmp_path, root_doc, bundle):
    (tmp_path / "artifact.bin").write_bytes(BLOB)
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    if isinstance(root_doc, (dict, list)):
        (tmp_path / "trusted_root.json").write_text(json.dumps(root_doc))
    else:
        (tmp_path / "trusted_root.json").write_text(root_doc)
    return Artifact(component="executor", name="tool", src=str(tmp_path / "artifact.bin"),
                    bundle=str(tmp_path / "bundle.json"),
                    trusted_root=str(tmp_path / "trusted_root.json"),
                    certificate_identity=IDENTITY, certificate_oidc_issuer=ISSUER)


def verify(art, backend):
    if backend == "python":
        return verify_artifact(art, "python")
    return verify_artifact(art, "cosign", {"cosign": COSIGN, "cosign3": COSIGN3}[backend])


def refused(art, backend):
    with pytest.raises(VerificationFailed) as exc:
        verify(art, backend)
    text = str(exc.value)
    # Each reason once: the reason's text, and no detail repeated after it.
    assert text.count(REASONS[exc.value.reason]) == 1, text
    assert "None" not in text, text
    return exc.value


# -- item 2: validity windows of the trusted root's entries ------------------------------------

ENDED_BEFORE = {"start": "2025-01-01T00:00:00Z",
                "end": stamp(SIGNED_AT - datetime.timedelta(days=10))}
STARTS_AFTER = {"start": stamp(SIGNED_AT + datetime.timedelta(days=10))}
COVERING = {"start": "2025-01-01T00:00:00Z",
            "end": stamp(SIGNED_AT + datetime.timedelta(days=10))}
KINDS = {
    "ca": (lambda doc: doc["certificateAuthorities"][0], "certificateAuthorities[0]",
           "certificate authority"),
    "tlog": (lambda doc: doc["tlogs"][0]["publicKey"], "tlogs[0]", "transparency log"),
    "ctlog": (lambda doc: doc["ctlogs"][0]["publicKey"], "ctlogs[0]", "CT log"),
}


def with_window(doc, kind, window):
    doc = copy.deepcopy(doc)
    KINDS[kind][0](doc)["validFor"] = dict(window)
    return doc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("window", ["ended-before", "starts-after"])
def test_entry_not_valid_at_signing_time_is_refused(tmp_path, signed, backend, kind, window):
    root, bundle = signed
    validity = {"ended-before": ENDED_BEFORE, "starts-after": STARTS_AFTER}[window]
    art = write_case(tmp_path, with_window(root["doc"], kind, validity), bundle)
    exc = refused(art, backend)
    assert exc.reason == "trusted-root-validity", str(exc)
    _get, where, what = KINDS[kind]
    assert str(exc).startswith(
        f"artifact executor/tool: trusted root entry not valid at the signing time: "
        f"{art.trusted_root}: {where} ({what} "), str(exc)
    assert f"the signature was made at {stamp(SIGNED_AT)}" in str(exc)
    side = {"ended-before": "ended before", "starts-after": "starts after"}[window]
    assert f"validity {side} the signature" in str(exc)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_entry_whose_window_covers_the_signing_time_verifies(tmp_path, signed, backend, kind):
    """The control: the same root with a closed window around the signing time passes."""
    root, bundle = signed
    art = write_case(tmp_path, with_window(root["doc"], kind, COVERING), bundle)
    assert verify(art, backend).signer_identity == IDENTITY


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotated_ca_keeps_old_signatures_valid(tmp_path, signed, backend):
    """A root that lists the same CA twice, once expired and once current, still verifies a
    signature made in the current window (the check takes any entry that covers the time)."""
    root, bundle = signed
    doc = copy.deepcopy(root["doc"])
    old = copy.deepcopy(doc["certificateAuthorities"][0])
    old["validFor"] = dict(ENDED_BEFORE)
    doc["certificateAuthorities"].insert(0, old)
    art = write_case(tmp_path, doc, bundle)
    assert verify(art, backend).signer_identity == IDENTITY


# -- item 3: trust-root defects are named as such ----------------------------------------------

def client_trust_config(doc):
    return {"mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": doc,
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [], "oidcUrls": [], "rekorTlogUrls": [], "tsaUrls": []}}


def without(member):
    def change(doc):
        doc = copy.deepcopy(doc)
        doc[member] = []
        return doc
    return change


def foreign_log(member):
    """The root's log replaced by another log's key: the bundle's log is not in the root."""
    def change(doc):
        doc = copy.deepcopy(doc)
        doc[member] = [MK.key_entry(MK.ec.generate_private_key(MK.ec.SECP256R1()),
                                    "https://other-log.kernelfence.test")]
        return doc
    return change


def set_in(path, value):
    def change(doc):
        doc = copy.deepcopy(doc)
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return doc
    return change


ROOT_DEFECTS = {
    "not-json": (lambda doc: "# a README, not JSON\n", "bad-trusted-root", "not JSON"),
    "json-list": (lambda doc: [doc], "bad-trusted-root", "not a JSON object"),
    "client-trust-config": (client_trust_config, "client-trust-config",
                            "is a Sigstore client trust config"),
    "signing-config": (lambda doc: client_trust_config(doc)["signingConfig"],
                       "bad-trusted-root", "is a Sigstore signing config"),
    "no-media-type": (lambda doc: {k: v for k, v in doc.items() if k != "mediaType"},
                      "bad-trusted-root", "mediaType is missing"),
    "no-ca": (without("certificateAuthorities"), "bad-trusted-root",
              "has no certificateAuthorities"),
    "no-tlog": (without("tlogs"), "bad-trusted-root", "has no tlogs"),
    "no-ctlog": (without("ctlogs"), "bad-trusted-root", "has no ctlogs"),
    "foreign-tlog": (foreign_log("tlogs"), "untrusted-log",
                     "the bundle's transparency-log entry has log id"),
    "foreign-ctlog": (foreign_log("ctlogs"), "untrusted-ct-log",
                      "the bundle's certificate's SCT has log id"),
    "garbage-log-key": (set_in(["tlogs", 0, "publicKey", "rawBytes"], "bm90IGEga2V5"),
                        "bad-trusted-root", "tlogs[0].publicKey is not a DER public key"),
    "garbage-ca-cert": (set_in(["certificateAuthorities", 0, "certChain", "certificates", 0,
                                "rawBytes"], "bm90IGEgY2VydA=="), "bad-trusted-root",
                        "certificateAuthorities[0].certChain does not hold DER certificates"),
    "bad-valid-for": (set_in(["ctlogs", 0, "publicKey", "validFor"], {"start": "last year"}),
                      "bad-trusted-root", "ctlogs[0].publicKey.validFor is not a time range"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(ROOT_DEFECTS))
def test_trust_root_defect_is_named(tmp_path, signed, backend, case):
    root, bundle = signed
    change, reason, words = ROOT_DEFECTS[case]
    art = write_case(tmp_path, change(root["doc"]), bundle)
    exc = refused(art, backend)
    assert exc.reason == reason, str(exc)
    assert exc.reason != "invalid-signature"
    assert words in str(exc), str(exc)
    assert str(exc).startswith(f"artifact executor/tool: {REASONS[reason]}: "), str(exc)


def test_client_trust_config_message_says_how_to_get_the_root(tmp_path, signed):
    root, bundle = signed
    art = write_case(tmp_path, client_trust_config(root["doc"]), bundle)
    exc = refused(art, "python")
    assert str(exc) == (
        f"artifact executor/tool: a client trust config is not a trusted root: "
        f"{art.trusted_root} is a Sigstore client trust config (mediaType "
        "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json: a trusted root and a signing "
        "config); give its trustedRoot member as the trusted root, e.g. jq .trustedRoot "
        f"{art.trusted_root} > trusted_root.json")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tampered_log_time_is_a_signature_failure_not_a_window(tmp_path, signed, backend):
    """An integrated time moved outside the windows without the log's signature is not a
    verified time: the bundle fails as a bad signature, not as a trust-root window."""
    root, bundle = signed
    bundle = copy.deepcopy(bundle)
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    entry["integratedTime"] = str(int(entry["integratedTime"]) + 400 * 86400)
    art = write_case(tmp_path, root["doc"], bundle)
    assert refused(art, backend).reason == "invalid-signature"


# -- items 1 and 3: missing inputs, on the verifier itself -------------------------------------

MISSING = {
    "no-identity": ({"certificate_identity": None}, "missing-identity", "certificate_identity"),
    "empty-identity": ({"certificate_identity": ""}, "missing-identity",
                       "certificate_identity"),
    "empty-regexp": ({"certificate_identity": None, "certificate_identity_regexp": ""},
                     "bad-identity-regexp", "certificate_identity_regexp"),
    "match-all-regexp": ({"certificate_identity": None, "certificate_identity_regexp": ".*"},
                         "bad-identity-regexp", "certificate_identity_regexp"),
    "optional-regexp": ({"certificate_identity": None,
                         "certificate_identity_regexp": "(release-signer@kernelfence.test)?"},
                        "bad-identity-regexp", "certificate_identity_regexp"),
    "any-signer-regexp": ({"certificate_identity": None, "certificate_identity_regexp": ".+"},
                          "bad-identity-regexp", "certificate_identity_regexp"),
    "at-sign-regexp": ({"certificate_identity": None, "certificate_identity_regexp": "@"},
                       "bad-identity-regexp", "certificate_identity_regexp"),
    # The signer's own identity, but unanchored: it would match inside an attacker's identity.
    "unanchored-regexp": ({"certificate_identity": None,
                           "certificate_identity_regexp": r"release-signer@kernelfence\.test$"},
                          "bad-identity-regexp", "certificate_identity_regexp"),
    "no-issuer": ({"certificate_oidc_issuer": None}, "missing-issuer",
                  "certificate_oidc_issuer"),
    "no-trusted-root": ({"trusted_root": None}, "missing-trusted-root", "trusted_root"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_or_match_all_input_is_refused(tmp_path, signed, backend, case):
    root, bundle = signed
    over, reason, option = MISSING[case]
    art = write_case(tmp_path, root["doc"], bundle)
    art = Artifact(**{**art.__dict__, **over})
    exc = refused(art, backend)
    assert exc.reason == reason, str(exc)
    assert str(exc).startswith(f"artifact executor/tool: {REASONS[reason]}: {option}: "), str(exc)


# -- item 1: the module's and the action plugin's own argument checks --------------------------

def raw_artifact(tmp_path, signed, **over):
    root, bundle = signed
    art = write_case(tmp_path, root["doc"], bundle)
    fields = {k: v for k, v in art.__dict__.items() if v is not None}
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


ARG_CASES = {
    "no-identity": ({"certificate_identity": None}, "artifacts[0].certificate_identity"),
    "empty-regexp": ({"certificate_identity": None, "certificate_identity_regexp": ""},
                     "artifacts[0].certificate_identity_regexp"),
    "match-all-regexp": ({"certificate_identity": None, "certificate_identity_regexp": "^.*"},
                         "artifacts[0].certificate_identity_regexp"),
    "any-signer-regexp": ({"certificate_identity": None, "certificate_identity_regexp": "^.+$"},
                          "artifacts[0].certificate_identity_regexp"),
    "no-issuer": ({"certificate_oidc_issuer": None}, "artifacts[0].certificate_oidc_issuer"),
}


def run_module(args, tmp_path):
    """The module process itself, as Ansible runs it, with the arguments as given."""
    argsfile = tmp_path / "args.json"
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / ".collections"),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "plugins/modules/artifact_verify.py"),
                           str(argsfile)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", sorted(ARG_CASES))
def test_module_argument_checks_name_the_option(tmp_path, signed, case):
    over, option = ARG_CASES[case]
    result = run_module({"artifacts": [raw_artifact(tmp_path, signed, **over)],
                         "install": False}, tmp_path)
    assert result.get("failed"), result
    assert result["msg"].startswith(f"invalid artifacts: {option} (executor/tool): "), result
    assert "None" not in result["msg"]


def run_play(tmp_path, cases):
    """The action plugin through the real ansible-playbook, one looped task over the cases."""
    out = tmp_path / "results.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "verify", "kernelfence.isolation.artifact_verify": {
            "artifacts": ["{{ item }}"], "install": False, "backend": "python"},
         "loop": cases, "register": "verified", "ignore_errors": True},
        {"name": "record", "ansible.builtin.copy": {
            "content": "{{ verified.results | to_json }}", "dest": str(out)}}]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    bindir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bindir / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert out.exists(), proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_action_plugin_checks_and_messages(tmp_path, signed):
    cases = []
    for name in sorted(ARG_CASES):
        case_dir = tmp_path / name
        case_dir.mkdir()
        cases.append(raw_artifact(case_dir, signed, **ARG_CASES[name][0]))
    # A trust root that is not JSON: its cause once in the message (ansible-core appends the
    # text of every chained exception, which repeated it three times).
    bad = tmp_path / "not-json"
    bad.mkdir()
    cases.append(raw_artifact(bad, signed))
    (bad / "trusted_root.json").write_text("# not JSON\n")
    good = tmp_path / "good"
    good.mkdir()
    cases.append(raw_artifact(good, signed))
    results = run_play(tmp_path, cases)
    for name, result in zip(sorted(ARG_CASES), results, strict=False):
        assert result.get("failed"), (name, result)
        assert result["reason"] == "invalid-arguments", (name, result)
        assert result["msg"].startswith(
            f"invalid artifacts: {ARG_CASES[name][1]} (executor/tool): "), (name, result)
        assert "None" not in result["msg"]
    not_json = results[len(ARG_CASES)]
    assert not_json["reason"] == "bad-trusted-root", not_json
    assert not_json["msg"].count("Expecting value") == 1, not_json["msg"]
    assert not_json["msg"].count("artifact executor/tool") == 1, not_json["msg"]
    assert not results[-1].get("failed"), results[-1]
    assert results[-1]["artifacts"][0]["evidence"]["signer_identity"] == IDENTITY


def test_argument_checks_accept_the_component_model_record(tmp_path, signed):
    """Records from the component model carry every field (unset ones as None) and more."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
        artifact_argument_errors,
    )

    record = raw_artifact(tmp_path, signed)
    record.update({"key": None, "signature": None, "certificate_identity_regexp": None,
                   "sha256": hashlib.sha256(BLOB).hexdigest(), "sbom": None, "version": "1",
                   "base_dir": "/opt/kernelfence/bin/executor/tool",
                   "path": "/opt/kernelfence/bin/executor/tool/current/tool"})
    assert artifact_argument_errors([record]) == []
    key_based = {"component": "executor", "name": "tool", "src": "/x", "key": "/k.pub",
                 "signature": "/s", "certificate_identity": None, "trusted_root": None}
    assert artifact_argument_errors([key_based]) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_signed_log_time_the_certificate_validity_bounds_the_window(
        tmp_path, signed, backend):
    """No signed entry timestamp (no verified signing time): a CA whose window ended before
    its certificate's validity began cannot have issued it for any signing time."""
    root, bundle = signed
    bundle = copy.deepcopy(bundle)
    del bundle["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]
    art = write_case(tmp_path, with_window(root["doc"], "ca", ENDED_BEFORE), bundle)
    exc = refused(art, backend)
    assert exc.reason == "trusted-root-validity", str(exc)
    assert "the signing certificate only from" in str(exc)
