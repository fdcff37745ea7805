#!/usr/bin/env python3
"""Independent checks of delta images and applied images in OCI image layouts (stdlib only).

usage:
  ocicheck.py applied TARGET_LAYOUT TARGET_TAG APPLIED_LAYOUT APPLIED_TAG
      The applied image must carry the target's config (same digest), the target's diff_ids,
      and layer blobs that decompress to exactly those diff_ids.
  ocicheck.py delta SOURCE_LAYOUT SOURCE_TAG TARGET_LAYOUT TARGET_TAG DELTA_LAYOUT DELTA_TAG [--basis FILE]
      Checks a balena v3 delta image: layer count, labels, and every delta layer patched with
      Debian's `rdiff patch` (an independent librsync) against the concatenated source layers
      reproduces the target layer's DiffID. Also reports the delta's layer bytes. --basis FILE:
      use FILE as the concatenated uncompressed source layers (e.g. v3_baseline.py's basis.tar)
      instead of decompressing them again; the result then names it in "basis_file".

Both print one JSON object on stdout and exit 0 when every check passed, 1 otherwise.
"""
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

CHUNK = 1 << 20


def blob_path(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def read_blob(layout, descriptor):
    """Read a small blob (manifest, config) and check its digest and size."""
    with open(blob_path(layout, descriptor["digest"]), "rb") as f:
        data = f.read()
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != descriptor["digest"] or len(data) != descriptor.get("size", len(data)):
        raise ValueError(f"blob {descriptor['digest']} is corrupt (sha256 {actual}, {len(data)} bytes)")
    return data


def resolve(layout, tag):
    """Return (manifest, config_descriptor, config_bytes) for a tag of an OCI layout."""
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads(read_blob(layout, desc))
            return manifest, manifest["config"], read_blob(layout, manifest["config"])
    raise KeyError(f"tag {tag!r} not found in {layout}/index.json")


def open_layer(layout, descriptor):
    """Open a layer blob as an uncompressed stream (gzip detected by magic bytes)."""
    f = open(blob_path(layout, descriptor["digest"]), "rb")
    magic = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f, mode="rb") if magic == b"\x1f\x8b" else f


def blob_digest_ok(layout, descriptor):
    h = hashlib.sha256()
    with open(blob_path(layout, descriptor["digest"]), "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest() == descriptor["digest"]


def uncompressed_sha256(layout, descriptor):
    h = hashlib.sha256()
    with open_layer(layout, descriptor) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def chain_ids(diff_ids):
    chain, out = None, []
    for d in diff_ids:
        chain = d if chain is None else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
        out.append(chain)
    return out


def check_applied(target_layout, target_tag, applied_layout, applied_tag):
    t_manifest, t_config_desc, t_config = resolve(target_layout, target_tag)
    a_manifest, a_config_desc, a_config = resolve(applied_layout, applied_tag)
    t_diff_ids = json.loads(t_config)["rootfs"]["diff_ids"]
    a_diff_ids = json.loads(a_config)["rootfs"]["diff_ids"]
    layers = a_manifest.get("layers", [])
    rehashed = [blob_digest_ok(applied_layout, d) and uncompressed_sha256(applied_layout, d) == want
                for d, want in zip(layers, a_diff_ids)]
    result = {
        "config_digest_match": a_config_desc["digest"] == t_config_desc["digest"],
        "config_bytes_match": a_config == t_config,
        "diff_ids_match": a_diff_ids == t_diff_ids,
        "layer_count_match": len(layers) == len(t_diff_ids),
        "layers_rehashed_ok": len(rehashed) == len(t_diff_ids) and all(rehashed),
    }
    result["ok"] = all(result.values())
    return result


def check_delta(src_layout, src_tag, dst_layout, dst_tag, delta_layout, delta_tag, basis_file=None):
    s_manifest, s_config_desc, s_config = resolve(src_layout, src_tag)
    _, _, d_config = resolve(dst_layout, dst_tag)
    x_manifest, _, x_config = resolve(delta_layout, delta_tag)
    s_diff_ids = json.loads(s_config)["rootfs"]["diff_ids"]
    d_diff_ids = json.loads(d_config)["rootfs"]["diff_ids"]
    labels = (json.loads(x_config).get("config") or {}).get("Labels") or {}
    sc, dc = chain_ids(s_diff_ids), chain_ids(d_diff_ids)
    k = 0
    while k < min(len(sc), len(dc)) and sc[k] == dc[k]:
        k += 1
    layers = x_manifest.get("layers", [])
    result = {
        "common_prefix": k,
        "layer_count_match": len(layers) == len(d_diff_ids),
        "label_base_match": labels.get("io.resin.delta.base") == s_config_desc["digest"],
        "label_config_match": labels.get("io.resin.delta.config") == d_config.decode(),
        "layer_bytes_total": sum(d["size"] for d in layers),
        "layer_bytes_beyond_prefix": sum(d["size"] for d in layers[k:]),
        "basis_file": basis_file,
        "layers": [],
    }
    work = tempfile.mkdtemp(prefix="ocicheck-")
    try:
        if basis_file:
            basis = basis_file
        else:
            basis = os.path.join(work, "basis")
            with open(basis, "wb") as out:
                for d in s_manifest["layers"]:
                    with open_layer(src_layout, d) as f:
                        shutil.copyfileobj(f, out, CHUNK)
        for i, (d, want) in enumerate(zip(layers, d_diff_ids)):
            entry = {"index": i, "blob_bytes": d["size"], "blob_digest_ok": blob_digest_ok(delta_layout, d)}
            if i < k:
                entry["common"] = True
                result["layers"].append(entry)
                continue
            delta = os.path.join(work, f"delta{i}")
            with open_layer(delta_layout, d) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                member = next(iter(tar), None)
                body = tar.extractfile(member) if member is not None and member.isfile() else None
                if body is None:
                    entry["rdiff_ok"] = False
                    entry["error"] = "first tar entry is not a regular file"
                    result["layers"].append(entry)
                    continue
                with open(delta, "wb") as out:
                    shutil.copyfileobj(body, out, CHUNK)
            entry["delta_stream_bytes"] = os.path.getsize(delta)
            rebuilt = os.path.join(work, f"rebuilt{i}")
            patch = subprocess.run(["rdiff", "-f", "patch", basis, delta, rebuilt],
                                   capture_output=True, text=True)
            if patch.returncode != 0:
                entry["rdiff_ok"] = False
                entry["error"] = patch.stderr.strip()[-300:]
            else:
                with open(rebuilt, "rb") as f:
                    entry["rdiff_ok"] = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == want
                os.remove(rebuilt)
            os.remove(delta)
            result["layers"].append(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["rdiff_all_ok"] = all(l.get("rdiff_ok", True) for l in result["layers"])
    result["ok"] = all(result[key] for key in
                       ("layer_count_match", "label_base_match", "label_config_match", "rdiff_all_ok")) \
        and all(l["blob_digest_ok"] for l in result["layers"])
    return result


def main():
    args = sys.argv[1:]
    basis = None
    if "--basis" in args:
        i = args.index("--basis")
        basis = args[i + 1] if i + 1 < len(args) else sys.exit(__doc__)
        del args[i:i + 2]
    try:
        if len(args) == 5 and args[0] == "applied":
            result = check_applied(*args[1:])
        elif len(args) == 7 and args[0] == "delta":
            result = check_delta(*args[1:], basis_file=basis)
        else:
            sys.exit(__doc__)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, tarfile.TarError, EOFError) as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
