"""Tests of md_section.py: `python3 -m unittest discover -s bench -p 'test_*.py'`."""

import os
import subprocess
import sys
import tempfile
import unittest

import md_section

HERE = os.path.dirname(os.path.abspath(__file__))
OLD = "<!-- scale-out:begin (old) -->\nold rows\n<!-- scale-out:end -->"
NEW = "<!-- scale-out:begin (new) -->\nnew rows\n<!-- scale-out:end -->"


class SectionTest(unittest.TestCase):
    def test_find_gives_the_section_with_its_markers(self):
        text = f"# Report\n\n{OLD}\n\nafter\n"
        self.assertEqual(md_section.find(text, "scale-out"), OLD)
        self.assertIsNone(md_section.find(text, "status-path"))

    def test_put_replaces_only_its_own_section(self):
        other = "<!-- status-path:begin -->\nkept\n<!-- status-path:end -->"
        text = f"# Report\n\n{other}\n\n{OLD}\n\nafter\n"
        self.assertEqual(
            md_section.put(text, "scale-out", NEW), f"# Report\n\n{other}\n\n{NEW}\n\nafter\n"
        )

    def test_put_appends_a_missing_section(self):
        self.assertEqual(md_section.put("# Report\n\n", "scale-out", NEW), f"# Report\n\n{NEW}\n")

    def test_command_creates_then_replaces(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "B.md")
            for section in (OLD, NEW):
                done = subprocess.run(
                    [sys.executable, os.path.join(HERE, "md_section.py"), path, "scale-out"],
                    input=section + "\n",
                    text=True,
                )
                self.assertEqual(done.returncode, 0)
            with open(path) as f:
                self.assertEqual(f.read(), f"\n\n{NEW}\n")


if __name__ == "__main__":
    unittest.main()
