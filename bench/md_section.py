#!/usr/bin/env python3
"""Marked sections of a Markdown report, `<!-- NAME:begin … -->` … `<!-- NAME:end -->`: each is
written by one bench script and kept as it is by the others.

As a module: `find(text, name)` gives the section (markers included) or None; `put(text, name,
section)` replaces it, or appends it when the text has none.

As a command: `md_section.py FILE NAME` reads the section from stdin and writes it into FILE
(created when missing).
"""

import re
import sys


def _pattern(name):
    name = re.escape(name)
    return re.compile(rf"<!-- {name}:begin.*?<!-- {name}:end -->", re.S)


def find(text, name):
    """The section NAME of `text`, markers included, or None."""
    m = _pattern(name).search(text)
    return m.group(0) if m else None


def put(text, name, section):
    """`text` with its section NAME replaced by `section`, or with `section` appended."""
    pattern = _pattern(name)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text)
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main(argv):
    if len(argv) != 3:
        print("usage: md_section.py FILE NAME < SECTION", file=sys.stderr)
        return 2
    path, name = argv[1], argv[2]
    section = sys.stdin.read().rstrip("\n")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    with open(path, "w") as f:
        f.write(put(text, name, section))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
