"""Render each role README's options from its meta/argument_specs.yml, or check they match.

    python3 tools/role_readme.py            # rewrite the generated block of every roles/*/README.md
    python3 tools/role_readme.py --check    # exit 1 naming every stale README (what the test does)
    python3 tools/role_readme.py roles/x    # only these role directories

The spec is the single source of truth: the block between the BEGIN/END markers is generated
and overwritten; everything outside it is written by hand and kept. A README without the
markers gets the block appended (a missing README is created with a title). The check also
reports a defaults/main.yml variable that no entry point documents, or whose value differs from
the spec's default. Needs PyYAML (the controller virtualenv has it through ansible-core).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COLLECTION = "kernelfence.isolation"
BEGIN = "<!-- BEGIN ARGUMENT SPECS -->"
END = "<!-- END ARGUMENT SPECS -->"
REGENERATE = "python3 tools/role_readme.py"
# Ansible doc markup: C(code), O(option), V(value), E(env), M(module), P(plugin) become code;
# I() italics, B() bold, U(url), L(text,url). Nested parentheses do not occur in specs.
MARKUP = re.compile(r"\b([CIBUMOVEPL])\(([^()]*)\)")
ADJACENT_CODE = re.compile(r"\b[COVE]\(([^()]*)\)[COVE]\(([^()]*)\)")


def role_dirs(roles_root: Path = REPO / "roles") -> list[Path]:
    """Every role directory (any directory with a tasks/ or meta/ folder), sorted by name."""
    return sorted(p for p in roles_root.iterdir()
                  if p.is_dir() and ((p / "tasks").is_dir() or (p / "meta").is_dir()))


def load_specs(role: Path) -> dict[str, Any]:
    spec_file = role / "meta" / "argument_specs.yml"
    if not spec_file.is_file():
        raise FileNotFoundError(f"{spec_file}: missing; every role documents its variables there")
    data = yaml.safe_load(spec_file.read_text()) or {}
    specs = data.get("argument_specs")
    if not isinstance(specs, dict) or not specs:
        raise ValueError(f"{spec_file}: no argument_specs entry points")
    return specs


def _paragraphs(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value] if value else []
    return [" ".join(str(item).split()) for item in items]


def _markdown(text: str, *, in_table: bool) -> str:
    """Ansible markup to Markdown; '<' and '>' escaped outside code, '|' escaped in tables."""
    while ADJACENT_CODE.search(text):  # C(a)C(b): one code span, not `a``b`
        text = ADJACENT_CODE.sub(r"C(\1\2)", text)
    out, pos = [], 0
    for match in MARKUP.finditer(text):
        out.append(_plain(text[pos:match.start()]))
        kind, body = match.groups()
        if kind in "CMOVEP":
            out.append(f"`{body}`")
        elif kind == "I":
            out.append(f"*{_plain(body)}*")
        elif kind == "B":
            out.append(f"**{_plain(body)}**")
        elif kind == "U":
            out.append(f"<{body}>")
        else:  # L(text,url)
            label, _, url = body.partition(",")
            out.append(f"[{_plain(label.strip())}]({url.strip()})")
        pos = match.end()
    out.append(_plain(text[pos:]))
    rendered = "".join(out)
    return rendered.replace("|", "\\|") if in_table else rendered


def _plain(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _type(option: dict[str, Any]) -> str:
    kind = option.get("type", "str")
    if kind == "list" and option.get("elements"):
        return f"list of {option['elements']}"
    return str(kind)


def _default(option: dict[str, Any]) -> str:
    if "default" not in option:
        return ""
    value = option["default"]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "`\"\"`"
    return "`" + json.dumps(value, separators=(", ", ": ")) + "`"


def _rows(options: dict[str, Any], prefix: str = "") -> Iterable[list[str]]:
    for name, option in options.items():
        option = option or {}
        full = f"{prefix}{name}"
        description = [_markdown(p, in_table=True) for p in _paragraphs(option.get("description"))]
        if option.get("choices"):
            description.append("Choices: " + ", ".join(f"`{c}`" for c in option["choices"]) + ".")
        if option.get("aliases"):
            description.append("Aliases: " + ", ".join(f"`{a}`" for a in option["aliases"]) + ".")
        yield [f"`{full}`", _type(option), "yes" if option.get("required") else "",
               _default(option), "<br><br>".join(description)]
        if option.get("options"):
            separator = "[]." if option.get("type") == "list" else "."
            yield from _rows(option["options"], full + separator)


def render_block(role: Path) -> str:
    """The generated Markdown between the markers, for every entry point of the role."""
    specs = load_specs(role)
    lines = [BEGIN,
             f"<!-- Generated from meta/argument_specs.yml by `{REGENERATE}`. Edit the spec, "
             "not this block. -->", ""]
    for entry, spec in specs.items():
        spec = spec or {}
        lines.append(f"### Entry point `{entry}`")
        lines.append("")
        if spec.get("short_description"):
            lines += [_markdown(str(spec["short_description"]), in_table=False), ""]
        for paragraph in _paragraphs(spec.get("description")):
            lines += [_markdown(paragraph, in_table=False), ""]
        if entry != "main":
            lines += [f"Use with `tasks_from: {entry}` (`import_role` or `include_role`).", ""]
        options = spec.get("options") or {}
        if not options:
            lines += ["No options.", ""]
            continue
        lines += ["| Option | Type | Required | Default | Description |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in _rows(options)]
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def _title(role: Path) -> str:
    main = load_specs(role).get("main") or {}
    summary = str(main.get("short_description", "")).strip().rstrip(".")
    return f"# {COLLECTION}.{role.name}\n\n" + (f"{summary}.\n\n" if summary else "")


def updated_readme(role: Path) -> str:
    """The README text with its generated block replaced by the one the spec renders now."""
    readme = role / "README.md"
    block = render_block(role)
    if not readme.exists():
        return _title(role) + "## Variables\n\n" + block
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start == -1 or end == -1 or end < start:
        return text.rstrip("\n") + "\n\n## Variables\n\n" + block
    tail = text[end + len(END):]
    return text[:start] + block.rstrip("\n") + tail


def defaults_drift(role: Path) -> list[str]:
    """defaults/main.yml variables the spec does not document or gives another default."""
    defaults_file = role / "defaults" / "main.yml"
    if not defaults_file.is_file():
        return []
    defaults = yaml.safe_load(defaults_file.read_text()) or {}
    documented: dict[str, dict[str, Any]] = {}
    for spec in load_specs(role).values():
        documented.update((spec or {}).get("options") or {})
    problems = []
    for name, value in defaults.items():
        if name.startswith("__"):
            continue
        if name not in documented:
            problems.append(f"{defaults_file.relative_to(role.parent.parent)}: {name} is not "
                            "documented in meta/argument_specs.yml")
        elif ("default" in documented[name] and not (isinstance(value, str) and "{{" in value)
              and documented[name]["default"] != value):
            problems.append(f"{defaults_file.relative_to(role.parent.parent)}: {name} is "
                            f"{value!r} but meta/argument_specs.yml says "
                            f"{documented[name]['default']!r}")
    return problems


def stale_readmes(roles: Iterable[Path]) -> list[str]:
    """One line per role whose README differs from what its spec renders."""
    problems = []
    for role in roles:
        readme = role / "README.md"
        if not readme.exists() or readme.read_text() != updated_readme(role):
            problems.append(f"role {role.name}: {readme.relative_to(role.parent.parent)} is out of "
                            f"date with meta/argument_specs.yml; regenerate: {REGENERATE}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roles", nargs="*", type=Path,
                        help="role directories (default: every role under roles/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a README or defaults/main.yml is stale")
    args = parser.parse_args(argv)
    roles = [r.resolve() for r in args.roles] or role_dirs()
    try:
        return _check(roles) if args.check else _write(roles)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"role_readme: {exc}", file=sys.stderr)
        return 2


def _check(roles: list[Path]) -> int:
    problems = stale_readmes(roles) + [p for r in roles for p in defaults_drift(r)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _write(roles: list[Path]) -> int:
    for role in roles:
        readme = role / "README.md"
        new = updated_readme(role)
        if not readme.exists() or readme.read_text() != new:
            readme.write_text(new)
            print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
