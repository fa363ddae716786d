# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the isolation of running processes from the kernel (/proc), per process and per thread.

Nothing here trusts configuration: credentials, the five capability sets, NoNewPrivs and seccomp
come from each thread's `status`, namespaces from the `ns/*` links (compared with PID 1's),
the executable from the `exe` link (hashed, its `security.capability` xattr decoded).

The reader takes a root (default /proc) so tests point it at a recorded tree. A recorded tree
has the same layout, except that links are regular files holding the link text (`exe`,
`ns/<name>`), and the executable's digest and file capabilities, which cannot be copied, are
recorded beside it as `exe.sha256` and `exe.security.capability` (raw xattr bytes).

Processes exit while they are scanned: a process whose directory disappears is reported as
vanished, never as an error. A field the running kernel does not have (Seccomp_filters before
5.9, a namespace type it lacks) is None and listed in `missing`.

Capability sets come in two formats. By default each set is a list of names. With `compact`
(a host-wide scan, where the names are most of the report), a set that holds every capability
the running kernel has is the word ALL_CAPS ("all"), an empty set the word NO_CAPS ("none"),
and any other set a list of names. "Every capability the kernel has" is bits 0 to
`<root>/sys/kernel/cap_last_cap` of the target, not the name table (a newer kernel has more
capabilities than the table names; they show as cap_N) and not PID 1's bounding set (reduced
in a container); when cap_last_cap cannot be read no set is called "all". Either way each
record also has `capability_masks`: the raw hex masks as the kernel shows them, and
`capability_names` turns a record of either format back into names.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import struct

from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    CAPABILITIES,
)

CAP_SETS = {"CapInh": "inheritable", "CapPrm": "permitted", "CapEff": "effective",
            "CapBnd": "bounding", "CapAmb": "ambient"}
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}
CAP_XATTR = "security.capability"

# vfs_cap_data (linux/capability.h): magic_etc, then (permitted, inheritable) u32 pairs.
VFS_CAP_REVISION_MASK = 0xFF000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
VFS_CAP_REVISIONS = {0x01000000: 1, 0x02000000: 2, 0x03000000: 2}


ALL_CAPS = "all"
NO_CAPS = "none"


class Vanished(Exception):
    """The process (or thread) exited while it was being read."""


_CAP_NAMES_CACHE: dict[int, list[str]] = {}


def cap_names(mask: int) -> list[str]:
    """Capability names of the bits set in mask; bits the table does not know become cap_N.

    The same few masks recur on every process of a host: the lists are cached per mask and
    shared, so callers must not modify them.
    """
    cached = _CAP_NAMES_CACHE.get(mask)
    if cached is not None:
        return cached
    key = mask
    names = []
    bit = 0
    while mask:
        if mask & 1:
            names.append(f"CAP_{CAPABILITIES[bit]}" if bit < len(CAPABILITIES) else f"cap_{bit}")
        mask >>= 1
        bit += 1
    if len(_CAP_NAMES_CACHE) < 4096:
        _CAP_NAMES_CACHE[key] = names
    return names


def read_cap_last_cap(root: str = "/proc") -> int | None:
    """The highest capability number the kernel behind a /proc root knows (None: unreadable)."""
    text = _read_text(f"{root.rstrip('/')}/sys/kernel/cap_last_cap")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def capability_names(record: dict, cap_set: str) -> list[str] | None:
    """A thread or process record's capability set as names, whichever format it is in.

    The raw mask decides when the record has it; a record without masks must list names or
    say "none" (an "all" without its mask cannot be expanded: ValueError names the set).
    None: the kernel does not show the set.
    """
    mask = (record.get("capability_masks") or {}).get(cap_set)
    if mask is not None:
        return cap_names(int(mask, 16))
    value = (record.get("capabilities") or {}).get(cap_set)
    if value is None or isinstance(value, list):
        return value
    if value == NO_CAPS:
        return []
    raise ValueError(f"capabilities.{cap_set} is {value!r} without capability_masks.{cap_set}; "
                     "Fix: keep the masks the scan returns beside the compact sets")


def decode_file_caps(raw: bytes) -> dict:
    """The `security.capability` xattr as names: permitted, inheritable, effective flag, rootid."""
    if len(raw) < 4:
        raise ValueError(f"security.capability is {len(raw)} bytes, too short for vfs_cap_data")
    (magic,) = struct.unpack_from("<I", raw, 0)
    revision = magic & VFS_CAP_REVISION_MASK
    words = VFS_CAP_REVISIONS.get(revision)
    if words is None:
        raise ValueError(f"security.capability has unknown revision 0x{revision:08x}")
    if len(raw) < 4 + 8 * words:
        raise ValueError(f"security.capability revision {revision >> 24} is truncated "
                         f"({len(raw)} bytes)")
    permitted = inheritable = 0
    for i in range(words):
        perm, inh = struct.unpack_from("<II", raw, 4 + 8 * i)
        permitted |= perm << (32 * i)
        inheritable |= inh << (32 * i)
    result = {"version": revision >> 24, "permitted": cap_names(permitted),
              "inheritable": cap_names(inheritable),
              "effective": bool(magic & VFS_CAP_FLAGS_EFFECTIVE), "rootid": None}
    if revision == 0x03000000 and len(raw) >= 4 + 8 * words + 4:
        (result["rootid"],) = struct.unpack_from("<I", raw, 4 + 8 * words)
    return result


# The status fields the reader uses; one regex pass is much cheaper than splitting ~60 lines.
STATUS_FIELDS = ("Name", "PPid", "Threads", "Uid", "Gid", "Groups", "NoNewPrivs", "Seccomp",
                 "Seccomp_filters", *CAP_SETS)
_FIELD_ALTERNATION = "|".join(STATUS_FIELDS)
STATUS_RE = re.compile(rf"^({_FIELD_ALTERNATION}):[ \t]*(.*)$", re.MULTILINE)


def parse_status(text: str) -> dict[str, str]:
    """The fields of /proc/PID/status the reader uses (absent ones are absent)."""
    return {key: value.strip() for key, value in STATUS_RE.findall(text)}


def _ids(value: str | None) -> dict | None:
    if value is None:
        return None
    real, effective, saved, fs = (int(v) for v in value.split())
    return {"real": real, "effective": effective, "saved": saved, "fs": fs}


def thread_isolation(fields: dict[str, str], compact: bool = False,
                     full_mask: int | None = None) -> dict:
    """Credentials, capabilities, NoNewPrivs and seccomp of one thread's status fields.

    compact: a full set (equal to full_mask, every capability the kernel has) is "all", an
    empty one "none"; without full_mask only "none" is used. The raw masks are always kept.
    """
    missing = []

    def get(key: str) -> str | None:
        value = fields.get(key)
        if value is None:
            missing.append(key)
        return value

    caps: dict[str, list[str] | str | None] = {}
    masks: dict[str, str | None] = {}
    for key, name in CAP_SETS.items():
        value = get(key)
        masks[name] = value
        if value is None:
            caps[name] = None
            continue
        mask = int(value, 16)
        if compact and mask == 0:
            caps[name] = NO_CAPS
        elif compact and full_mask is not None and mask == full_mask:
            caps[name] = ALL_CAPS
        else:
            caps[name] = cap_names(mask)
    groups = get("Groups")
    nnp = get("NoNewPrivs")
    mode = get("Seccomp")
    filters = get("Seccomp_filters")
    return {
        "uids": _ids(get("Uid")),
        "gids": _ids(get("Gid")),
        "groups": None if groups is None else [int(g) for g in groups.split()],
        "capabilities": caps,
        "capability_masks": masks,
        "no_new_privs": None if nnp is None else nnp == "1",
        "seccomp": {"mode": None if mode is None else SECCOMP_MODES.get(int(mode), mode),
                    "filters": None if filters is None else int(filters)},
        "missing": missing,
    }


def status_key(text: str) -> tuple | None:
    """The part of a status text that thread_isolation depends on (None: not recognisable).

    Most processes of a host share their credentials, capabilities and seccomp state, so the
    parsed result is cached under this key; the memory lines between them are left out.
    """
    find = text.find
    uid = find("\nUid:")
    groups = find("\nGroups:")
    caps = find("\nCapInh:")
    if uid < 0 or groups < 0 or caps < 0:
        return None

    def upto(marker: str, start: int) -> int:
        end = find(marker, start)
        return len(text) if end < 0 else end

    return (text[uid:upto("\nFDSize:", uid)], text[groups:upto("\n", groups + 8)],
            text[caps:upto("\nSpeculation", caps)])


class StatusCache:
    """thread_isolation results by status_key; the results are shared, never modified."""

    def __init__(self, limit: int = 4096, compact: bool = False,
                 full_mask: int | None = None) -> None:
        self.limit = limit
        self.compact = compact
        self.full_mask = full_mask
        self.results: dict[tuple, dict] = {}

    def isolation(self, text: str) -> tuple[dict[str, str], dict]:
        """(the status fields, the thread's isolation) of a status text."""
        key = status_key(text)
        cached = self.results.get(key) if key is not None else None
        if cached is not None:
            return _name_fields(text), cached
        fields = parse_status(text)
        result = thread_isolation(fields, self.compact, self.full_mask)
        if key is not None and len(self.results) < self.limit:
            self.results[key] = result
        return fields, result


def _name_fields(text: str) -> dict[str, str]:
    """Name, PPid and Threads of a status text, without parsing the rest."""
    out = {}
    find = text.find
    if text.startswith("Name:"):
        out["Name"] = text[5:find("\n")].strip()
    for key, tag in (("PPid", "\nPPid:"), ("Threads", "\nThreads:")):
        i = find(tag)
        if i >= 0:
            j = find("\n", i + 1)
            out[key] = (text[i + len(tag):] if j < 0 else text[i + len(tag):j]).strip()
    return out


# Fields whose difference between threads of one process the report calls out.
THREAD_FIELDS = ("uids", "gids", "groups", "capabilities", "no_new_privs", "seccomp")


class ProcReader:
    """Reads processes under root (default /proc); root may be a recorded tree.

    The hot path uses raw os.open/os.read and readlink: a host scan reads about fifteen /proc
    entries per process, and their cost, not Python's, should dominate (see bench/).
    compact: report full and empty capability sets as "all" and "none" (module docstring).
    """

    def __init__(self, root: str = "/proc", compact: bool = False) -> None:
        self.root = root.rstrip("/") or "/"
        self.compact = compact
        self.cap_last_cap = read_cap_last_cap(self.root)
        full_mask = None if self.cap_last_cap is None else (1 << (self.cap_last_cap + 1)) - 1
        self._digests: dict[tuple, tuple[str | None, bytes | None]] = {}
        self._init_ns: dict[str, str | None] | None = None
        self._status = StatusCache(compact=compact, full_mask=full_mask)
        self._cgroups: dict[str, tuple[list[str], str | None]] = {}
        self._shared_ns: dict[tuple, list[str]] = {}

    def pids(self) -> list[int]:
        return sorted(int(name) for name in os.listdir(self.root) if name.isdigit())

    def _read(self, path: str, dir_fd: int | None = None) -> str:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
        try:
            chunks = [os.read(fd, 65536)]
            while len(chunks[-1]) == 65536:
                chunks.append(os.read(fd, 65536))
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")

    def _link(self, path: str, dir_fd: int | None = None) -> tuple[str, bool]:
        """A link's target and True, or the text of the file a recorded tree keeps and False."""
        try:
            return os.readlink(path, dir_fd=dir_fd), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        return self._read(path, dir_fd).strip(), False

    def _open_pid(self, pid: int | str) -> int:
        """A directory fd of /proc/PID: every later read names this process, never a new one
        that reused its PID (reads through it fail with ESRCH once the process is gone)."""
        return os.open(f"{self.root}/{pid}", os.O_RDONLY | os.O_DIRECTORY)

    def namespaces(self, pid: int | str, dir_fd: int | None = None
                   ) -> tuple[dict[str, str | None], list[str]]:
        ids: dict[str, str | None] = {}
        problems = []
        own = dir_fd is None
        if own:
            dir_fd = self._open_pid(pid)
        try:
            for name in NAMESPACES:
                try:
                    ids[name] = self._link("ns/" + name, dir_fd)[0]
                except FileNotFoundError:
                    ids[name] = None
                    problems.append(f"ns/{name}: absent")
                except PermissionError:
                    ids[name] = None
                    problems.append(f"ns/{name}: permission denied")
        finally:
            if own:
                os.close(dir_fd)
        return ids, problems

    def init_namespaces(self) -> dict[str, str | None]:
        if self._init_ns is None:
            self._init_ns = (self.namespaces(1)[0] if os.path.isdir(f"{self.root}/1") else {})
        return self._init_ns

    def _exe_facts(self, exe: str, dir_fd: int | None = None) -> tuple[str | None, bytes | None]:
        """sha256 and raw file capabilities of a live executable, once per distinct file."""
        info = os.stat("exe", dir_fd=dir_fd) if dir_fd is not None else os.stat(exe)
        facts = self._digests.get(_file_key(info))
        if facts is None:
            # A miss opens the file through the same directory fd and caches what it hashed
            # under that open file's own identity, never under the stat above (the process
            # may have exec'd in between).
            fd = os.open("exe", os.O_RDONLY, dir_fd=dir_fd) if dir_fd is not None else \
                os.open(exe, os.O_RDONLY)
            try:
                facts = (_sha256(fd), _getxattr(fd))
                self._digests[_file_key(os.fstat(fd))] = facts
            finally:
                os.close(fd)
        return facts

    def executable(self, pid: int, dir_fd: int | None = None) -> dict | None:
        """Path, sha256 and file capabilities of the process's executable (None: kernel thread)."""
        exe = f"{self.root}/{pid}/exe"
        try:
            target, live = (self._link(exe) if dir_fd is None else self._link("exe", dir_fd))
        except FileNotFoundError:
            return None
        except PermissionError:
            return {"path": None, "sha256": None, "file_capabilities": None,
                    "error": "exe: permission denied"}
        result: dict = {"path": target, "sha256": None, "file_capabilities": None, "error": None}
        if live:
            try:
                result["sha256"], raw = self._exe_facts(exe, dir_fd)
            except OSError as exc:
                result["error"] = f"exe: {os.strerror(exc.errno or 0)}"
                return result
        else:
            result["sha256"] = _read_text(exe + ".sha256")
            raw = _read_bytes(f"{exe}.{CAP_XATTR}")
        if raw is not None:
            try:
                result["file_capabilities"] = decode_file_caps(raw)
            except ValueError as exc:
                result["error"] = str(exc)
        return result

    def process(self, pid: int) -> dict:
        """Everything the scan reports about one process; raises Vanished if it exited.

        The process's own fields are its main thread's; `threads` holds the other threads.
        """
        try:
            dfd = self._open_pid(pid)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise Vanished(pid) from exc
        try:
            return self._process(pid, dfd)
        finally:
            os.close(dfd)

    def _process(self, pid: int, dfd: int) -> dict:
        try:
            status, main = self._status.isolation(self._read("status", dfd))
            # One thread (the common case): no need to list task/.
            tids = [pid] if status.get("Threads") == "1" else _tids(dfd)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise Vanished(pid) from exc
        threads = []
        if len(tids) > 1:
            for tid in sorted(tids):
                if tid == pid:
                    continue
                try:
                    fields, shared = self._status.isolation(
                        self._read(f"task/{tid}/status", dfd))
                except (FileNotFoundError, ProcessLookupError):
                    continue  # a thread that exited since the listing
                entry = dict(shared)
                entry["tid"] = tid
                entry["name"] = fields.get("Name")
                threads.append(entry)
        ns, problems = self.namespaces(pid, dfd)
        try:
            cgroup_text = self._read("cgroup", dfd)
            exe = self.executable(pid, dfd)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise Vanished(pid) from exc
        if (problems or exe is None) and not _alive(dfd):
            raise Vanished(pid)  # links vanish with the process: do not report them as absent
        cgroup = self._cgroups.get(cgroup_text)
        if cgroup is None:
            lines = cgroup_text.strip().splitlines()
            cgroup = self._cgroups[cgroup_text] = (lines, unit_of_cgroup(lines))
        ns_key = tuple(ns.values())
        shared_ns = self._shared_ns.get(ns_key)
        if shared_ns is None:
            init_ns = self.init_namespaces()
            shared_ns = self._shared_ns[ns_key] = sorted(
                name for name, value in ns.items()
                if value is not None and init_ns.get(name) == value)
        differing = sorted({field for t in threads for field in THREAD_FIELDS
                            if t[field] != main[field]})
        return {
            "pid": pid, "name": status.get("Name"), "ppid": _int(status.get("PPid")),
            **{k: main[k] for k in THREAD_FIELDS},
            "capability_masks": main["capability_masks"],
            "missing": main["missing"],
            "namespaces": ns,
            "namespaces_shared_with_init": shared_ns,
            "cgroup": cgroup[0],
            "unit": cgroup[1],
            "exe": exe,
            "threads": threads,
            "threads_differ": differing,
            "problems": problems,
        }

    def scan(self, pids: list[int] | None = None) -> dict:
        """Every process in pids (all when None); exits during the scan land in vanished."""
        processes, vanished = [], []
        for pid in self.pids() if pids is None else pids:
            try:
                processes.append(self.process(pid))
            except Vanished:
                vanished.append(pid)
        return {"processes": processes, "vanished": vanished}


def cgroup_pids(control_group: str, cgroup_root: str = "/sys/fs/cgroup") -> list[int]:
    """PIDs in a cgroup v2 (systemctl's ControlGroup=, e.g. /system.slice/x.service) and below."""
    base = os.path.join(cgroup_root, control_group.lstrip("/"))
    pids: set[int] = set()
    for dirpath, _dirs, files in os.walk(base):
        if "cgroup.procs" in files:
            pids.update(int(p) for p in (_read_text(os.path.join(dirpath, "cgroup.procs"))
                                         or "").split())
    return sorted(pids)


def unit_pids(run, systemctl: str, unit: str,
              cgroup_root: str = "/sys/fs/cgroup") -> tuple[list[int], str | None]:
    """PIDs of a unit's processes and its control group, asking systemd where the cgroup is.

    run is AnsibleModule.run_command (or anything with its signature). An inactive unit has no
    control group: ([], None).
    """
    rc, out, err = run([systemctl, "show", "--property=ControlGroup", "--value", unit])
    if rc != 0:
        raise ValueError(f"systemctl show {unit} failed: {err.strip()}")
    control_group = out.strip()
    if not control_group:
        return [], None
    return cgroup_pids(control_group, cgroup_root), control_group


def unit_of_cgroup(lines: list[str]) -> str | None:
    """The systemd unit of a process, from its cgroup v2 line (0::/system.slice/x.service)."""
    for line in lines:
        if line.startswith("0::"):
            for part in reversed(line[3:].split("/")):
                if part.endswith((".service", ".scope", ".socket")):
                    return part
    return None


def _alive(dir_fd: int) -> bool:
    """Whether the process behind a /proc/PID directory fd still exists (a recorded tree's
    directory always does)."""
    try:
        os.stat("status", dir_fd=dir_fd)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return True


def _tids(dir_fd: int) -> list[int]:
    """Thread ids of the process behind a /proc/PID directory fd."""
    fd = os.open("task", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        return [int(t) for t in os.listdir(fd)]
    finally:
        os.close(fd)


def _file_key(info: os.stat_result) -> tuple:
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, info.st_ctime_ns)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: os.read(fd, 1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _getxattr(fd: int) -> bytes | None:
    try:
        return os.getxattr(fd, CAP_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
