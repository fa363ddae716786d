# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verify artifacts on the controller, then stage them with pinned digests and install.

Thin: verification lives in module_utils/artifact_verify.py, SBOMs in module_utils/sbom.py,
the host side in module_utils/verified_install.py (run by the artifact_verify module).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback

from ansible.errors import AnsibleActionFail
from ansible.module_utils.basic import missing_required_lib
from ansible.plugins.action import ActionBase
from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    Artifact,
    VerificationFailed,
    artifact_argument_errors,
    sha256_file,
    verify_artifact,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.sbom import (
    SbomError,
    minimal_sbom,
    syft_sbom,
    validation_errors,
    vendor_sbom,
)

# Controller libraries, imported here only to know whether they are there (module_utils imports
# them where they are used): a missing one fails the task naming it and the install command.
try:
    import cryptography  # noqa: F401  # pylint: disable=unused-import
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
try:
    import sigstore  # noqa: F401  # pylint: disable=unused-import
except ImportError:
    HAS_SIGSTORE = False
    SIGSTORE_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_SIGSTORE = True
    SIGSTORE_IMPORT_ERROR = None
try:
    # jsonschema: cyclonedx-python-lib's json-validation extra
    import cyclonedx  # noqa: F401  # pylint: disable=unused-import
    import jsonschema  # noqa: F401  # pylint: disable=unused-import
except ImportError:
    HAS_CYCLONEDX = False
    CYCLONEDX_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_CYCLONEDX = True
    CYCLONEDX_IMPORT_ERROR = None

MODULE = "kernelfence.isolation.artifact_verify"
# Test hook (never set in production): artifacts (component/name, comma-separated) whose
# staged copy is corrupted after transfer, to prove the host refuses a copy that does not
# match the verified digest.
CORRUPT_HOOK = "KF_TEST_CORRUPT_STAGED_COPY"


def _sbom_for(raw: dict, art: Artifact, digest: str, backend: str, cosign: str | None,
              syft: str | None) -> tuple[dict, dict]:
    """The artifact's SBOM and how it was obtained."""
    name, version = art.name, art.version
    vendor = raw.get("sbom")
    if vendor:
        sbom_art = Artifact.from_dict({
            **{k: raw.get(k) for k in ("key", "certificate_identity",
                                       "certificate_identity_regexp", "certificate_oidc_issuer",
                                       "trusted_root")},
            "component": art.component, "name": f"{art.name}.sbom", "src": vendor["src"],
            "signature": vendor.get("signature"), "bundle": vendor.get("bundle"),
            "sha256": vendor.get("sha256")})
        evidence = verify_artifact(sbom_art, backend, cosign)
        doc = vendor_sbom(sbom_art.src)
        source = {"sbom_source": "vendor", "sbom_sha256": evidence.sha256,
                  "sbom_verified_by": evidence.tool}
    elif syft:
        doc = syft_sbom(syft, art.src, name, version, digest)
        source = {"sbom_source": "syft"}
    else:
        doc = minimal_sbom(name, version, digest)
        source = {"sbom_source": "cyclonedx-python-lib"}
    error = validation_errors(doc)
    if error:
        raise SbomError(f"the SBOM of {art.label} is not valid CycloneDX: {error}")
    return doc, source


def verify_all(artifacts: list[dict], backend: str, cosign: str | None,
               syft: str | None) -> list[dict]:
    out = []
    for raw in artifacts:
        art = Artifact.from_dict(raw)
        try:
            evidence = verify_artifact(art, backend, cosign)
            sbom, sbom_source = _sbom_for(raw, art, evidence.sha256, backend, cosign, syft)
        # "from None": ansible-core appends every chained cause's text to the message, and
        # the message already holds the cause (each reason once).
        except VerificationFailed as exc:
            raise AnsibleActionFail(str(exc), result={"reason": exc.reason,
                                                      "artifact": exc.label,
                                                      "tool_output": exc.tool_output}) from None
        except SbomError as exc:
            raise AnsibleActionFail(f"artifact {art.label}: SBOM: {exc}") from None
        evidence.extra.update(sbom_source)
        evidence.extra["version"] = art.version
        out.append({"component": art.component, "name": art.name, "version": art.version,
                    "src": art.src, "sha256": evidence.sha256, "evidence": evidence.as_dict(),
                    "sbom": sbom,
                    "recheck": {"key": art.key, "signature": art.signature,
                                "bundle": art.bundle}})
    return out


def missing_libraries(artifacts: list[dict], backend: str, cosign: str | None) -> list[dict]:
    """The controller libraries this verification needs and lacks: {name, msg, exception}."""
    if not artifacts:
        return []
    pip = f"{sys.executable} -m pip install"
    needed = [
        (HAS_CRYPTOGRAPHY, "cryptography", CRYPTOGRAPHY_IMPORT_ERROR,
         "to read the cosign public keys and signing certificates", f"{pip} cryptography"),
        (HAS_CYCLONEDX, "cyclonedx-python-lib", CYCLONEDX_IMPORT_ERROR,
         "to make and validate the CycloneDX SBOMs",
         f"{pip} 'cyclonedx-python-lib[json-validation]'"),
    ]
    python_path = backend == "python" or (backend == "auto" and not cosign)
    keyless = any(not a.get("key") for a in artifacts)  # as Artifact.keyless says
    if python_path and keyless:
        needed.append((HAS_SIGSTORE, "sigstore", SIGSTORE_IMPORT_ERROR,
                       "to verify keyless Sigstore bundles without cosign on the controller",
                       f"{pip} sigstore (or put cosign on the controller's PATH)"))
    return [{"name": name, "exception": error,
             "msg": f"{missing_required_lib(name, reason=reason)}. Fix: {fix}"}
            for present, name, error, reason, fix in needed if not present]


def _read(path: str | None) -> str | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read()


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(("artifacts", "verified", "install", "backend", "cosign", "syft",
                             "install_root", "recheck_on_host"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        _validation, args = self.validate_argument_spec(argument_spec={
            "artifacts": {"type": "list", "elements": "dict", "default": []},
            "verified": {"type": "list", "elements": "dict"},
            "install": {"type": "bool", "default": True},
            "backend": {"type": "str", "choices": ["auto", "cosign", "python"],
                        "default": "auto"},
            "cosign": {"type": "path"},
            "syft": {"type": "path"},
            "install_root": {"type": "path", "default": "/opt/kernelfence/bin"},
            "recheck_on_host": {"type": "bool", "default": False},
        })
        syft = args["syft"] or (shutil.which("syft") if args["backend"] != "python" else None)
        verified = args["verified"]
        if verified is None:
            errors = artifact_argument_errors(args["artifacts"])
            if errors:
                raise AnsibleActionFail("invalid artifacts: " + "; ".join(errors),
                                        result={"reason": "invalid-arguments",
                                                "errors": errors})
            cosign = args["cosign"] or (shutil.which("cosign") if args["backend"] != "python"
                                        else None)
            missing = missing_libraries(args["artifacts"], args["backend"], cosign)
            if missing:
                return {**result, "failed": True, "changed": False,
                        "msg": " | ".join(m["msg"] for m in missing),
                        "missing_libraries": [m["name"] for m in missing],
                        "exception": "".join(m["exception"] or "" for m in missing)}
            verified = verify_all(args["artifacts"], args["backend"], args["cosign"], syft)
        else:
            for entry in verified:
                # The file must not have changed on the controller since it was verified.
                actual, _size = sha256_file(entry["src"])
                if actual != entry["sha256"]:
                    raise AnsibleActionFail(
                        f"artifact {entry['component']}/{entry['name']}: digest mismatch: "
                        f"{entry['src']} has sha256 {actual} on the controller, the verified "
                        f"pin is {entry['sha256']}")
        result.update(changed=False, artifacts=verified)
        if not args["install"] or not verified:
            return result
        keys = ("component", "name", "version", "sha256", "sbom", "evidence")
        items = [{k: e[k] for k in keys} for e in verified]
        module_args = {"items": items, "install_root": args["install_root"],
                       "recheck_on_host": args["recheck_on_host"]}
        # First call without files: nothing is copied when every artifact is already current.
        first = self._execute_module(MODULE, module_args=module_args, task_vars=task_vars)
        if first.get("failed"):
            return {**result, **first, "artifacts": []}
        if not first.get("needs_staging") or self._task.check_mode:
            return {**result, **first, "artifacts": verified}
        needed = set(first["needs_staging"])
        tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()
        self._corrupted = []
        corrupt = set(filter(None, os.environ.get(CORRUPT_HOOK, "").split(",")))
        try:
            for index, (entry, item) in enumerate(zip(verified, items, strict=True)):
                label = f"{entry['component']}/{entry['name']}"
                if label not in needed:
                    continue
                remote = self._connection._shell.join_path(tmpdir, f"{index}-{entry['name']}")
                self._transfer_file(self._source(entry["src"], label in corrupt), remote)
                item["staged"] = remote
                if args["recheck_on_host"]:
                    item["recheck"] = {"key_pem": _read(entry["recheck"]["key"]),
                                       "signature": _read(entry["recheck"]["signature"]),
                                       "bundle": _read(entry["recheck"]["bundle"])}
            self._fixup_perms2([tmpdir] + [i["staged"] for i in items if i.get("staged")])
            second = self._execute_module(MODULE, module_args=module_args, task_vars=task_vars)
        finally:
            self._remove_tmp_path(tmpdir)
            for path in self._corrupted:
                os.unlink(path)
        return {**result, **second, "artifacts": [] if second.get("failed") else verified}

    def _source(self, src: str, corrupt: bool) -> str:
        if not corrupt:
            return src
        handle, path = tempfile.mkstemp(prefix="kf-corrupt-")
        with os.fdopen(handle, "wb") as out, open(src, "rb") as original:
            shutil.copyfileobj(original, out)
            out.write(b"\0")
        self._corrupted = [*self._corrupted, path]
        return path
