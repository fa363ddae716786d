# Managed by kernelfence.isolation (component_unit). Local changes are overwritten.
"""python3 -I kf-launch.py PROFILE -- BWRAP [ARGS...] -- COMMAND...

Compiles the component's OCI seccomp profile with libseccomp into a BPF program in a memfd
and execs bubblewrap with `--seccomp FD`, so the workload runs under the component's strict
syscall policy even though systemd's filter had to admit the wrapper's own set-up calls.
Fails closed: any problem with the profile stops the service before the workload starts.
"""

import errno
import json
import os
import sys

try:
    import seccomp
except ImportError as exc:
    # Fails closed, naming the package: the workload never starts without its filter.
    sys.exit(f"kf-launch: the Python binding of libseccomp is missing ({exc}). Fix: apt-get "
             "install python3-seccomp (the component_unit role installs it on systemd < 257)")


def main(argv):
    if len(argv) < 4 or argv[1] != "--":
        sys.exit("usage: kf-launch PROFILE -- BWRAP [ARGS...] -- COMMAND...")
    profile_path, command = argv[0], argv[2:]
    with open(profile_path) as handle:
        profile = json.load(handle)
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        sys.exit(f"kf-launch: {profile_path}: only SCMP_ACT_ERRNO default profiles work here")
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(profile.get("defaultErrnoRet",
                                                                     errno.EPERM)))
    unknown = []
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            action = seccomp.ALLOW
        elif rule["action"] == "SCMP_ACT_ERRNO":
            action = seccomp.ERRNO(rule.get("errnoRet", errno.EPERM))
        else:
            sys.exit(f"kf-launch: {profile_path}: unsupported action {rule['action']}")
        args = []
        for arg in rule.get("args") or []:
            if arg["op"] != "SCMP_CMP_MASKED_EQ":
                sys.exit(f"kf-launch: {profile_path}: unsupported comparison {arg['op']}")
            args.append(seccomp.Arg(arg["index"], seccomp.MASKED_EQ, arg["value"],
                                    arg.get("valueTwo", 0)))
        for name in rule["names"]:
            try:
                filt.add_rule(action, name, *args)
            except (RuntimeError, ValueError):
                unknown.append(name)  # not a syscall on this architecture or libseccomp
    fd = os.memfd_create("kf-seccomp", 0)
    with os.fdopen(fd, "wb", closefd=False) as out:
        filt.export_bpf(out)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    if unknown:
        names = " ".join(sorted(unknown)[:20])
        print(f"kf-launch: {len(unknown)} names not known here: {names}", file=sys.stderr)
    os.execv(command[0], [command[0], "--seccomp", str(fd), *command[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
