#!/usr/bin/env python3
"""Issue 19's dependency direction inside a crate: no file uses a file that uses it back,
directly or through others (docs/architecture.md, "Dependency direction").

Each `.rs` file under src/ is a node (`a/b.rs` and `a/b/mod.rs` are module `a::b`); an edge
goes from a file to the file of every module its production code names through `crate::…`
(also inside `use crate::{…}` groups) or `super::…`. A path names the deepest module file that
exists (`crate::config::ConfigError` is `config`, `crate::kafka::config::X` is `kafka::config`).
A file's own submodules and its parents are not edges (a parent declares its children; `use
super::*` in a child is the child's business). The test module at the end of a file
(`#[cfg(test)]` then `mod …`) is left out. Any cycle fails the check.

Usage: scripts/deps-check.py [SRC_DIR ...]   (default: the src/ of every workspace crate)
       scripts/deps-check.py --self-test      (the check finds a planted cycle)
"""
import re
import sys
import tomllib
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = re.compile(r"\b(crate|super)::((?:[a-z_0-9]+::)*)(\{[^}]*\}|[A-Za-z_0-9]+)")


def production(text):
    """The text before the test module, without `//` comments."""
    lines = text.split("\n")
    for i, l in enumerate(lines):
        if l.strip() == "#[cfg(test)]" and i + 1 < len(lines):
            if re.match(r"\s*(pub\s+)?mod\s+\w+", lines[i + 1]):
                lines = lines[:i]
                break
    return "\n".join(re.sub(r"//.*", "", l) for l in lines)


def modules(src):
    """Module path → file, for every file under `src` but the crate roots."""
    found = {}
    for f in sorted(src.rglob("*.rs")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts in (["lib"], ["main"]):
            continue
        found["::".join(parts)] = f
    return found


def resolve(parts, mods):
    while parts:
        key = "::".join(parts)
        if key in mods:
            return key
        parts = parts[:-1]
    return None


def edges(mods):
    out = {m: set() for m in mods}
    for mod, f in mods.items():
        here = mod.split("::")
        for root, prefix, tail in PATH.findall(production(f.read_text())):
            base = (here[:-1] if root == "super" else []) + [p for p in prefix.split("::") if p]
            items = tail[1:-1].split(",") if tail.startswith("{") else [tail]
            for item in items:
                name = item.strip().split(" as ")[0].split("::")
                target = resolve(base + [n for n in name if n and n != "self"], mods)
                if target is None or target == mod:
                    continue
                if mod.startswith(target + "::") or target.startswith(mod + "::"):
                    continue  # parent or child
                out[mod].add(target)
    return out


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def check(src):
    graph = edges(modules(src))
    bad = cycles(graph)
    for comp in bad:
        links = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
        print(f"deps-check: {src}: cycle between {', '.join(comp)} ({'; '.join(links)})")
    return not bad


def self_test():
    with tempfile.TemporaryDirectory() as d:
        src = Path(d)
        (src / "a").mkdir()
        (src / "a" / "mod.rs").write_text("pub mod b;\nuse crate::c::Thing;\n")
        (src / "a" / "b.rs").write_text("use super::super::d;\n")
        (src / "c.rs").write_text("pub fn f() { crate::a::b::g(); }\n")
        (src / "d.rs").write_text("use crate::{c, e::X};\n#[cfg(test)]\nmod t { use crate::a; }\n")
        (src / "e.rs").write_text("// crate::a::b is only a comment\n")
        graph = edges(modules(src))
        assert graph["a"] == {"c"}, graph
        assert graph["d"] == {"c", "e"}, graph  # the test module's `crate::a` is not an edge
        assert graph["e"] == set(), graph
        assert cycles(graph) == [], cycles(graph)
        (src / "e.rs").write_text("use crate::d;\npub fn x() { crate::e::y(); }\n")
        (src / "c.rs").write_text("pub fn f() { crate::e::x(); }\n")
        assert cycles(edges(modules(src))) == [["c", "d", "e"]], cycles(edges(modules(src)))
    print("deps-check: self-test ok")


def main(argv):
    if argv == ["--self-test"]:
        self_test()
        return 0
    # Every workspace member, read from Cargo.toml so a new crate is checked without editing
    # this list (a hand-kept list had already missed one).
    with open(ROOT / "Cargo.toml", "rb") as f:
        crates = tomllib.load(f)["workspace"]["members"]
    dirs = [Path(a) for a in argv] or [ROOT / c / "src" for c in crates if (ROOT / c / "src").is_dir()]
    ok = all([check(d) for d in dirs])
    if ok:
        print("deps-check: ok (no file uses a file that uses it back)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
