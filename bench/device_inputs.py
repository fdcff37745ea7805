#!/usr/bin/env python3
"""Inputs of `device-apply` for the deltas of one benchmark pair, and its output split per delta.

usage:
  device_inputs.py plan PLAN_JSON LAYOUT SOURCE_TAG TARGET_TAG V3_WORKDIR V3_JSON DELTA_LAYOUT [VARIANT:TAG...]
      Writes PLAN_JSON and prints the arguments of one device-apply run over every delta, one per line
      (for bash `mapfile`):
      * the source layers: V3_WORKDIR/src<i>.tar (uncompressed; the bytes of the source layer blobs)
        when all are there, else the source image's layer blobs (device-apply gunzips them);
      * variant "baseline" (when V3_JSON is a successful v3_baseline.py report): the raw deltas that
        `v3_baseline.py --workdir V3_WORKDIR` kept (delta<i>), each gzip'd at level 6 to delta<i>.gz,
        exactly the bytes v3_baseline.py counts, so that the emulation inflates them as a device does;
      * each VARIANT:TAG, our delta image TAG in DELTA_LAYOUT: its layer blobs above the layers shared
        with the source (gzip'd tars whose first entry is the stream, what a device downloads), each
        with the target DiffID from the delta's io.resin.delta.config label.
      The first delta is applied once more at the start as a warm-up (variant "warmup", not reported),
      so that the first measured delta does not pay for the freshly extracted basis.
  device_inputs.py args PLAN_JSON VARIANT
      The arguments of a device-apply run over VARIANT's deltas alone.
  device_inputs.py split PLAN_JSON DEVICE_JSON RESULTS_DIR PAIR
      Splits the output of the combined run into RESULTS_DIR/PAIR.VARIANT.device.json, with the
      totals of that variant's deltas (the per-run JSON format of device-apply).

Exits 1 (printing nothing) when there is nothing to apply.
"""
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ocicheck import blob_path, chain_ids, resolve  # noqa: E402


def source_layers(layout, tag, v3dir):
    manifest, _, config = resolve(layout, tag)
    tars = [os.path.join(v3dir, f"src{i}.tar") for i in range(len(manifest["layers"]))]
    if all(os.path.isfile(t) for t in tars):
        return tars, json.loads(config)["rootfs"]["diff_ids"]
    return [blob_path(layout, d["digest"]) for d in manifest["layers"]], json.loads(config)["rootfs"]["diff_ids"]


def common_prefix(a, b):
    ca, cb = chain_ids(a), chain_ids(b)
    k = 0
    while k < min(len(ca), len(cb)) and ca[k] == cb[k]:
        k += 1
    return k


def ours(src_ids, delta_layout, delta_tag):
    manifest, _, config = resolve(delta_layout, delta_tag)
    label = json.loads(config)["config"]["Labels"]["io.resin.delta.config"]
    dst_ids = json.loads(label)["rootfs"]["diff_ids"]
    k = common_prefix(src_ids, dst_ids)
    return [(blob_path(delta_layout, d["digest"]), want) for d, want in list(zip(manifest["layers"], dst_ids))[k:]]


def baseline(layout, dst_tag, v3dir, v3_json):
    try:
        with open(v3_json) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return []
    _, _, config = resolve(layout, dst_tag)
    dst_ids = json.loads(config)["rootfs"]["diff_ids"]
    deltas = []
    for entry in report["layers"]:
        if entry.get("common"):
            continue
        i = entry["index"]
        raw = os.path.join(v3dir, f"delta{i}")
        with open(raw, "rb") as f:
            packed = gzip.compress(f.read(), 6, mtime=0)
        if len(packed) != entry["gzip_bytes"]:
            sys.exit(f"delta{i}: {len(packed)} gzip'd bytes, v3_baseline.py counted {entry['gzip_bytes']}")
        with open(raw + ".gz", "wb") as f:
            f.write(packed)
        deltas.append((raw + ".gz", dst_ids[i]))
    return deltas


def print_args(layers, jobs):
    print("--layers")
    print("\n".join(layers))
    for job in jobs:
        print(f"--delta\n{job['path']}\n--diff-id\n{job['diff_id']}")


def plan(plan_json, layout, src_tag, dst_tag, v3dir, v3_json, delta_layout, *variants):
    layers, src_ids = source_layers(layout, src_tag, v3dir)
    jobs = [{"variant": "baseline", "path": p, "diff_id": d} for p, d in baseline(layout, dst_tag, v3dir, v3_json)]
    for spec in variants:
        name, tag = spec.split(":", 1)
        jobs += [{"variant": name, "path": p, "diff_id": d} for p, d in ours(src_ids, delta_layout, tag)]
    if not jobs:
        sys.exit(1)
    jobs.insert(0, dict(jobs[0], variant="warmup"))
    with open(plan_json, "w") as f:
        json.dump({"layers": layers, "jobs": jobs}, f, indent=2)
    print_args(layers, jobs)


def args(plan_json, variant):
    with open(plan_json) as f:
        p = json.load(f)
    jobs = [j for j in p["jobs"] if j["variant"] == variant]
    if not jobs:
        sys.exit(1)
    print_args(p["layers"], jobs)


def split(plan_json, device_json, results, pair):
    with open(plan_json) as f:
        jobs = json.load(f)["jobs"]
    with open(device_json) as f:
        out = json.load(f)
    if len(out["deltas"]) != len(jobs):
        sys.exit(f"{device_json}: {len(out['deltas'])} deltas, the plan has {len(jobs)}")
    by_variant = {}
    for job, d in zip(jobs, out["deltas"]):
        if job["variant"] != "warmup":
            by_variant.setdefault(job["variant"], []).append(d)
    for variant, deltas in by_variant.items():
        counters = {}
        for d in deltas:
            for k, v in d["counters"].items():
                counters[k] = counters.get(k, 0) + v
        cpu = [d["cpu_seconds"] for d in deltas if not d["skipped"]]
        totals = {"counters": counters, "apply_seconds": sum(d["apply_seconds"] for d in deltas),
                  "cpu_seconds": None if None in cpu else sum(cpu),
                  "all_diff_ids_ok": all(d["diff_id_ok"] is not False for d in deltas)}
        part = dict(out, deltas=deltas, totals=totals, combined_run=os.path.basename(device_json))
        with open(os.path.join(results, f"{pair}.{variant}.device.json"), "w") as f:
            json.dump(part, f, indent=2)
        with open(os.path.join(results, f"{pair}.{variant}.device.rc"), "w") as f:
            f.write("0\n" if totals["all_diff_ids_ok"] else "1\n")


def main():
    a = sys.argv[1:]
    if len(a) >= 8 and a[0] == "plan":
        plan(*a[1:])
    elif len(a) == 3 and a[0] == "args":
        args(*a[1:])
    elif len(a) == 5 and a[0] == "split":
        split(*a[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
