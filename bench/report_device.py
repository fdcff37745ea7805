"""The device section of BENCHMARKS.md (issue 7): total update time on a device, T(b), for our deltas
built for bandwidth b against balena-engine's own v3 delta, and the bytes-vs-apply Pareto curve.

Used by report.py; reads the files bench/run.sh writes per pair:
  P.baseline.device.{json,rc,err}     device-apply of v3_baseline.py's deltas (gzip -6'd)
  P.<v>.device.{json,rc,err}          device-apply of our delta v (b1 = the default delta, b<MBPS>, fewest)
  P.create[.<v>].{time,rc,...}        its `delta create` under /usr/bin/time -v
  P.inspect[.<v>].json, P.deltacheck[.<v>].json
"""
import json
import math
import os

SLOWDOWN = 5  # a Pi-4-class device against this machine: an assumption of issue 7, not a measurement
MAIN_BANDWIDTHS = (0.1, 1.0, 10.0)  # MB/s
T_TARGETS = {0.1: 0.70, 1.0: 0.90, 10.0: 1.00}  # T(ours built for b) ÷ T(balena-engine v3), issue 7
NA = "n/a"


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def parse_device(res, name):
    """One device-apply run: totals, DiffID checks and the spread of the repeated applies."""
    rc = _read(os.path.join(res, name + ".device.rc"))
    if rc is None:
        return None
    out = _json(os.path.join(res, name + ".device.json"))
    err = _read(os.path.join(res, name + ".device.err"))
    d = {"exit_code": int(rc), "error": None}
    if out is None:
        d["error"] = (err or "").splitlines()[-1] if err else f"exit {rc}, no output"
        return d
    deltas = out.get("deltas", [])
    applied = [x for x in deltas if not x.get("skipped")]
    runs = [x.get("runs_apply_seconds") or [] for x in applied]
    n = min((len(r) for r in runs), default=0)
    run_totals = [sum(r[i] for r in runs) for i in range(n)]
    t = out["totals"]
    c = t["counters"]
    d.update({
        "read_model": out.get("read_model"), "pipe_model": out.get("pipe_model"),
        "deltas": len(applied), "skipped": len(deltas) - len(applied),
        "kinds": sorted({x.get("kind") for x in applied if x.get("kind")}),
        "apply_seconds": t["apply_seconds"], "cpu_seconds": t.get("cpu_seconds"),
        "runs_total_seconds": run_totals,
        "diff_ids_ok": bool(t.get("all_diff_ids_ok")) and int(rc) == 0
        and all(x.get("diff_id_ok") is True for x in applied),
        "copy_commands": c["copy_commands"], "literal_commands": c["literal_commands"],
        "copy_bytes": c["copy_bytes"], "literal_bytes": c["literal_bytes"],
        "file_opens": c["file_opens"], "basis_bytes_read": c["basis_bytes_read"],
        "layer_reads": c["layer_reads"], "output_bytes": c["output_bytes"],
        "basis_extract_seconds": out.get("basis", {}).get("extract_seconds"),
    })
    if int(rc) != 0:
        d["error"] = (err or "").splitlines()[-1] if err else f"exit {rc}"
    return d


def collect(res, pair, ours, balena_engine, gnu_time, find_key):
    """Every delta of one pair measured on the device emulation, ours and balena-engine's."""
    bws = (_read(os.path.join(res, "device_bandwidths.txt")) or "").split()
    variants = []
    be = {"key": "baseline", "label": "balena-engine v3", "bandwidth": None,
          "download_bytes": balena_engine["delta_bytes"], "create": balena_engine["run"],
          "rdiff_ok": balena_engine["verified"], "device": parse_device(res, pair + ".baseline")}
    keys = sorted({1.0, *(float(b) for b in bws)})
    for b in keys:
        key = "b1" if b == 1.0 else f"b{fmt_bw(b)}"
        variants.append(_ours_variant(res, pair, key, b, ours, gnu_time, find_key))
    variants.append(_ours_variant(res, pair, "fewest", None, ours, gnu_time, find_key))
    variants.append(be)
    return {"variants": [v for v in variants if v is not None]}


def _ours_variant(res, pair, key, bandwidth, ours, gnu_time, find_key):
    suffix = "" if key == "b1" else "." + key
    create = gnu_time(res, pair + ".create" + suffix)
    if create is None:
        return None
    inspect = _json(os.path.join(res, f"{pair}.inspect{suffix}.json"))
    check = _json(os.path.join(res, f"{pair}.deltacheck{suffix}.json")) or {}
    total = find_key(inspect, "total_compressed_bytes") if inspect is not None else None
    if total is None:
        total = check.get("layer_bytes_beyond_prefix")
    label = ("ours, fewest bytes" if bandwidth is None
             else f"ours, {fmt_bw(bandwidth)} MB/s" + (" (default)" if key == "b1" else ""))
    return {"key": key, "label": label, "bandwidth": bandwidth,
            "download_bytes": total if create["ok"] else None, "create": create,
            "rdiff_ok": check.get("rdiff_all_ok"), "delta_check_ok": check.get("ok"),
            "device": parse_device(res, f"{pair}.{key}")}


def fmt_bw(b):
    return f"{b:g}"


def update_seconds(v, b, cpu=False):
    """T(b) = download bytes / b + SLOWDOWN × apply seconds, b in MB/s (10⁶ B/s)."""
    d = v.get("device") or {}
    apply_s = d.get("cpu_seconds" if cpu else "apply_seconds")
    if v.get("download_bytes") is None or apply_s is None or d.get("error") or not d.get("diff_ids_ok"):
        return None
    return v["download_bytes"] / (b * 1e6) + SLOWDOWN * apply_s


def evaluate(dev):
    """Per main bandwidth: T of ours built for b and of balena-engine, ratio, target, and the best delta."""
    by_key = {v["key"]: v for v in dev["variants"]}
    be = by_key.get("baseline")
    rows = []
    for b in MAIN_BANDWIDTHS:
        ours = by_key.get("b1" if b == 1.0 else f"b{fmt_bw(b)}")
        t_ours = update_seconds(ours, b) if ours else None
        t_be = update_seconds(be, b) if be else None
        t_ours_cpu = update_seconds(ours, b, cpu=True) if ours else None
        t_be_cpu = update_seconds(be, b, cpu=True) if be else None
        candidates = [(update_seconds(v, b), v["label"]) for v in dev["variants"] if v["key"] != "baseline"]
        candidates = [c for c in candidates if c[0] is not None]
        best = min(candidates) if candidates else None
        r = t_ours / t_be if t_ours is not None and t_be else None
        rows.append({"bandwidth": b, "ours": ours["key"] if ours else None, "t_ours": t_ours, "t_baseline": t_be,
                     "ratio": r, "ratio_cpu": t_ours_cpu / t_be_cpu if t_ours_cpu is not None and t_be_cpu else None,
                     "target": T_TARGETS[b], "met": None if r is None else r <= T_TARGETS[b],
                     "best_label": best[1] if best else None, "best_t": best[0] if best else None})
    dev["targets"] = rows
    return rows


# ---------------------------------------------------------------- formatting

def _num(n):
    return NA if n is None else f"{n:,}"


def _s(x, digits=3):
    return NA if x is None else f"{x:.{digits}f}"


def _apply(d):
    if not d or d.get("apply_seconds") is None:
        return NA
    cpu = d.get("cpu_seconds")
    return f"{d['apply_seconds']:.3f}" + ("" if cpu is None else f" ({cpu:.3f})")


def _runs(d):
    r = (d or {}).get("runs_total_seconds") or []
    return NA if not r else f"{min(r):.3f}–{max(r):.3f}"


def _build(run):
    if not run or not run.get("ok") or run.get("seconds") is None:
        return NA
    cpu = run.get("cpu_seconds")
    rss = run.get("peak_rss_bytes")
    return (f"{run['seconds']:.1f}" + ("" if cpu is None else f" ({cpu:.1f})")
            + ("" if rss is None else f", {rss / 1048576:,.0f} MiB"))


def _yes(flag):
    return NA if flag is None else ("yes" if flag else "**no**")


def summary_lines(pairs):
    lines = ["| pair | " + " | ".join(f"T ratio at {fmt_bw(b)} MB/s (≤ {T_TARGETS[b]:.2f})" for b in MAIN_BANDWIDTHS)
             + " | all met |", "|---|" + "---|" * (len(MAIN_BANDWIDTHS) + 1)]
    for r in pairs:
        rows = r["device"]["targets"]
        cells = [NA if x["ratio"] is None else f"{x['ratio']:.3f} {'yes' if x['met'] else '**no**'}" for x in rows]
        met = [x["met"] for x in rows]
        lines.append(f"| {r['name']} {r['what']} | " + " | ".join(cells) + " | "
                     + (NA if None in met else ("yes" if all(met) else "**no**")) + " |")
    return lines


def pair_lines(r):
    dev = r["device"]
    by_key = {v["key"]: v for v in dev["variants"]}
    lines = [f"### {r['name']} {r['what']}: device update time", "",
             "| b (MB/s) | delta | download bytes | COPY | LITERAL | file opens | apply s, wall (CPU) "
             "| T(b) s | ÷ balena-engine | by CPU s | target | met |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in dev["targets"]:
        b = row["bandwidth"]
        for key, t, is_ours in ((row["ours"], row["t_ours"], True), ("baseline", row["t_baseline"], False)):
            v = by_key.get(key) if key else None
            d = (v or {}).get("device") or {}
            label = (v or {}).get("label", f"ours, {fmt_bw(b)} MB/s") if is_ours else "balena-engine v3"
            lines.append(
                f"| {fmt_bw(b)} | {label} | {_num((v or {}).get('download_bytes'))} | {_num(d.get('copy_commands'))} "
                f"| {_num(d.get('literal_commands'))} | {_num(d.get('file_opens'))} | {_apply(d)} | {_s(t, 2)} | "
                + (f"{_s(row['ratio'])} | {_s(row['ratio_cpu'])} | ≤ {row['target']:.2f} | "
                   f"{NA if row['met'] is None else ('yes' if row['met'] else '**no**')} |" if is_ours
                   else "1.000 | 1.000 | | |"))
    notes = []
    for row in dev["targets"]:
        ours = by_key.get(row["ours"]) if row["ours"] else None
        if row["best_t"] is not None and row["t_ours"] is not None and row["best_t"] < 0.97 * row["t_ours"]:
            vs = f", {row['best_t'] / row['t_baseline']:.3f}× balena-engine" if row["t_baseline"] else ""
            notes.append(f"At {fmt_bw(row['bandwidth'])} MB/s the delta built for it is not the best we built: "
                         f"{row['best_label']} gives T = {row['best_t']:.2f} s{vs}")
        if ours and (ours.get("device") or {}).get("error"):
            notes.append(f"device-apply failed on {ours['label']}: `{ours['device']['error']}`")
    be = by_key.get("baseline")
    if be and (be.get("device") or {}).get("error"):
        notes.append(f"device-apply failed on the balena-engine deltas: `{be['device']['error']}`")
    for n in notes:
        lines += ["", n + "."]
    lines += ["", f"#### {r['name']} Pareto curve: download bytes vs apply seconds", "",
              "| delta | download bytes | COPY | LITERAL | file opens | basis bytes read | apply s, wall (CPU) "
              "| wall, runs | build s, wall (CPU), peak RSS | DiffIDs ok: emulation / `rdiff patch` |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for v in dev["variants"]:
        d = v.get("device") or {}
        emu = (False if d.get("error") else d.get("diff_ids_ok")) if d else None
        lines.append(f"| {v['label']} | {_num(v.get('download_bytes'))} | {_num(d.get('copy_commands'))} | "
                     f"{_num(d.get('literal_commands'))} | {_num(d.get('file_opens'))} | "
                     f"{_num(d.get('basis_bytes_read'))} | {_apply(d)} | {_runs(d)} | {_build(v.get('create'))} | "
                     f"{_yes(emu)} / {_yes(v.get('rdiff_ok'))} |")
    return lines


PIPE_TEXT = {
    "goroutine": "output through a synchronous pipe to a hashing thread whose ends wait by spinning, so "
                 "that a hand-off costs what Go's `io.Pipe` between goroutines costs (`bench/handoff.sh`)",
    "thread": "output through a synchronous pipe to a hashing thread, an OS-thread rendezvous (~20× "
              "librsync-go's cost per command, `bench/patch_cost.sh`)",
    "inline": "output hashed in the applying thread, no hand-off",
}


def method_lines(repeat, read_models, pipe_models="goroutine"):
    return [
        f"* **Model** (issue 7): `T(b) = download bytes / b + {SLOWDOWN} × apply seconds`, b in MB/s "
        "(10⁶ B/s). *Download bytes*: the gzip'd delta layers above the layers source and target share "
        "(as in the byte tables above; the config blob is left out on both sides). *Apply seconds*: the "
        f"median wall seconds of {repeat} applies on the device-apply emulation (`bench/device-apply`, "
        f"read model {read_models}, pipe {pipe_models}: "
        f"{'; '.join(PIPE_TEXT.get(m, m) for m in pipe_models.split(', '))}), summed over the "
        "delta layers; extraction of the source layers is not counted. **Assumption**: a Pi-4-class "
        f"device applies {SLOWDOWN}× slower than this machine (the factor is issue 7's, not measured here; "
        "the emulation's own costs are lower bounds for a device, see `bench/README.md`). The ratio is "
        "T of our delta built with `--device-bandwidth b` over T of the balena-engine v3 delta of the same "
        "run; targets ≤ 0.70 at 0.1 MB/s, ≤ 0.90 at 1 MB/s, ≤ 1.00 at 10 MB/s. \"by CPU s\" is the same "
        "ratio with apply CPU seconds instead of wall seconds"
        + (" (with the goroutine pipe they include both ends' spinning: the targets are judged by wall "
           "seconds)." if "goroutine" in pipe_models else " (less sensitive to other load)."),
        "* **Inputs of the emulation**: both sides gzip'd, so that both pay the inflate a device pays. "
        "Ours: the delta image's layer blobs from its OCI layout (gzip'd tar whose first entry is the "
        "stream). balena-engine: `v3_baseline.py --workdir`'s raw deltas, gzip'd at level 6 by "
        "`bench/device_inputs.py` (exactly the bytes it counts). Basis: the source layer tars that "
        "`v3_baseline.py` decompressed (`src<i>.tar`). Every DiffID is checked by the emulation, and every "
        "delta layer of ours is also rebuilt with Debian's `rdiff patch` (`bench/ocicheck.py`).",
        "* **Deltas**: the 1 MB/s delta is the default `delta create` of the tables above "
        "(`--device-bandwidth` defaults to 1); the others add `--device-bandwidth b` or `--fewest-bytes`. "
        "The build column is `/usr/bin/time -v` of that `delta create` (for balena-engine: the whole "
        "`v3_baseline.py` run, verification included).",
    ]


# ---------------------------------------------------------------- the plot, hand-drawn SVG (no dependency)

def _log_ticks(lo, hi):
    narrow = hi / lo < 20
    ticks = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in ((1, 1.5, 2, 3, 5, 7) if narrow else (1, 2, 5)):
            x = m * 10 ** k
            if lo <= x <= hi:
                ticks.append(x)
    if len(ticks) > 8:
        ticks = [x for x in ticks if f"{x:g}".lstrip("0.")[:1] in ("1", "3")]
    return ticks


def _esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pareto_svg(pairs):
    """One log-log panel per pair: download MB against apply seconds, ours (line) and balena-engine."""
    panels = []
    for r in pairs:
        pts = []
        for v in r["device"]["variants"]:
            d = v.get("device") or {}
            if v.get("download_bytes") and d.get("apply_seconds"):
                pts.append((v["download_bytes"] / 1e6, d["apply_seconds"], v))
        if pts:
            panels.append((r, pts))
    if not panels:
        return None
    W, H, ml, mr, mt, mb = 460, 330, 62, 18, 34, 46
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    caption = ["Download MB vs apply seconds on the device-apply emulation (wall, median).",
               f"T(b) = MB / b + {SLOWDOWN} × apply s. Blue: ours by --device-bandwidth (MB/s);",
               "red: --fewest-bytes; black: balena-engine v3."]
    width, height = W * cols, H * rows + 16 * len(caption) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    out += [f'<text x="10" y="{H * rows + 14 + 16 * i}" fill="#444">{_esc(line)}</text>'
            for i, line in enumerate(caption)]
    for n, (r, pts) in enumerate(panels):
        ox, oy = (n % cols) * W, (n // cols) * H
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1 = min(xs) / 1.3, max(xs) * 1.3
        y0, y1 = min(ys) / 1.3, max(ys) * 1.3
        pw, ph = W - ml - mr, H - mt - mb

        def X(x):
            return ox + ml + (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) * pw

        def Y(y):
            return oy + mt + ph - (math.log(y) - math.log(y0)) / (math.log(y1) - math.log(y0)) * ph

        out.append(f'<text x="{ox + ml}" y="{oy + 20}" font-size="13" font-weight="bold">'
                   f'{_esc(r["name"] + " " + r["what"])}</text>')
        out.append(f'<rect x="{ox + ml}" y="{oy + mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for t in _log_ticks(x0, x1):
            out.append(f'<line x1="{X(t):.1f}" y1="{oy + mt}" x2="{X(t):.1f}" y2="{oy + mt + ph}" stroke="#eee"/>')
            out.append(f'<text x="{X(t):.1f}" y="{oy + mt + ph + 14}" text-anchor="middle">{t:g}</text>')
        for t in _log_ticks(y0, y1):
            out.append(f'<line x1="{ox + ml}" y1="{Y(t):.1f}" x2="{ox + ml + pw}" y2="{Y(t):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{ox + ml - 4}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        out.append(f'<text x="{ox + ml + pw / 2}" y="{oy + H - 12}" text-anchor="middle">download MB</text>')
        out.append(f'<text transform="translate({ox + 14},{oy + mt + ph / 2}) rotate(-90)" '
                   'text-anchor="middle">apply seconds</text>')
        sweep = sorted((p for p in pts if p[2]["bandwidth"] is not None), key=lambda p: p[2]["bandwidth"])
        if len(sweep) > 1:
            out.append('<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="'
                       + " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _ in sweep) + '"/>')
        for x, y, v in pts:
            if v["key"] == "baseline":
                color, mark, text = "black", f'<rect x="{X(x) - 4:.1f}" y="{Y(y) - 4:.1f}" width="8" height="8"', \
                    "balena-engine"
            elif v["bandwidth"] is None:
                color, mark, text = "#d62728", (f'<polygon points="{X(x):.1f},{Y(y) - 5:.1f} {X(x) - 5:.1f},'
                                                f'{Y(y) + 4:.1f} {X(x) + 5:.1f},{Y(y) + 4:.1f}"'), "fewest"
            else:
                color, mark, text = "#1f77b4", f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3.5"', \
                    fmt_bw(v["bandwidth"])
            out.append(f'{mark} fill="{color}"/>')
            if v["key"] == "baseline":
                out.append(f'<text x="{X(x) - 6:.1f}" y="{Y(y) + 14:.1f}" text-anchor="end" '
                           f'fill="{color}">{_esc(text)}</text>')
            else:
                out.append(f'<text x="{X(x) + 6:.1f}" y="{Y(y) - 5:.1f}" fill="{color}">{_esc(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
