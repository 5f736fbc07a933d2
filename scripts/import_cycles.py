#!/usr/bin/env python3
"""Checks that no module of a crate imports, directly or through others, a module that imports
it back (`crate::a` in b.rs and `crate::b` in a.rs, or longer loops). A module is a file under
`src/`; `foo/mod.rs` is `foo`. A path `crate::a::b::c` counts as an import of the deepest module
it names that exists. `use super::*` in a `#[cfg(test)] mod tests` block is ignored (tests sit in
the module they test). Exits 1 and prints every cycle found.

    python3 scripts/import_cycles.py [CRATE_SRC_DIR...]   (default: src/ and crates/*/src)
"""
import glob
import os
import re
import sys


def modules(src):
    mods = {}
    for path in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, src)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel in (["lib"], ["main"]):
            rel = []
        mods[tuple(rel)] = path
    return mods


def strip_tests(text):
    # Drop `#[cfg(test)] mod tests { ... }` blocks: their `super::*` is not an import cycle.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    out.append(text[i:])
    return "".join(out)


def imports(mod, text, mods):
    text = re.sub(r"//[^\n]*", "", strip_tests(text))
    found = set()
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", text):
        head, parts = m.group(1), m.group(2).split("::")[1:]
        if head == "crate":
            base = []
        elif head == "super":
            base = list(mod[:-1])
            while parts and parts[0] == "super":
                base, parts = base[:-1], parts[1:]
        else:
            base = list(mod)
        path = base + parts
        # the deepest existing module named by the path
        for n in range(len(path), -1, -1):
            if tuple(path[:n]) in mods:
                target = tuple(path[:n])
                break
        if target != mod and target != ():
            found.add(target)
    return found


def cycles(src):
    mods = modules(src)
    graph = {m: imports(m, open(p).read(), mods) for m, p in mods.items()}
    # Importing a child module from its parent (`mod a; use a::X`) is a declaration, not a
    # cycle; only sibling and cross-module edges count, so drop edges to a module's own parent.
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not (len(t) < len(m) and m[: len(t)] == t)}
    found, color, stack = [], {}, []

    def visit(m):
        color[m] = 1
        stack.append(m)
        for t in graph.get(m, ()):
            if color.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif color.get(t) is None:
                visit(t)
        stack.pop()
        color[m] = 2

    for m in graph:
        if color.get(m) is None:
            visit(m)
    return found


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    srcs = sys.argv[1:] or [os.path.join(root, "src")] + sorted(glob.glob(os.path.join(root, "crates", "*", "src")))
    bad = False
    for src in srcs:
        for c in cycles(src):
            bad = True
            print(f"{os.path.relpath(src, root)}: " + " -> ".join("::".join(m) or "lib" for m in c))
    if not bad:
        print(f"no import cycles in {len(srcs)} crates")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
