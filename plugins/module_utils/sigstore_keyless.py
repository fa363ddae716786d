# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keyless (Fulcio certificate) verification of a Sigstore bundle against a user's trusted root.

Everything that is not the signature itself is checked here, in Python, on both paths, so a
defect is reported with the same reason whether cosign or sigstore-python then checks the
chain, the SCT, the log entry and the signature: the trusted root is a usable one (not another
Sigstore document, with a CA and both logs), one of its CAs issued the certificate, the identity
and issuer are the expected ones, the bundle's logs are in the root, and each trusted-root entry
the signature relies on was valid at the signing time (sigstore-python 4.5 accepts an entry whose
window ended before the signature; cosign refuses one, but as an error the verdict cannot tell
from a bad signature).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
from dataclasses import dataclass

from .artifact_verify import Artifact, VerificationFailed  # type: ignore[import-not-found]

# Fulcio's OIDC issuer extensions: v1 holds the raw string, v2 a DER UTF8String.
OID_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"
OID_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"


def bundle_certificate(art: Artifact):
    """The leaf certificate inside the bundle."""
    from cryptography import x509

    try:
        with open(str(art.bundle), encoding="utf-8") as handle:
            material = json.load(handle).get("verificationMaterial") or {}
        if "certificate" in material:
            raw = material["certificate"]["rawBytes"]
        else:
            raw = material["x509CertificateChain"]["certificates"][0]["rawBytes"]
        return x509.load_der_x509_certificate(base64.b64decode(raw))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise VerificationFailed(art.label, "bad-bundle",
                                 f"{art.bundle}: no signing certificate ({exc})") from None


def _issuer(cert) -> str | None:
    from cryptography import x509

    for ext in cert.extensions:
        if ext.oid.dotted_string == OID_ISSUER_V2 and isinstance(ext.value,
                                                                 x509.UnrecognizedExtension):
            der = ext.value.value
            # UTF8String: tag 0x0c, then a short or long form length.
            if der[:1] == b"\x0c":
                length = der[1]
                start = 2
                if length & 0x80:
                    count = length & 0x7F
                    length = int.from_bytes(der[2:2 + count], "big")
                    start = 2 + count
                return der[start:start + length].decode()
    for ext in cert.extensions:
        if ext.oid.dotted_string == OID_ISSUER_V1 and isinstance(ext.value,
                                                                 x509.UnrecognizedExtension):
            return ext.value.value.decode()
    return None


def _identities(cert) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.RFC822Name),
            *san.get_values_for_type(x509.UniformResourceIdentifier)]


@dataclass(frozen=True)
class Window:
    """A trust-root entry's validFor: when the CA or log key may be relied on (open ends)."""

    start: datetime.datetime | None
    end: datetime.datetime | None

    def covers(self, when: datetime.datetime) -> bool:
        return (self.start is None or self.start <= when) and (self.end is None or
                                                               when <= self.end)

    def overlaps(self, first: datetime.datetime, last: datetime.datetime) -> bool:
        return (self.start is None or self.start <= last) and (self.end is None or
                                                               first <= self.end)

    def describe(self) -> str:
        start = _stamp(self.start) if self.start else "the beginning"
        end = _stamp(self.end) if self.end else "no end"
        return f"from {start} to {end}"


@dataclass(frozen=True)
class RootEntry:
    """One certificate authority, transparency log or CT log of a trusted root."""

    kind: str
    where: str
    name: str
    window: Window
    key_ids: frozenset[bytes] = frozenset()
    public_key: object = None
    certificates: tuple = ()

    def describe(self) -> str:
        return f"{self.where} ({self.kind} {self.name})"


@dataclass(frozen=True)
class TrustRoot:
    """The parts of a Sigstore trusted root the keyless checks rely on."""

    path: str
    cas: tuple[RootEntry, ...]
    tlogs: tuple[RootEntry, ...]
    ctlogs: tuple[RootEntry, ...]


@dataclass(frozen=True)
class KeylessFacts:
    """What the shared keyless checks established before the tool checks the signature."""

    identity: str
    issuer: str
    signing_time: datetime.datetime | None


def _stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_FRACTION = re.compile(r"\.(\d+)")


def _timestamp(text: object) -> datetime.datetime:
    """An RFC 3339 timestamp of a trusted root (protobuf JSON: Z suffix, 0-9 fraction digits)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp")
    when = datetime.datetime.fromisoformat(
        _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text.strip()))
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when


# Other Sigstore documents that get passed where a trusted root is expected.
_NOT_A_ROOT = {
    "application/vnd.dev.sigstore.clienttrustconfig": "a Sigstore client trust config",
    "application/vnd.dev.sigstore.signingconfig": "a Sigstore signing config",
    "application/vnd.dev.sigstore.bundle": "a Sigstore bundle",
}
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"


def _bad_root(art: Artifact, detail: str) -> VerificationFailed:
    return VerificationFailed(art.label, "bad-trusted-root", f"{art.trusted_root}: {detail}")


def _window(art: Artifact, holder: dict, where: str) -> Window:
    valid_for = holder.get("validFor")
    if valid_for is None:
        return Window(None, None)
    try:
        start = _timestamp(valid_for["start"]) if valid_for.get("start") else None
        end = _timestamp(valid_for["end"]) if valid_for.get("end") else None
    except (AttributeError, TypeError, ValueError) as exc:
        raise _bad_root(art, f"{where}.validFor is not a time range ({exc})") from None
    if start and end and end < start:
        raise _bad_root(art, f"{where}.validFor ends ({_stamp(end)}) before it starts "
                        f"({_stamp(start)})")
    return Window(start, end)


def _ca_entries(art: Artifact, doc: dict) -> tuple[RootEntry, ...]:
    from cryptography import x509

    out = []
    for index, ca in enumerate(doc.get("certificateAuthorities") or []):
        where = f"certificateAuthorities[{index}]"
        try:
            certs = tuple(x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"]))
                          for c in ca["certChain"]["certificates"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad_root(art, f"{where}.certChain does not hold DER certificates "
                            f"({exc})") from None
        if not certs:
            raise _bad_root(art, f"{where}.certChain has no certificate")
        name = ca.get("uri") or certs[0].subject.rfc4514_string()
        out.append(RootEntry("certificate authority", where, str(name), _window(art, ca, where),
                             certificates=certs))
    return tuple(out)


def _log_entries(art: Artifact, doc: dict, member: str, kind: str) -> tuple[RootEntry, ...]:
    from cryptography.hazmat.primitives import serialization

    out = []
    for index, log in enumerate(doc.get(member) or []):
        where = f"{member}[{index}]"
        try:
            raw = base64.b64decode(log["publicKey"]["rawBytes"])
            key = serialization.load_der_public_key(raw)
            declared = base64.b64decode((log.get("logId") or {}).get("keyId") or "")
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad_root(art, f"{where}.publicKey is not a DER public key ({exc})") from None
        # Clients match a bundle's log id against the key's sha256 (sigstore-python) or
        # the declared logId (cosign): either identifies the entry.
        ids = frozenset(filter(None, (declared, hashlib.sha256(raw).digest())))
        out.append(RootEntry(kind, where, str(log.get("baseUrl") or "(no baseUrl)"),
                             _window(art, log["publicKey"], f"{where}.publicKey"),
                             key_ids=ids, public_key=key))
    return tuple(out)


def load_trusted_root(art: Artifact) -> TrustRoot:
    """The user's trusted root, refused with the true cause when it is not a usable one."""
    path = str(art.trusted_root)
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad_root(art, f"cannot be read ({exc})") from None
    except ValueError as exc:
        raise _bad_root(art, f"not JSON ({exc}); give the Sigstore trusted_root.json") from None
    if not isinstance(doc, dict):
        raise _bad_root(art, "not a JSON object; give the Sigstore trusted_root.json")
    media = str(doc.get("mediaType") or "")
    if media.startswith("application/vnd.dev.sigstore.clienttrustconfig") or (
            not media and "trustedRoot" in doc):
        raise VerificationFailed(
            art.label, "client-trust-config",
            f"{path} is a Sigstore client trust config (mediaType {media or 'none'}: a trusted "
            "root and a signing config); give its trustedRoot member as the trusted root, "
            f"e.g. jq .trustedRoot {path} > trusted_root.json")
    for prefix, what in _NOT_A_ROOT.items():
        if media.startswith(prefix):
            raise _bad_root(art, f"is {what} (mediaType {media}), not a trusted root; give "
                            "the Sigstore trusted_root.json")
    if media != TRUSTED_ROOT_MEDIA_TYPE:
        raise _bad_root(art, f"mediaType is {media or 'missing'}, a trusted root has "
                        f"{TRUSTED_ROOT_MEDIA_TYPE}")
    root = TrustRoot(path, _ca_entries(art, doc),
                     _log_entries(art, doc, "tlogs", "transparency log"),
                     _log_entries(art, doc, "ctlogs", "CT log"))
    for member, entries, what in (("certificateAuthorities", root.cas, "the Fulcio CA"),
                                  ("tlogs", root.tlogs, "the transparency log key"),
                                  ("ctlogs", root.ctlogs, "the CT log key")):
        if not entries:
            raise _bad_root(art, f"has no {member}; keyless verification needs {what}")
    return root


def issuing_cas(art: Artifact, root: TrustRoot, cert) -> list[RootEntry]:
    """The trusted root's CA entries that directly issued the bundle's certificate."""
    from cryptography.exceptions import InvalidSignature

    found = []
    for entry in root.cas:
        for ca in entry.certificates:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            found.append(entry)
            break
    if not found:
        raise VerificationFailed(art.label, "untrusted-certificate",
                                 f"the bundle's certificate ({cert.issuer.rfc4514_string()}) is "
                                 f"not issued by a CA of {art.trusted_root}")
    return found


def expected_signer(art: Artifact, cert) -> tuple[str, str]:
    """(signer identity, issuer) of the certificate, checked against the artifact's expected
    identity (exact or regular expression) and issuer."""
    issuer = _issuer(cert)
    identities = _identities(cert)
    if issuer != art.certificate_oidc_issuer:
        raise VerificationFailed(art.label, "issuer-mismatch",
                                 f"issued by {issuer!r}, expected {art.certificate_oidc_issuer!r}")
    if art.certificate_identity:
        matched = [i for i in identities if i == art.certificate_identity]
    else:
        pattern = re.compile(str(art.certificate_identity_regexp))
        matched = [i for i in identities if pattern.search(i)]
    if not matched:
        want = art.certificate_identity or f"~{art.certificate_identity_regexp}"
        got = ", ".join(identities) or "no identity"
        raise VerificationFailed(art.label, "identity-mismatch",
                                 f"signed by {got!r}, expected {want!r}")
    return matched[0], str(issuer)


def _tlog_entry(art: Artifact) -> dict | None:
    with open(str(art.bundle), encoding="utf-8") as handle:
        entries = (json.load(handle).get("verificationMaterial") or {}).get("tlogEntries")
    return entries[0] if isinstance(entries, list) and entries and isinstance(
        entries[0], dict) else None


def _b64_field(value: object) -> bytes:
    return base64.b64decode(str(value or ""), validate=True)


def _verify_with(key, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _logs_for(art: Artifact, entries: tuple[RootEntry, ...], log_id: bytes, reason: str,
              what: str) -> list[RootEntry]:
    found = [e for e in entries if log_id in e.key_ids]
    if not found:
        known = ", ".join(f"{e.where} {e.name}" for e in entries)
        raise VerificationFailed(
            art.label, reason,
            f"the bundle's {what} has log id {log_id.hex()}, which no entry of "
            f"{art.trusted_root} has ({known}); give the trusted root of the Sigstore "
            "instance that signed it")
    return found


def _signing_time(entry: dict, logs: list[RootEntry]) -> datetime.datetime | None:
    """The entry's integrated time when its signed entry timestamp verifies under one of the
    trusted root's log keys (the time is then the log's, not the bundle's, word)."""
    try:
        integrated = int(entry["integratedTime"])
        payload = json.dumps({
            "body": base64.b64encode(_b64_field(entry["canonicalizedBody"])).decode(),
            "integratedTime": integrated,
            "logID": _b64_field((entry.get("logId") or {}).get("keyId")).hex(),
            "logIndex": int(entry["logIndex"]),
        }, sort_keys=True, separators=(",", ":")).encode()
        signature = _b64_field((entry.get("inclusionPromise") or {})["signedEntryTimestamp"])
    except (KeyError, TypeError, ValueError):
        return None
    if integrated <= 0 or not any(_verify_with(log.public_key, signature, payload)
                                  for log in logs):
        return None
    return datetime.datetime.fromtimestamp(integrated, datetime.UTC)


def _sct_log_ids(cert) -> list[bytes]:
    from cryptography import x509

    try:
        scts = cert.extensions.get_extension_for_class(
            x509.PrecertificateSignedCertificateTimestamps).value
    except x509.ExtensionNotFound:
        return []
    return [sct.log_id for sct in scts]


def _check_windows(art: Artifact, used: list[list[RootEntry]], when: datetime.datetime | None,
                   cert) -> None:
    """Refuse when no trusted-root entry of a kind that the signature relies on was valid at
    the signing time (or, without a verified time, at any time the certificate was valid)."""
    first, last = cert.not_valid_before_utc, cert.not_valid_after_utc
    for entries in used:
        if not entries:
            continue
        if when is not None:
            if any(e.window.covers(when) for e in entries):
                continue
            entry = entries[0]
            side = ("ended before the signature" if entry.window.end and when > entry.window.end
                    else "starts after the signature")
            raise VerificationFailed(
                art.label, "trusted-root-validity",
                f"{art.trusted_root}: {entry.describe()} is valid {entry.window.describe()}, "
                f"the signature was made at {_stamp(when)} (its transparency-log entry's "
                f"verified integrated time): the entry's validity {side}; give a trusted root "
                "whose entries cover the signing time, or sign again")
        elif not any(e.window.overlaps(first, last) for e in entries):
            entry = entries[0]
            raise VerificationFailed(
                art.label, "trusted-root-validity",
                f"{art.trusted_root}: {entry.describe()} is valid {entry.window.describe()}, "
                f"the signing certificate only from {_stamp(first)} to {_stamp(last)}: no "
                "signing time can fall in both; give a trusted root whose entries cover the "
                "signing time, or sign again")


def keyless_prechecks(art: Artifact) -> KeylessFacts:
    """Everything about a keyless bundle that is not the signature itself, checked in Python
    on both paths so that both refuse with the same reason: a usable trusted root, a CA of it
    that issued the certificate, the expected issuer and identity, logs the root knows, and
    trusted-root entries valid at the signing time (sigstore-python does not check that)."""
    root = load_trusted_root(art)
    cert = bundle_certificate(art)
    cas = issuing_cas(art, root, cert)
    identity, issuer = expected_signer(art, cert)
    entry = _tlog_entry(art)
    tlogs: list[RootEntry] = []
    when = None
    if entry is not None:
        try:
            log_id = _b64_field((entry.get("logId") or {}).get("keyId"))
        except ValueError:
            log_id = b""
        if log_id:
            tlogs = _logs_for(art, root.tlogs, log_id, "untrusted-log",
                              "transparency-log entry")
            when = _signing_time(entry, tlogs)
    ctlogs: list[RootEntry] = []
    for log_id in _sct_log_ids(cert):
        ctlogs += _logs_for(art, root.ctlogs, log_id, "untrusted-ct-log",
                            "certificate's SCT")
    _check_windows(art, [cas, tlogs, ctlogs], when, cert)
    return KeylessFacts(identity, issuer, when)


def verify_keyless(art: Artifact, digest_hex: str) -> tuple[str, str, str]:
    """Verify with sigstore-python against the user's trusted root, offline."""
    import sigstore
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity
    from sigstore_models.common.v1 import HashAlgorithm  # type: ignore[import-not-found]

    facts = keyless_prechecks(art)
    try:
        root = TrustedRoot.from_file(str(art.trusted_root))
    except (OSError, ValueError, SigstoreError) as exc:
        raise _bad_root(art, f"sigstore cannot load it ({exc})") from None
    try:
        with open(str(art.bundle), "rb") as handle:
            bundle = Bundle.from_json(handle.read())
    except (ValueError, SigstoreError) as exc:
        raise VerificationFailed(art.label, "bad-bundle", f"{art.bundle}: {exc}") from None
    hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(digest_hex))
    try:
        Verifier(trusted_root=root).verify_artifact(
            hashed, bundle, Identity(identity=facts.identity, issuer=facts.issuer))
    except SigstoreError as exc:
        raise keyless_signature_failure(art, facts.identity, str(exc)) from None
    return facts.identity, facts.issuer, sigstore.__version__


def keyless_signature_failure(art: Artifact, identity: str, output: str) -> VerificationFailed:
    """What both paths report when the tool refuses a bundle that passed the shared checks."""
    return VerificationFailed(
        art.label, "invalid-signature",
        f"{art.src} signed by {identity} does not verify against {art.trusted_root} "
        "(signature, SCT or transparency-log entry)", tool_output=output)
