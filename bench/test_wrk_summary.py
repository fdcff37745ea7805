"""Tests of wrk_summary.py on wrk outputs recorded against local HTTP servers (bench/testdata):
`python3 -m unittest discover -s bench -p 'test_*.py'`."""

import os
import re
import subprocess
import sys
import unittest

import wrk_summary

HERE = os.path.dirname(os.path.abspath(__file__))


def sample(name):
    with open(os.path.join(HERE, "testdata", name)) as f:
        return f.read()


class ParseTest(unittest.TestCase):
    def test_a_clean_run(self):
        run = wrk_summary.parse(sample("wrk-ok.txt"))
        self.assertEqual(run, wrk_summary.WrkRun(1704.13, 1.65, 10.68, 0, 0))

    def test_non_2xx_responses_are_counted(self):
        run = wrk_summary.parse(sample("wrk-non2xx.txt"))
        self.assertEqual((run.requests_per_s, run.non_2xx), (1846.01, 3873))
        self.assertEqual((run.p50_ms, run.p99_ms), (1.23, 9.37))

    def test_socket_timeouts_are_counted(self):
        run = wrk_summary.parse(sample("wrk-timeouts.txt"))
        self.assertEqual((run.requests_per_s, run.timeouts, run.non_2xx), (3.99, 4, 0))
        self.assertEqual(run.p99_ms, 47.96)

    def test_durations_in_every_unit(self):
        self.assertAlmostEqual(wrk_summary.duration_ms("812.00us"), 0.812)
        self.assertEqual(wrk_summary.duration_ms("1.23ms"), 1.23)
        self.assertAlmostEqual(wrk_summary.duration_ms("2.01s"), 2010.0)
        self.assertAlmostEqual(wrk_summary.duration_ms("1.50m"), 90_000.0)
        with self.assertRaises(ValueError):
            wrk_summary.duration_ms("12")

    def test_output_without_latency_distribution_is_an_error(self):
        # What wrk prints without --latency: no percentile lines.
        lines = sample("wrk-ok.txt").splitlines()
        text = "\n".join(l for l in lines if not re.match(r"\s+\d+%\s", l))
        self.assertIn("Requests/sec", text)
        with self.assertRaisesRegex(ValueError, "--latency"):
            wrk_summary.parse(text)


class CombineTest(unittest.TestCase):
    def test_rates_and_errors_add_up_latencies_take_the_worst(self):
        names = ("wrk-ok.txt", "wrk-non2xx.txt", "wrk-timeouts.txt")
        runs = [wrk_summary.parse(sample(n)) for n in names]
        both = wrk_summary.combine(runs)
        self.assertAlmostEqual(both.requests_per_s, 1704.13 + 1846.01 + 3.99)
        self.assertEqual((both.p50_ms, both.p99_ms), (43.97, 47.96))
        self.assertEqual((both.non_2xx, both.timeouts), (3873, 4))


class CommandTest(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run(
            [sys.executable, os.path.join(HERE, "wrk_summary.py"), *args],
            capture_output=True,
            text=True,
        )

    def test_prints_one_markdown_row(self):
        files = [os.path.join(HERE, "testdata", n) for n in ("wrk-ok.txt", "wrk-non2xx.txt")]
        done = self.run_cli("two servers", *files)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, "| two servers | 3,550 | 1.65 ms | 10.68 ms | 3873 | 0 |\n")

    def test_a_file_that_is_not_wrk_output_fails(self):
        done = self.run_cli("x", os.path.join(HERE, "wrk_summary.py"))
        self.assertEqual(done.returncode, 1)
        self.assertIn("no Requests/sec", done.stderr)


if __name__ == "__main__":
    unittest.main()
