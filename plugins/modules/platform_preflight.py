#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: platform_preflight
short_description: Check in one call that a host can run the hardened components
version_added: "0.1.0"
description:
  - Checks first that the host was booted with systemd as its init (the directory
    C(/run/systemd/system) exists, the rule of C(sd_booted(3))); a host that was not is told
    so first, and gets no cgroup advice (its cgroup layout belongs to the other init).
  - Reads systemd's version, the cgroup mount, the kernel's seccomp support, the user namespace
    sysctls (needed by the bubblewrap wrapper on systemd older than 257) and whether
    nftables works (C(nft list tables) when C(nft) is installed, else whether the kernel has
    nf_tables, as the network_policy role installs C(nft)), and fails with one sentence per
    missing requirement naming the fix.
  - Read-only; never reports C(changed). One module call so a fleet rollout pays for it once
    per host.
  - Also checks that the cgroup controllers the components' resource limits need (memory,
    pids, cpu, io) are offered at C(/sys/fs/cgroup/cgroup.controllers); both that file and
    C(cgroup.subtree_control) are returned in RV(facts).
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Reads only; runs the same in check mode.
    support: full
  diff_mode:
    description: Not applicable.
    support: none
  platform:
    description: Linux hosts.
    support: full
    platforms: posix
options:
  nftables:
    description: Require nftables (the network_policy role needs it).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Stop at a host that cannot run the components, before anything changes
  kernelfence.isolation.platform_preflight:
"""

RETURN = r"""
systemd_version:
  description: Major version of systemd.
  returned: always
  type: int
problems:
  description: One sentence per missing requirement (empty when the host is ready).
  returned: always
  type: list
  elements: str
facts:
  description:
    - Raw text of the files read (C(/proc/self/mounts), C(/proc/sys/...)), and
      C(systemd_booted), whether C(/run/systemd/system) exists.
  returned: always
  type: dict
version_output:
  description: The output of C(systemctl --version) (empty when systemctl is not installed).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.platform_preflight import (
    problems,
    read_facts,
    systemd_version,
)


def main():
    module = AnsibleModule(argument_spec={"nftables": {"type": "bool", "default": True}},
                           supports_check_mode=True)
    systemctl = module.get_bin_path("systemctl")
    if systemctl is None:
        rc, version_out, err = 127, "", "systemctl is not installed"
    else:
        rc, version_out, err = module.run_command([systemctl, "--version"])
    facts = read_facts()
    nft_rc, nft_err = 0, ""
    if module.params["nftables"]:
        nft = module.get_bin_path("nft")
        if nft is None:
            nft_rc = None
        else:
            nft_rc, _out, nft_err = module.run_command([nft, "list", "tables"])
    found = problems(facts, version_out if rc == 0 else err, nft_rc, nft_err)
    result = {"changed": False, "systemd_version": systemd_version(version_out) or 0,
              "problems": found, "facts": facts, "version_output": version_out}
    if found:
        module.fail_json(msg="this host cannot run the hardened components: " + " | ".join(found),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
