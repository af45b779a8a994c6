#!/usr/bin/env python3
"""Issue 19's size rules for production Rust code: no file over 600 lines of code (blank and
comment-only lines and the `#[cfg(test)]` module at the end do not count), no function over
100 lines (from its `fn` line to its closing brace). Prints every offender and exits 1 if any.

Usage: scripts/layout-check.py [--max-file N] [--max-fn N] [DIR ...]
(default: the src/ of every crate in the workspace except the fuzz targets).
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FN = re.compile(
    r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)"
)
CHAR = re.compile(r"'(\\.|\\x[0-9a-fA-F]{2}|\\u\{[0-9a-fA-F]+\}|[^\\'])'")


def code_only(line):
    """The line without the contents of string and char literals and without a `//` comment,
    so that braces inside them are not counted."""
    line = CHAR.sub("''", line)
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
            continue
        if line.startswith("//", i):
            break
        out.append(c)
        i += 1
    return "".join(out)


def production_lines(text):
    """The lines before the test module (`#[cfg(test)]` followed by `mod …`)."""
    lines = text.split("\n")
    for i, l in enumerate(lines):
        if l.strip() == "#[cfg(test)]" and i + 1 < len(lines):
            if re.match(r"\s*(pub\s+)?mod\s+\w+", lines[i + 1]):
                return lines[:i]
    return lines


def code_lines(lines):
    n, in_block = 0, False
    for l in lines:
        s = l.strip()
        if in_block:
            in_block = "*/" not in s
            continue
        if s.startswith("/*"):
            in_block = "*/" not in s
            continue
        if s and not s.startswith("//"):
            n += 1
    return n


def functions(lines):
    """(name, first line, length in lines) of every fn with a body."""
    found = []
    for i, l in enumerate(lines):
        m = FN.match(l)
        if not m:
            continue
        depth, opened = 0, False
        for j in range(i, len(lines)):
            s = code_only(lines[j])
            if not opened and depth == 0 and s.rstrip().endswith(";"):
                break  # a declaration without a body (a trait method)
            for c in s:
                if c == "{":
                    depth += 1
                    opened = True
                elif c == "}":
                    depth -= 1
            if opened and depth <= 0:
                found.append((m.group(7), i + 1, j - i + 1))
                break
    return found


def crate_sources():
    dirs = set()
    for pattern in ("*/src", "*/*/src"):
        for d in ROOT.glob(pattern):
            parts = d.relative_to(ROOT).parts
            if d.is_dir() and "fuzz" not in parts and "target" not in parts and parts[0][0] != ".":
                dirs.add(d)
    return sorted(dirs)


def main(argv):
    max_file, max_fn, dirs = 600, 100, []
    it = iter(argv)
    for a in it:
        if a == "--max-file":
            max_file = int(next(it))
        elif a == "--max-fn":
            max_fn = int(next(it))
        else:
            dirs.append(Path(a).resolve())
    bad = []
    for d in dirs or crate_sources():
        for f in sorted(d.rglob("*.rs")):
            if "tests" in f.relative_to(d).parts or f.name.endswith("_tests.rs"):
                continue
            lines = production_lines(f.read_text())
            rel = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
            n = code_lines(lines)
            if n > max_file:
                bad.append(f"{rel}: {n} lines of code (max {max_file})")
            for name, at, length in functions(lines):
                if length > max_fn:
                    bad.append(f"{rel}:{at}: fn {name} is {length} lines (max {max_fn})")
    for b in bad:
        print(b)
    print(f"layout-check: {len(bad)} over the limits" if bad else "layout-check: ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
