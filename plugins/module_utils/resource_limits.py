# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resource limits as data beside the hardening profiles: what each profile may consume, why,
and the checks that refuse a limit before anything on the host changes.

A compromised component must not starve, evict or fill up the others. Every profile gets
memory (`MemoryMax=`, `MemoryHigh=`, `MemorySwapMax=`, `MemoryLow=`), tasks, CPU and IO weights,
file descriptors, no core dumps and an OOM score, a size-bounded tmpfs for its scratch space
(/tmp, /var/tmp, /dev/shm; tmpfs pages are charged to the cgroup that writes them, so they count
against its own `MemoryMax=`) and a size-bounded file system image for each persistent writable
path (see `storage_mounts`). Sizes use systemd's own syntax and are passed through unchanged:
absolute with K, M, G or T (base 1024), or, for the memory limits, a percentage of the host's
memory.

The defaults fit a 2 GiB host running the example workloads (the demo components are Python
services of about 20 MiB resident; the executor's `cargo audit --no-fetch` over a local advisory
database stays well below 100 MiB). A real model backend holding its weights needs a larger
`memory_max` and `memory_low`: set them per component.
"""

from __future__ import annotations

import re

# model field -> systemd directive (the unit's [Service] section), in rendering order.
DIRECTIVES = {
    "memory_low": "MemoryLow",
    "memory_high": "MemoryHigh",
    "memory_max": "MemoryMax",
    "memory_swap_max": "MemorySwapMax",
    "tasks_max": "TasksMax",
    "cpu_weight": "CPUWeight",
    "cpu_quota": "CPUQuota",
    "io_weight": "IOWeight",
    "limit_nofile": "LimitNOFILE",
    "oom_score_adjust": "OOMScoreAdjust",
}
# Fields rendered as mounts rather than as one directive.
MOUNT_FIELDS = ("tmp_size", "state_size", "log_size")
FIELDS = (*DIRECTIVES, *MOUNT_FIELDS)
# Fields that may be null (not rendered): the rest always have a value.
OPTIONAL = ("memory_low", "memory_high", "cpu_quota", "state_size", "log_size")

# Rendered for every component; not a model field. A core dump of the orchestrator would write
# its keys to disk, one of any component its peers' data it held in memory.
FIXED = [("LimitCORE", "0", "no core dumps: a dump writes the process's memory (keys, "
          "prompts, peers' data) to disk")]

# Resource directives a component may not set through `directives` (the model field to use).
REFUSED_DIRECTIVES = {
    **{directive: f"resources.{field}" for field, directive in DIRECTIVES.items()},
    "MemoryLimit": "resources.memory_max", "MemoryMin": "resources.memory_low",
    "CPUShares": "resources.cpu_weight", "StartupCPUWeight": "resources.cpu_weight",
    "BlockIOWeight": "resources.io_weight", "StartupIOWeight": "resources.io_weight",
    "LimitNPROC": "resources.tasks_max", "TemporaryFileSystem": "resources.tmp_size",
    "MemoryAccounting": "resources.memory_max", "TasksAccounting": "resources.tasks_max",
    "LimitCORE": None,
}

# Floors below which the example workloads cannot run (checked for absolute values).
# Tasks: the demo services are single-threaded Python, but the executor's tools are not: cargo
# audit starts a thread pool of one worker per CPU plus its runtime's helper threads, git (an
# advisory-database fetch) forks helpers, and under systemd < 257 bubblewrap and the launcher
# count too. 32 leaves room for a 16-CPU host's pool; below it a tool fails with EAGAIN from
# clone(), which looks like a crash, not a limit.
MIN_TASKS = 32
# Descriptors: a Python service with its socket, pipes to one subprocess and the files the
# interpreter's imports keep open uses about 30; cargo audit reads the advisory database's
# files one by one but keeps its lock file, the git pack index and the report open. 256 is a
# quarter of the kernel's customary 1024 and leaves the tools their margin.
MIN_NOFILE = 256
# Memory: the Python interpreter with ssl and json imported is 18 MiB resident (measured);
# below 64 MiB a component is killed while it starts.
MIN_MEMORY = 64 * 1024 ** 2
# A file system image smaller than this has no room for ext4's journal and metadata.
MIN_IMAGE = 16 * 1024 ** 2

# Per profile: field -> (value, why). Rendered as a comment above each directive in the unit
# and listed in the role README.
PROFILE_DEFAULTS: dict[str, dict[str, tuple[object, str]]] = {
    "orchestrator": {
        "memory_low": (None, "nothing to keep resident beyond the kernel's default"),
        "memory_high": ("320M", "throttled and reclaimed before the hard limit"),
        "memory_max": ("384M", "plans and holds keys; a runaway is stopped inside its own "
                               "cgroup, never by the global OOM killer"),
        "memory_swap_max": ("0", "keys never go to swap"),
        "tasks_max": (256, "starts the jobs: room for its workers, bounded against a fork loop"),
        "cpu_weight": (200, "scheduling the work comes before running it"),
        "cpu_quota": (None, "no hard cap: the weights share the CPU under contention"),
        "io_weight": (200, "its state writes come before the executor's"),
        "limit_nofile": (4096, "one descriptor per job and peer connection"),
        "oom_score_adjust": (-500, "killed last, with the model backend (set before the "
                                   "privileges are dropped)"),
        "tmp_size": ("32M", "scratch only; its state lives in its state directory"),
        "state_size": ("64M", "job results and its own state; a full disk stops only it"),
        "log_size": ("32M", "its log directory; journald's disk is not shared"),
    },
    "executor": {
        "memory_low": (None, "nothing to protect: it is the first to give memory back"),
        "memory_high": ("496M", "reclaim starts just below the hard limit; further below, "
                                "the kernel's throttling would stall a hog for minutes "
                                "before the kill"),
        "memory_max": ("512M", "runs untrusted-input tools; a hog is killed inside this "
                               "cgroup, not by the global OOM killer"),
        "memory_swap_max": ("0", "a hog cannot spill into swap and slow the host down"),
        "tasks_max": (128, "tools' thread pools and helpers fit; a fork loop stops here"),
        "cpu_weight": (25, "a busy tool yields the CPU to the orchestrator and model backend"),
        "cpu_quota": (None, "no hard cap: idle CPU stays usable by the tools"),
        "io_weight": (25, "its disk traffic yields to the other components"),
        "limit_nofile": (1024, "a tool's usual limit; a descriptor loop ends at EMFILE"),
        "oom_score_adjust": (500, "the likeliest to be compromised is sacrificed first"),
        "tmp_size": ("64M", "scratch for the tools; full ends in ENOSPC, counted against "
                            "memory_max"),
        "state_size": ("128M", "workspace and advisory database copies; full ends in ENOSPC "
                               "for the executor only"),
        "log_size": ("32M", "its log directory; journald's disk is not shared"),
    },
    "model_backend": {
        "memory_low": ("256M", "the weights stay resident when the others press on memory"),
        "memory_high": (None, "no throttling: an answer must not stall on reclaim"),
        "memory_max": ("768M", "holds the weights; raise it (and memory_low) to the model's "
                               "size"),
        "memory_swap_max": ("0", "weights in swap would make every answer slow"),
        "tasks_max": (64, "a serving process and its workers"),
        "cpu_weight": (400, "answers stay fast while the executor spins"),
        "cpu_quota": (None, "no hard cap: an answer may use every idle CPU"),
        "io_weight": (200, "loading the weights comes before the executor's writes"),
        "limit_nofile": (4096, "weight shards and client connections"),
        "oom_score_adjust": (-500, "killed last: a compromised peer cannot get it evicted"),
        "tmp_size": ("16M", "needs no scratch space"),
        "state_size": ("32M", "its weights are read-only; only a little state"),
        "log_size": ("16M", "its log directory; journald's disk is not shared"),
    },
    "custom": {
        "memory_low": (None, "nothing to keep resident beyond the kernel's default"),
        "memory_high": ("192M", "throttled and reclaimed before the hard limit"),
        "memory_max": ("256M", "a bounded default; set it to the service's need"),
        "memory_swap_max": ("0", "no spill into swap"),
        "tasks_max": (64, "a service and its helpers; a fork loop stops here"),
        "cpu_weight": (100, "systemd's default share"),
        "cpu_quota": (None, "no hard cap"),
        "io_weight": (100, "systemd's default share"),
        "limit_nofile": (1024, "a service's usual limit"),
        "oom_score_adjust": (0, "the kernel's default order"),
        "tmp_size": ("32M", "scratch only"),
        "state_size": ("64M", "its state; full ends in ENOSPC for it only"),
        "log_size": ("32M", "its log directory; journald's disk is not shared"),
    },
}

SIZE_RE = re.compile(r"^([0-9]+(?:[.][0-9]+)?)([KMGT]?)$")
PERCENT_RE = re.compile(r"^([0-9]+(?:[.][0-9]{1,2})?)%$")
UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


class ResourceError(ValueError):
    """A resource value the model refuses: (field, problem, fix)."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.fix = field, problem, fix


def parse_size(field: str, value: object, percent: bool = True,
               infinity: bool = True) -> tuple[str, float | None]:
    """('bytes', n), ('percent', p) or ('infinity', None) for a size in systemd's syntax."""
    text = str(value).strip()
    if isinstance(value, bool) or not text:
        raise ResourceError(field, f"{value!r} is not a size", _size_fix(percent))
    if infinity and text == "infinity":
        return "infinity", None
    match = SIZE_RE.match(text)
    if match:
        return "bytes", float(match.group(1)) * UNITS[match.group(2)]
    match = PERCENT_RE.match(text)
    if match and percent:
        pct = float(match.group(1))
        if pct > 100:
            raise ResourceError(field, f"{text} is more than the host's memory",
                                "give a percentage from 0 to 100")
        return "percent", pct
    raise ResourceError(field, f"{value!r} is not a size", _size_fix(percent))


def _size_fix(percent: bool) -> str:
    fix = "give bytes with an optional K, M, G or T suffix (base 1024), e.g. 512M"
    return fix + (", or a percentage of the host's memory such as 25%" if percent else "")


def _int(field: str, value: object, low: int, high: int, fix: str) -> int:
    if isinstance(value, bool) or not re.match(r"^-?[0-9]+$", str(value).strip()):
        raise ResourceError(field, f"{value!r} is not an integer", fix)
    number = int(str(value).strip())
    if not low <= number <= high:
        raise ResourceError(field, f"{number} is out of range", fix)
    return number


def _check_field(field: str, value: object) -> str:
    """The value as the unit gets it, after checking its syntax and its floor."""
    if field in ("memory_max", "memory_high", "memory_low", "memory_swap_max"):
        kind, amount = parse_size(field, value)
        if field == "memory_max" and kind == "bytes" and amount < MIN_MEMORY:
            raise ResourceError(field, f"{value} is below {MIN_MEMORY // 1024 ** 2}M, in "
                                "which a component cannot even start its interpreter",
                                "give at least 64M")
        if field == "memory_swap_max" and kind == "percent":
            raise ResourceError(field, "MemorySwapMax= takes no percentage",
                                "give bytes, e.g. 0 (no swap) or 256M")
        return str(value).strip()
    if field == "tasks_max":
        text = str(value).strip()
        if text == "infinity" or PERCENT_RE.match(text):
            parse_size(field, text)
            return text
        number = _int(field, value, 1, 4194304, "give an integer such as 128, a percentage of "
                      "the host's pid_max, or infinity")
        if number < MIN_TASKS:
            raise ResourceError(field, f"{number} tasks are fewer than the workloads need "
                                f"(cargo audit's thread pool, git's helpers, the wrapper)",
                                f"give at least {MIN_TASKS}")
        return str(number)
    if field in ("cpu_weight", "io_weight"):
        return str(_int(field, value, 1, 10000, "give an integer from 1 to 10000 (100 is "
                        "systemd's default share)"))
    if field == "cpu_quota":
        match = re.match(r"^([0-9]+)%$", str(value).strip())
        if not match or int(match.group(1)) == 0:
            raise ResourceError(field, f"{value!r} is not a CPU quota",
                                "give a percentage of one CPU above 0, e.g. 150% for 1.5 CPUs")
        return str(value).strip()
    if field == "limit_nofile":
        text = str(value).strip()
        soft, _sep, hard = text.partition(":")
        numbers = [_int(field, part, 1, 1 << 30, "give an integer such as 1024, or SOFT:HARD")
                   for part in (soft, hard or soft)]
        if numbers[0] > numbers[1]:
            raise ResourceError(field, f"the soft limit {numbers[0]} is above the hard limit "
                                f"{numbers[1]}", "give SOFT:HARD with SOFT <= HARD")
        if numbers[0] < MIN_NOFILE:
            raise ResourceError(field, f"{numbers[0]} descriptors are fewer than the "
                                "workloads need (sockets, pipes, the tools' open files)",
                                f"give at least {MIN_NOFILE}")
        return text
    if field == "oom_score_adjust":
        return str(_int(field, value, -1000, 1000, "give an integer from -1000 (never killed) "
                        "to 1000 (killed first)"))
    # tmp_size, state_size, log_size: absolute sizes only (a tmpfs and an image have one size).
    kind, amount = parse_size(field, value, percent=False, infinity=False)
    if field == "tmp_size" and amount < 1024 ** 2:
        raise ResourceError(field, f"{value} is below 1M", "give at least 1M")
    if field in ("state_size", "log_size") and amount < MIN_IMAGE:
        raise ResourceError(field, f"{value} is too small for an ext4 file system",
                            "give at least 16M")
    return str(value).strip()


def _compare(values: dict, low: str, high: str) -> None:
    """low <= high when both are absolute, or both percentages."""
    if values.get(low) is None or values.get(high) is None:
        return
    a, b = parse_size(low, values[low]), parse_size(high, values[high])
    if a[0] == b[0] and a[0] != "infinity" and a[1] > b[1]:
        raise ResourceError(low, f"{values[low]} is above {high} {values[high]}",
                            f"give {low} at most {values[high]}, or raise {high}")


def normalize_resources(profile: str, raw: object) -> dict:
    """The profile's defaults with the component's overrides, checked; the unit's values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ResourceError("", f"{raw!r} is not a mapping", "write e.g. {memory_max: 1G}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ResourceError("", f"unknown field(s) {unknown}", f"use {', '.join(FIELDS)}")
    defaults = PROFILE_DEFAULTS[profile]
    values: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    for field in FIELDS:
        value, reason = defaults[field]
        if field in raw:
            value, reason = raw[field], "set for this component"
        if value is None:
            if field not in OPTIONAL:
                raise ResourceError(field, "cannot be empty",
                                    "give a value, or infinity to lift the limit")
            values[field] = None
        else:
            values[field] = _check_field(field, value)
        reasons[field] = reason
    _compare(values, "memory_high", "memory_max")
    _compare(values, "memory_low", "memory_max")
    _compare(values, "memory_low", "memory_high")
    scratch = parse_size("tmp_size", values["tmp_size"], percent=False)[1] * len(SCRATCH)
    kind, limit = parse_size("memory_max", values["memory_max"])
    if kind == "bytes" and scratch >= limit:
        raise ResourceError("tmp_size", f"{len(SCRATCH)} scratch file systems of "
                            f"{values['tmp_size']} ({', '.join(SCRATCH)}) fill memory_max "
                            f"{values['memory_max']}: a full /tmp would end in the OOM killer, "
                            "not in ENOSPC", "lower tmp_size or raise memory_max")
    return {**values, "reasons": reasons}


# The scratch space of every component: a private tmpfs each, of tmp_size.
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


def scratch_mounts(resources: dict) -> list[str]:
    """TemporaryFileSystem= values: private, size-bounded, no devices or set-uid files.

    PrivateTmp=yes cannot carry a size, and systemd drops a TemporaryFileSystem= on /tmp when
    PrivateTmp=yes mounts the same path (the first mount of a path wins, and PrivateTmp's mode
    sorts first), so the unit sets PrivateTmp=no and mounts these instead: still private to
    the unit, empty at start, gone when it stops.
    """
    size = resources["tmp_size"]
    noexec = {"/dev/shm": ",noexec"}
    return [f"{path}:rw,nosuid,nodev{noexec.get(path, '')},mode=1777,size={size}"
            for path in SCRATCH]


def resource_directives(resources: dict) -> list[tuple[str, str, str]]:
    """(directive, value, why) in rendering order, for every limit that has a value."""
    out = []
    for field, directive in DIRECTIVES.items():
        if resources.get(field) is not None:
            out.append((directive, resources[field], f"resources.{field}: "
                        f"{resources['reasons'][field]}"))
    out += FIXED
    return out


def systemd_escape_path(path: str) -> str:
    """The unit name part of a path, as `systemd-escape --path` writes it."""
    trimmed = path.strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, char in enumerate(trimmed):
        if char == "/":
            out.append("-")
        elif (char.isascii() and (char.isalnum() or char in ":_")) or (char == "." and i > 0):
            out.append(char)
        else:
            out.append("".join(f"\\x{b:02x}" for b in char.encode()))
    return "".join(out)


def storage_mounts(record: dict, image_root: str) -> list[dict]:
    """The size-bounded file systems of one component's persistent writable paths.

    Each path gets its own ext4 image under image_root, mounted on the path by a .mount unit
    (loop device): a full image ends in ENOSPC for this component only, and the host's free
    space never drops by more than the images' sizes (they are allocated when created).
    Paths under /run are memory, not disk: they get a size-bounded tmpfs instead.
    """
    res = record["resources"]
    paths = []
    if res.get("state_size") is not None:
        paths += [(record["state_dir"], res["state_size"])]
        paths += [(p, res["state_size"]) for p in record.get("state_paths") or []]
    if res.get("log_size") is not None:
        paths.append((record["log_dir"], res["log_size"]))
    out = []
    for path, size in paths:
        name = systemd_escape_path(path)
        tmpfs = path == "/run" or path.startswith("/run/")
        out.append({
            "component": record["name"], "path": path, "size": size,
            "bytes": int(parse_size("size", size, percent=False, infinity=False)[1]),
            "unit": f"{name}.mount", "type": "tmpfs" if tmpfs else "ext4",
            "image": None if tmpfs else f"{image_root}/{name}.ext4",
            "owner": record["user"], "group": record["group"],
            "mode": "0750" if path == record["log_dir"] else "0700",
        })
    return out


def mount_unit(mount: dict, uid: int | None = None, gid: int | None = None) -> str:
    """The text of the .mount unit for one bounded path (a tmpfs belongs to the component's
    uid and gid from the moment it is mounted, a boot included: the module resolves them)."""
    if mount["type"] == "tmpfs":
        owner = "" if uid is None or gid is None else f",uid={uid},gid={gid}"
        what = "tmpfs"
        options = f"size={mount['size']},mode={mount['mode']}{owner},nosuid,nodev"
    else:
        what, options = mount["image"], "loop,nosuid,nodev"
    return "\n".join([
        "# Managed by kernelfence.isolation (component_storage). Local changes are overwritten.",
        f"# Size bound of {mount['path']} for component {mount['component']}: "
        f"{mount['size']}; a full file system ends in ENOSPC for this component only.",
        "[Unit]",
        f"Description=kernelfence size-bounded {mount['path']} of {mount['component']}",
        # Default dependencies: after local-fs-pre.target, so after the root file system (which
        # holds the image) is remounted read-write; before local-fs.target.
        *([f"RequiresMountsFor={mount['image']}"] if mount["image"] else []),
        "",
        "[Mount]",
        f"What={what}",
        f"Where={mount['path']}",
        f"Type={mount['type']}",
        f"Options={options}",
        "",
        "[Install]",
        "WantedBy=local-fs.target",
    ]) + "\n"


# What each field means, for the role README (roles/component_model/meta/argument_specs.yml
# carries field_doc()'s text; tests/unit/test_resource_limits.py keeps the two equal).
FIELD_HELP = {
    "memory_low": "C(MemoryLow=): memory kept resident under pressure from the others.",
    "memory_high": "C(MemoryHigh=): above it the component is throttled and reclaimed.",
    "memory_max": "C(MemoryMax=): the hard limit; above it the OOM killer ends a process of "
                  "this component only.",
    "memory_swap_max": "C(MemorySwapMax=): swap the component may use (bytes only).",
    "tasks_max": f"C(TasksMax=): processes and threads; at least {MIN_TASKS}.",
    "cpu_weight": "C(CPUWeight=): share of the CPU under contention (1-10000; 100 is "
                  "systemd's default).",
    "cpu_quota": "C(CPUQuota=): optional hard cap, a percentage of one CPU (C(150%)).",
    "io_weight": "C(IOWeight=): share of the disk under contention (1-10000).",
    "limit_nofile": f"C(LimitNOFILE=): open file descriptors (C(N) or C(SOFT:HARD)); at least "
                    f"{MIN_NOFILE}.",
    "oom_score_adjust": "C(OOMScoreAdjust=): who the kernel sacrifices first (-1000 to 1000).",
    "tmp_size": "Size of each private tmpfs at C(/tmp), C(/var/tmp) and C(/dev/shm) "
                "(C(TemporaryFileSystem=)); counted against C(memory_max), so the three "
                "together must stay below it.",
    "state_size": "Size of the ext4 image mounted on the state directory and on each of "
                  "C(state_paths) (a size-bounded tmpfs for paths under C(/run)); null keeps "
                  "them on the host's file system.",
    "log_size": "Size of the ext4 image mounted on the log directory; null keeps it on the "
                "host's file system.",
}


def _doc_value(value: object) -> str:
    return "unset" if value is None else f"C({value})"


def field_doc(field: str) -> list[str]:
    """The README description of one resources field: its meaning, then each profile's
    default with the reason (the same reason the unit carries as a comment)."""
    lines = [FIELD_HELP[field]]
    for profile, defaults in PROFILE_DEFAULTS.items():
        value, why = defaults[field]
        lines.append(f"C({profile}): {_doc_value(value)}, {why}.")
    return lines
