#!/usr/bin/env python3
"""Turn the measurements of bench/run.sh into BENCHMARKS.md (and optionally a JSON file).

usage: report.py RESULTS_DIR OUT_MD --corpus DIR --repo DIR [--json FILE]
"""
import argparse
import json
import os
import platform
import re
import subprocess

import md_section
import report_device

# name: (what changes, delta bytes target ÷ balena-engine v3 from issue 3, or None)
PAIRS = {
    "p1": ("app-code change", 0.15),
    "p2": ("base-image refresh", 0.65),
    "p3": ("binary rebuild", 0.40),
    "p4": ("large: package upgrades + rebuilt binary", None),
}
STRETCH_VS_XDELTA = 1.1
BUILD_SECONDS_MAX = 20
APPLY_RSS_MAX_MIB = 64
APPLY_MBPS_MIN = 100
MIB = 1024 * 1024


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def gnu_time(res, name):
    """Wall seconds, peak RSS (bytes) and exit code of one `timed` step, or None if it did not run."""
    text = read(os.path.join(res, name + ".time"))
    if text is None:
        return None
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    cpu = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
    seconds = None
    if wall:
        h, m, s = wall.groups()
        seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    exit_code = int(read(os.path.join(res, name + ".rc"), "-1"))
    failed = read(os.path.join(res, name + ".failed"))
    return {
        "seconds": seconds,
        "cpu_seconds": round(sum(cpu), 2) if len(cpu) == 2 else None,
        "peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None,
        "exit_code": exit_code,
        "ok": exit_code == 0 and failed is None,
        "failure": failed or (None if exit_code == 0 else last_line(os.path.join(res, name + ".err"))),
    }


def ok(run):
    return bool(run and run["ok"])


def find_key(obj, key):
    """First value of `key` anywhere in a JSON document (top level first)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = find_key(child, key)
        if found is not None:
            return found
    return None


def collect_pair(res, pair):
    fields = read(os.path.join(res, pair + ".pair")).split()
    r = {"name": pair, "what": PAIRS[pair][0], "source": fields[1], "target": fields[2],
         "source_bytes": int(fields[3]), "target_bytes": int(fields[4])}

    v3 = read_json(os.path.join(res, pair + ".v3.out"))
    r["balena_engine"] = {
        "delta_bytes": v3["total_gzip_bytes"] if v3 else None,
        "verified": v3["all_verified"] if v3 else None,
        "script_seconds": v3["seconds"] if v3 else None,
        "run": gnu_time(res, pair + ".v3"),
    }

    gz = read(os.path.join(res, pair + ".xdelta.gzip_bytes"))
    raw = read(os.path.join(res, pair + ".xdelta.raw_bytes"))
    decoded = read(os.path.join(res, pair + ".xdelta_apply.ok"))
    r["xdelta3"] = {
        "delta_bytes": int(gz) if gz else None,
        "vcdiff_bytes": int(raw) if raw else None,
        "create": gnu_time(res, pair + ".xdelta"),
        "apply": gnu_time(res, pair + ".xdelta_apply"),
        "apply_reproduces_target": None if decoded is None else decoded == "true",
    }

    create = gnu_time(res, pair + ".create")
    inspect = read_json(os.path.join(res, pair + ".inspect.json"))
    delta_check = read_json(os.path.join(res, pair + ".deltacheck.json"))
    total = find_key(inspect, "total_compressed_bytes") if inspect is not None else None
    source = "delta inspect" if total is not None else None
    if total is None and delta_check and "layer_bytes_beyond_prefix" in delta_check:
        total, source = delta_check["layer_bytes_beyond_prefix"], "delta manifest (layers above the common prefix)"
    created = ok(create)
    r["ours"] = {
        "delta_bytes": total if created else None,
        "delta_bytes_from": source if created else None,
        "download_bytes": find_key(inspect, "download_bytes") if created and inspect is not None else None,
        "create": create,
        "apply": gnu_time(res, pair + ".apply"),
        "delta_check": delta_check,
        "applied_check": read_json(os.path.join(res, pair + ".appliedcheck.json")),
        "error": None if created or create is None else create["failure"],
    }
    r["device"] = report_device.collect(res, pair, r["ours"], r["balena_engine"], gnu_time, find_key)
    report_device.evaluate(r["device"])
    return r


def last_line(path):
    text = read(path)
    return text.splitlines()[-1] if text else None


def tool_version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else None


def dpkg_version(package):
    return tool_version(["dpkg-query", "-W", "-f=${Version}", package])


def machine():
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_bytes": mem,
            "kernel": platform.release(), "os": tool_version(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"])}


def collect(res, corpus, repo):
    return {
        "date": read(os.path.join(res, "date.txt")),
        "corpus": corpus,
        "repo_commit": tool_version(["git", "-C", repo, "describe", "--always", "--dirty"]),
        "machine": machine(),
        "load_start": read(os.path.join(res, "load_start.txt")),
        "load_end": read(os.path.join(res, "load_end.txt")),
        "tools": {
            "balena-release-update": read(os.path.join(res, "ours_version.txt")),
            "bru-device-apply": read(os.path.join(res, "device_apply_version.txt")),
            "rustc": tool_version(["rustc", "--version"]),
            "rdiff (librsync)": dpkg_version("rdiff"),
            "xdelta3": dpkg_version("xdelta3"),
            "gzip": dpkg_version("gzip"),
            "python3": platform.python_version(),
        },
        "ours_unavailable": read(os.path.join(res, "ours_unavailable.txt")),
        "device_unavailable": read(os.path.join(res, "device_unavailable.txt")),
        "device_repeat": read(os.path.join(res, "device_repeat.txt")),
        "build": gnu_time(res, "cargo_build"),
        "pairs": [collect_pair(res, p) for p in PAIRS if os.path.exists(os.path.join(res, p + ".pair"))],
    }


# ---------------------------------------------------------------- formatting

NA = "n/a"


def num(n):
    return NA if n is None else f"{n:,}"


def secs(run):
    """Wall seconds, with user+system CPU seconds in brackets (less sensitive to a busy machine)."""
    if not ok(run) or run["seconds"] is None:
        return NA
    return f"{run['seconds']:.2f}" + ("" if run["cpu_seconds"] is None else f" ({run['cpu_seconds']:.2f} CPU)")


def mib(run):
    if not ok(run) or run["peak_rss_bytes"] is None:
        return NA
    return f"{run['peak_rss_bytes'] / MIB:,.1f} MiB"


def ratio(a, b):
    return None if a is None or not b else a / b


def fmt_ratio(x):
    return NA if x is None else f"{x:.3f}×"


def verdict(value, limit):
    if limit is None:
        return "–"
    return NA if value is None else ("yes" if value <= limit else "**no**")


def target_text(target):
    return "no target" if target is None else f"≤ {target:.2f}×"


def yes_no(flag):
    return NA if flag is None else ("yes" if flag else "**no**")


def pair_table(r):
    ours, be, xd = r["ours"], r["balena_engine"], r["xdelta3"]
    target = PAIRS[r["name"]][1]
    lines = [f"### {r['name']} {r['what']}: {r['source']} → {r['target']} "
             f"(A {num(r['source_bytes'])} B, B {num(r['target_bytes'])} B uncompressed)", "",
             "| | ours | balena-engine v3 | xdelta3 -9 -S none + gzip -9 | target | met |",
             "|---|---:|---:|---:|---|---|"]

    def row(*cells):
        lines.append("| " + " | ".join(cells) + " |")

    # The byte targets judge the delta built for the fewest bytes; the default (1 MB/s) is shown beside.
    fewest = next((v["download_bytes"] for v in r["device"]["variants"] if v["key"] == "fewest"), None)
    judged = fewest if fewest is not None else ours["delta_bytes"]
    to_be, to_xd = ratio(judged, be["delta_bytes"]), ratio(judged, xd["delta_bytes"])
    shown = (lambda v, f: f"{v} (default: {f})") if fewest is not None else (lambda v, f: v)
    row("delta bytes" + (" `--fewest-bytes`" if fewest is not None else ""),
        shown(num(judged), num(ours["delta_bytes"])), num(be["delta_bytes"]), num(xd["delta_bytes"]),
        "–" if target is None else f"≤ {num(int(target * be['delta_bytes'])) if be['delta_bytes'] else NA} B",
        verdict(to_be, target))
    row("÷ balena-engine v3", shown(fmt_ratio(to_be), fmt_ratio(ratio(ours["delta_bytes"], be["delta_bytes"]))),
        "1.000×", fmt_ratio(ratio(xd["delta_bytes"], be["delta_bytes"])),
        "–" if target is None else f"≤ {target:.2f}×", verdict(to_be, target))
    row("÷ xdelta3 + gzip (stretch)", shown(fmt_ratio(to_xd), fmt_ratio(ratio(ours["delta_bytes"], xd["delta_bytes"]))),
        fmt_ratio(ratio(be["delta_bytes"], xd["delta_bytes"])),
        "1.000×", f"≤ {STRETCH_VS_XDELTA:.1f}×", verdict(to_xd, STRETCH_VS_XDELTA))
    c = ours["create"]
    row("build wall s (CPU s)", secs(c), secs(be["run"]), secs(xd["create"]), f"≤ {BUILD_SECONDS_MAX} s",
        verdict(c["seconds"] if ok(c) else None, BUILD_SECONDS_MAX))
    rss_ratio = ratio(c["peak_rss_bytes"], r["source_bytes"]) if ok(c) else None
    row("build peak RSS", mib(c), mib(be["run"]), mib(xd["create"]),
        f"≤ source image ({r['source_bytes'] / MIB:,.1f} MiB)", verdict(rss_ratio, 1.0))
    row("build peak RSS ÷ source image", fmt_ratio(rss_ratio),
        fmt_ratio(ratio((be["run"] or {}).get("peak_rss_bytes"), r["source_bytes"])),
        fmt_ratio(ratio((xd["create"] or {}).get("peak_rss_bytes"), r["source_bytes"])), "≤ 1.0×",
        verdict(rss_ratio, 1.0))
    a = ours["apply"]
    ok_apply = ok(a)
    row("apply wall s (CPU s)", secs(a), "–", secs(xd["apply"]), "", "")
    apply_mib = a["peak_rss_bytes"] / MIB if ok_apply and a["peak_rss_bytes"] else None
    row("apply peak RSS", mib(a), "–", mib(xd["apply"]), f"≤ {APPLY_RSS_MAX_MIB} MiB",
        verdict(apply_mib, APPLY_RSS_MAX_MIB))
    mbps = r["target_bytes"] / 1e6 / a["seconds"] if ok_apply and a["seconds"] else None
    xa = xd["apply"]
    xmbps = r["target_bytes"] / 1e6 / xa["seconds"] if ok(xa) and xa["seconds"] else None
    row("apply throughput (target bytes ÷ wall)", NA if mbps is None else f"{mbps:,.0f} MB/s", "–",
        NA if xmbps is None else f"{xmbps:,.0f} MB/s", f"≥ {APPLY_MBPS_MIN} MB/s",
        NA if mbps is None else ("yes" if mbps >= APPLY_MBPS_MIN else "**no**"))
    dc, ac = ours["delta_check"] or {}, ours["applied_check"] or {}
    row("every delta layer, `rdiff patch`ed, has the target DiffID", yes_no(dc.get("rdiff_all_ok")),
        yes_no(be["verified"]), "–", "yes", yes_no(dc.get("rdiff_all_ok")))
    row("applied image: config digest / diff_ids / rehashed layers = target",
        " / ".join(yes_no(ac.get(k)) for k in ("config_digest_match", "diff_ids_match", "layers_rehashed_ok")),
        "–", "decoded = B.tar: " + yes_no(xd["apply_reproduces_target"]), "yes",
        "**no**" if a is not None and not ok_apply else yes_no(ac.get("ok")))
    manifest_total = (ours["delta_check"] or {}).get("layer_bytes_beyond_prefix")
    if ours["delta_bytes_from"] == "delta inspect" and manifest_total not in (None, ours["delta_bytes"]):
        lines += ["", f"Note: `delta inspect` reports {num(ours['delta_bytes'])} B, the delta layers above the "
                  f"common prefix in the delta manifest add up to {num(manifest_total)} B."]
    if ours["download_bytes"] is not None:
        lines += ["", f"With the delta image's config blob (it carries the target config verbatim) a device "
                  f"downloads {num(ours['download_bytes'])} B of our delta."]
    if ours["delta_bytes_from"] and ours["delta_bytes_from"] != "delta inspect":
        lines += ["", f"Our delta bytes come from the {ours['delta_bytes_from']} (`delta inspect` gave no "
                  "`total_compressed_bytes`)."]
    if ours["error"]:
        lines += ["", f"`delta create` failed: `{ours['error']}`"]
    if ours["apply"] and not ok(ours["apply"]):
        lines += ["", f"`delta apply` failed: `{ours['apply']['failure']}`"]
    return lines


def device_section(data, plot):
    pairs = [r for r in data["pairs"] if any(v.get("device") for v in r["device"]["variants"])]
    lines = ["## Device update time (issue 7)", ""]
    if data["device_unavailable"]:
        lines += [f"Not measured: {data['device_unavailable']}.", ""]
    if not pairs:
        return lines
    models = sorted({(v.get("device") or {}).get("read_model") for r in pairs for v in r["device"]["variants"]}
                    - {None})
    lines += [f"`T(b) = download bytes / b + {report_device.SLOWDOWN} × apply seconds` on a device with b MB/s, "
              f"assuming the device applies {report_device.SLOWDOWN}× slower than this machine (see "
              "\"How each figure is measured\"). Ratio: T of our delta built for b ÷ T of balena-engine's v3 "
              "delta.", ""]
    lines += report_device.summary_lines(pairs) + [""]
    if plot:
        lines += [f"![Pareto curves: download bytes against apply seconds]({plot})", ""]
    for r in pairs:
        lines += report_device.pair_lines(r) + [""]
    data["device_read_models"] = models
    data["device_pipe_models"] = sorted(
        {(v.get("device") or {}).get("pipe_model") for r in pairs for v in r["device"]["variants"]} - {None})
    return lines


def markdown(data, plot=None):
    m = data["machine"]
    lines = ["# Delta benchmarks", "",
             "Generated by `bench/run.sh` (see `bench/README.md`); every figure below comes from the same run "
             "on the same corpus. Delta bytes: the gzip-compressed delta layers a device downloads "
             "(common layers excluded). "
             "Wall time, CPU time (user + system, less sensitive to other load than wall time) and peak RSS "
             "come from `/usr/bin/time -v`; MiB = 1,048,576 bytes, MB = 10⁶ bytes.", "",
             f"* date: {data['date']}; repository at `{data['repo_commit']}`",
             f"* machine: {m['nproc']} CPUs ({m['cpu']}), {num(m['memory_bytes'] and m['memory_bytes'] // MIB)} MiB RAM, "
             f"{m['os']}, Linux {m['kernel']}",
             f"* load average at start: `{(data['load_start'] or '').split('load average:')[-1].strip()}`, "
             f"at end: `{(data['load_end'] or '').split('load average:')[-1].strip()}` "
             "(other work on the machine inflates wall times)",
             "* tools: " + "; ".join(v if v and v.startswith(k) else f"{k} {v or NA}"
                                     for k, v in data["tools"].items()),
             f"* corpus: `{data['corpus']}`"]
    if data["ours_unavailable"]:
        lines.append(f"* ours: n/a, {data['ours_unavailable']}")
    lines += ["", "## Summary: delta bytes", "",
              "The byte targets (issue 3) judge the delta built for the fewest bytes (`--fewest-bytes`); the "
              "default `delta create` is built for a device at 1 MB/s (`--device-bandwidth 1`) and trades bytes "
              "for a cheaper apply (see the device section).", "",
              "| pair | ours `--fewest-bytes` | balena-engine v3 | xdelta3 + gzip -9 | fewest ÷ balena-engine (target) | "
              "fewest ÷ xdelta3 (stretch ≤ 1.1×) | ours default (1 MB/s) ÷ balena-engine |",
              "|---|---:|---:|---:|---|---|---|"]
    for r in data["pairs"]:
        o, b, x = r["ours"]["delta_bytes"], r["balena_engine"]["delta_bytes"], r["xdelta3"]["delta_bytes"]
        fewest = next((v["download_bytes"] for v in r["device"]["variants"] if v["key"] == "fewest"), None)
        if fewest is None:
            lines.append(f"| {r['name']} {r['what']} | – | {num(b)} | {num(x)} | – | – | "
                         f"{num(o)} B, {fmt_ratio(ratio(o, b))} |")
            continue
        lines.append(f"| {r['name']} {r['what']} | {num(fewest)} | {num(b)} | {num(x)} | "
                     f"{fmt_ratio(ratio(fewest, b))} ({target_text(PAIRS[r['name']][1])}) | "
                     f"{fmt_ratio(ratio(fewest, x))} | {num(o)} B, {fmt_ratio(ratio(o, b))} |")
    lines += ["", "The per-pair tables below describe the default delta (built for 1 MB/s).", "",
              "## Per pair", ""]
    for r in data["pairs"]:
        lines += pair_table(r) + [""]
    lines += device_section(data, plot)
    lines += ["## How each figure is measured", "",
              "* **ours**: `balena-release-update delta create --source oci:… --target oci:… --output oci:…` "
              "(OCI layout in, delta image out); bytes from `delta inspect` (`total_compressed_bytes`). "
              "Apply: `delta apply --source … --delta … --output oci:…`. The benchmark then patches every "
              "delta layer with Debian's `rdiff patch` against the concatenated source layers and checks the "
              "DiffID, and checks that the applied image has the target's config digest and diff_ids and that "
              "its layers decompress to those diff_ids (`bench/ocicheck.py`).",
              "* **balena-engine v3**: `../shared/bench/v3_baseline.py` (rdiff, 512-byte blocks, BLAKE2, "
              "each changed target layer against all source layers, gzip -6, each delta verified with "
              "`rdiff patch`). Its wall time and RSS include decompressing the layers and the verification.",
              "* **xdelta3**: `xdelta3 -9 -S none -B W -e -s A.tar B.tar`, then `gzip -9`, over the "
              "concatenated layer tars (`pairs/pN/{A,B}.tar`); W = 512 MiB as in ANCHORS.md (doubled if A is "
              "larger). Build time/RSS is the xdelta3 step; apply is `xdelta3 -d`, compared with B.tar. Not "
              "applicable on a balena device.",
              "* Targets are those of `../shared/bench/README.md` (issue 3). Single run, warm page cache; "
              "times under 1 s are ±20 %."]
    if any(v.get("device") for r in data["pairs"] for v in r["device"]["variants"]):
        lines += report_device.method_lines(data["device_repeat"] or "?",
                                            ", ".join(data.get("device_read_models") or []) or "go-buffer",
                                            ", ".join(data.get("device_pipe_models") or []) or "goroutine")
        if plot:
            lines.append(f"* **Plot**: `{plot}`, drawn as SVG by `bench/report_device.py` (no plotting library).")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", help="results directory of run.sh, or with --from-json its saved JSON")
    ap.add_argument("out_md")
    ap.add_argument("--corpus")
    ap.add_argument("--repo")
    ap.add_argument("--json", help="also write the measurements as JSON")
    ap.add_argument("--from-json", action="store_true",
                    help="render the report again from the JSON a run saved (RESULTS_JSON)")
    args = ap.parse_args()
    if args.from_json:
        with open(args.results) as f:
            data = json.load(f)
    elif args.corpus and args.repo:
        data = collect(args.results, args.corpus, args.repo)
    else:
        ap.error("--corpus and --repo are required unless --from-json")
    svg = report_device.pareto_svg(data["pairs"])
    plot = None
    if svg:
        stem = os.path.splitext(args.out_md)[0]
        with open(stem + "-pareto.svg", "w") as f:
            f.write(svg)
        plot = os.path.basename(stem) + "-pareto.svg"
    # Keep the sections bench/status.sh and bench/scale_out.sh wrote (separate measurements).
    kept = ""
    if os.path.exists(args.out_md):
        with open(args.out_md) as f:
            old = f.read()
        for name in ("status-path", "scale-out"):
            section = md_section.find(old, name)
            kept += "\n" + section + "\n" if section else ""
    with open(args.out_md, "w") as f:
        f.write(markdown(data, plot) + kept)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
