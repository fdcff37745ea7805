#!/usr/bin/env python3
"""The one parser of `wrk --latency` output for the bench scripts.

As a module: `parse(text)` gives a `WrkRun` (requests/s, p50 and p99 in milliseconds, non-2xx
responses, socket timeouts); `combine(runs)` merges runs made at the same time against several
servers (requests/s and errors summed, latencies the worst); `row(name, run)` is the Markdown
table row `| name | requests/s | p50 | p99 | non-2xx | timeouts |`.

As a command: `wrk_summary.py NAME FILE...` prints that row for the wrk outputs in FILE...
(combined when there are several). Exits 1 when a file is not wrk output with latencies.
"""

import re
import sys
from typing import NamedTuple


class WrkRun(NamedTuple):
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    timeouts: int


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def duration_ms(value):
    """wrk's duration ("812.00us", "1.23ms", "2.01s", "1.00m") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse(text):
    """One wrk run, from its output (run with --latency, for the percentiles)."""

    def need(pattern, what):
        m = re.search(pattern, text, re.M)
        if not m:
            raise ValueError(f"no {what} in the wrk output")
        return m.group(1)

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    timeouts = re.search(r"Socket errors:.*\btimeout (\d+)", text)
    return WrkRun(
        requests_per_s=float(need(r"^Requests/sec:\s+([\d.]+)", "Requests/sec")),
        p50_ms=duration_ms(need(r"^\s+50%\s+(\S+)", "50% latency (run wrk with --latency)")),
        p99_ms=duration_ms(need(r"^\s+99%\s+(\S+)", "99% latency (run wrk with --latency)")),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        timeouts=int(timeouts.group(1)) if timeouts else 0,
    )


def combine(runs):
    """Runs made at the same time against several servers, as one: requests/s and errors summed,
    p50 and p99 the worst of the runs."""
    runs = list(runs)
    return WrkRun(
        requests_per_s=sum(r.requests_per_s for r in runs),
        p50_ms=max(r.p50_ms for r in runs),
        p99_ms=max(r.p99_ms for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        timeouts=sum(r.timeouts for r in runs),
    )


def row(name, run):
    """The Markdown row `| name | requests/s | p50 | p99 | non-2xx | timeouts |`."""
    return (
        f"| {name} | {run.requests_per_s:,.0f} | {run.p50_ms:.2f} ms | {run.p99_ms:.2f} ms "
        f"| {run.non_2xx} | {run.timeouts} |"
    )


def main(argv):
    if len(argv) < 3:
        print("usage: wrk_summary.py NAME WRK_OUTPUT...", file=sys.stderr)
        return 2
    name, files = argv[1], argv[2:]
    try:
        runs = []
        for path in files:
            with open(path) as f:
                runs.append(parse(f.read()))
    except (OSError, ValueError) as e:
        print(f"wrk_summary.py: {path}: {e}", file=sys.stderr)
        return 1
    print(row(name, combine(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
