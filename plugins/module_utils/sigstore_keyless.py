# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keyless (Fulcio certificate) verification of a Sigstore bundle against a user's trusted root.

The signer identity and issuer are read from the bundle's certificate and compared here, on
both paths, so a wrong identity or issuer is reported the same way whether cosign or
sigstore-python then checks the chain, the SCT, the log entry and the signature.
"""

from __future__ import annotations

import base64
import json
import re

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
                                 f"{art.bundle}: no signing certificate ({exc})") from exc


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


def trusted_cas(art: Artifact) -> list:
    """Every CA certificate of the user's trusted root."""
    from cryptography import x509

    try:
        with open(str(art.trusted_root), encoding="utf-8") as handle:
            doc = json.load(handle)
        return [x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"]))
                for ca in doc.get("certificateAuthorities", [])
                for c in ca["certChain"]["certificates"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VerificationFailed(art.label, "missing-trusted-root",
                                 f"{art.trusted_root}: not a Sigstore trusted root ({exc})"
                                 ) from exc


def check_issued_by_trusted_ca(art: Artifact, cert) -> None:
    from cryptography.exceptions import InvalidSignature

    for ca in trusted_cas(art):
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise VerificationFailed(art.label, "untrusted-certificate",
                             f"the bundle's certificate ({cert.issuer.rfc4514_string()}) is "
                             f"not issued by a CA of {art.trusted_root}")


def certificate_identity(art: Artifact) -> tuple[str, str]:
    """(signer identity, issuer) of the bundle's certificate, checked against the trusted
    root's CAs, the artifact's expected identity (exact or regular expression) and issuer."""
    cert = bundle_certificate(art)
    check_issued_by_trusted_ca(art, cert)
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
    return matched[0], issuer


def verify_keyless(art: Artifact, digest_hex: str) -> tuple[str, str, str]:
    """Verify with sigstore-python against the user's trusted root, offline."""
    import sigstore
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity
    from sigstore_models.common.v1 import HashAlgorithm  # type: ignore[import-not-found]

    identity, issuer = certificate_identity(art)
    try:
        root = TrustedRoot.from_file(str(art.trusted_root))
    except (OSError, ValueError, SigstoreError) as exc:
        raise VerificationFailed(art.label, "missing-trusted-root",
                                 f"{art.trusted_root}: {exc}") from exc
    try:
        with open(str(art.bundle), "rb") as handle:
            bundle = Bundle.from_json(handle.read())
    except (ValueError, SigstoreError) as exc:
        raise VerificationFailed(art.label, "bad-bundle", f"{art.bundle}: {exc}") from exc
    hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(digest_hex))
    try:
        Verifier(trusted_root=root).verify_artifact(
            hashed, bundle, Identity(identity=identity, issuer=issuer))
    except SigstoreError as exc:
        raise keyless_signature_failure(art, identity, str(exc)) from exc
    return identity, issuer, sigstore.__version__


def keyless_signature_failure(art: Artifact, identity: str, output: str) -> VerificationFailed:
    """What both paths report when the tool refuses a bundle that passed the shared checks."""
    return VerificationFailed(
        art.label, "invalid-signature",
        f"{art.src} signed by {identity} does not verify against {art.trusted_root} "
        "(signature, SCT or transparency-log entry)", tool_output=output)
