"""Build the collection tarball, install it into a scratch path, and load its FQCN playbooks."""

from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from .common import REPO, HarnessError, log, run
from .setup import tool_env, venv_dir

# Files a built collection must carry, and files it must never carry.
REQUIRED = ["MANIFEST.json", "FILES.json", "meta/runtime.yml", "playbooks/site.yml",
            "README.md"]
FORBIDDEN_PREFIXES = ("molecule/", "tests/", "tools/", ".ci/", ".collections/", "bench/",
                      "demo/")


def main() -> int:
    env = tool_env()
    work = Path(tempfile.mkdtemp(prefix="kf-galaxy-"))
    try:
        run([str(venv_dir() / "bin/ansible-galaxy"), "collection", "build", "--output-path",
             str(work), str(REPO)], env=env, timeout=300)
        tarballs = list(work.glob("kernelfence-isolation-*.tar.gz"))
        if len(tarballs) != 1:
            raise HarnessError(f"expected one tarball, found {tarballs}")
        with tarfile.open(tarballs[0]) as tar:
            names = set(tar.getnames())
        missing = [name for name in REQUIRED if name not in names]
        leaked = sorted(name for name in names if name.startswith(FORBIDDEN_PREFIXES))
        if missing or leaked:
            raise HarnessError(f"tarball content wrong: missing {missing}, "
                               f"should not ship {leaked}")
        target = work / "collections"
        # Outside the checkout: without its ansible.cfg, whose collections path holds the
        # checkout itself (galaxy would call the collection installed already).
        scratch_env = dict(env, ANSIBLE_COLLECTIONS_PATH=str(target))
        scratch_env.pop("ANSIBLE_CONFIG", None)
        run([str(venv_dir() / "bin/ansible-galaxy"), "collection", "install", "--offline",
             "-p", str(target), str(tarballs[0])], env=scratch_env, cwd=work, timeout=300)
        if not (target / "ansible_collections/kernelfence/isolation/MANIFEST.json").exists():
            raise HarnessError(f"the tarball did not install into {target}")
        # Load the installed playbook by its FQCN.
        run([str(venv_dir() / "bin/ansible-playbook"), "--syntax-check", "-i", "localhost,",
             "kernelfence.isolation.site"], env=scratch_env, cwd=work, timeout=300)
        log(f"built and installed {tarballs[0].name} ({len(names)} members)")
        return 0
    except HarnessError as exc:
        print(f"galaxy: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
