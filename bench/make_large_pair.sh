#!/bin/bash
# make_large_pair.sh -- adds the "p4 large" image pair to an existing delta-benchmark corpus.
#
#   usage (root, Debian bookworm host, after ../shared/bench/make_corpus.sh has built the corpus):
#     MIRROR=... SECMIRROR=... env -u CARGO_TARGET_DIR nice -n 10 bash bench/make_large_pair.sh /work/corpus
#
# MIRROR / SECMIRROR are the Debian mirror apt uses and its security twin, exactly as for make_corpus.sh
# (the URIs of the debian and debian-security entries in the apt sources).
#
# Spec (issue 3): ~1-2 GB uncompressed, layers from Debian packages, a few % of the files updated plus a
# rebuilt large binary. What it builds, in the corpus's OCI layout oci/corpus:
#
#   layer      imgA4                                   imgB4
#   1 base     baseA (the corpus's minbase+python3)    same tar
#   2 tools    gcc/g++/clang-14/llvm-14-dev/cmake/git  same tar
#   3 libs     python3-full, -dev libs, perl, ...      layer 3 of A + a handful of packages upgraded
#              (bookworm point-release versions)       from bookworm-security/-updates (openssl, libpq,
#                                                      expat, libpng, xz, zstd, libssh2)
#   4 app      edge-agent, release + debug info        same crate after a 2-line source change
#
# Layers 2 and 3 are the filesystem diff of a chroot before and after `apt-get install` (new or changed
# entries with their parent directories, `.wh.` whiteouts for deletions), like the layer a Dockerfile
# RUN step commits. Layer 3 of B starts from a copy of A's tree, so files the upgrade does not touch are
# byte-identical (same mtimes) and only the upgraded packages, dpkg/apt state and ld.so.cache differ.
# Layer tars are written by the corpus's mklayer.sh; umoci gzips them into the OCI layout.
#
# Result: tags imgA4 imgB4, layers/p4*.tar, pairs/p4/{A,B}.tar (concatenated layer tars) and
# pairs/p4/{A,B}.layers, logs/p4*.pkgs (package versions per tree), logs/p4.upgraded and logs/p4.stats.
# Images are ~1.6-1.7 GB uncompressed. Needs ~11 GB of free disk while it runs (~6.5 GB stays: layer
# tars, pair tars, OCI blobs, Rust target dir). Took 12 min on 2 busy cores the first time (downloads ~320 MB
# of .debs; the Rust deps with debug info ~4 min), 3.5 min on a rerun. Rerunning it rebuilds p4 from scratch.
#
# Environment knobs:
#   P4_TOOLS    packages of layer 2 (default below)
#   P4_LIBS     packages of layer 3 (default below)
#   P4_UPGRADE  packages upgraded in B's layer 3 from bookworm-updates + bookworm-security
#               (`apt-get install --only-upgrade`; default below: on 2026-11-30, 15 packages,
#               1.7 % of B's files changed or added, 3.1 % counting mtime-only changes). Names with
#               no pending update are skipped. P4_UPGRADE=all: `apt-get upgrade` of everything pending
#               (on 2026-11-30: 49 packages incl. python3.11, perl, linux-libc-dev: 9.6 %, or 31 % with mtime-only)
#   KEEP_ROOTFS=1  keep the chroot trees under rootfs/p4* (≈4 GB) instead of deleting them at the end
set -euo pipefail
MIRROR=${MIRROR:?set MIRROR to the Debian mirror URL apt uses}
SECMIRROR=${SECMIRROR:?set SECMIRROR to the Debian security mirror URL}
CORPUS=${1:-.}
cd "$CORPUS"
CORPUS=$(pwd)

P4_TOOLS=${P4_TOOLS:-"build-essential gdb clang-14 lld-14 llvm-14-dev cmake ninja-build pkg-config git autoconf automake libtool"}
P4_LIBS=${P4_LIBS:-"python3-full python3-dev python3-numpy python3-yaml python3-requests perl libperl-dev openssl libssl-dev libxml2-dev libxslt1-dev libsqlite3-dev sqlite3 libpq-dev postgresql-client libcurl4-openssl-dev curl zlib1g-dev liblzma-dev xz-utils libexpat1-dev libpng-dev libjpeg-dev tzdata"}
P4_UPGRADE=${P4_UPGRADE:-"openssl libssl3 libssl-dev libpq5 libpq-dev postgresql-client-15 libexpat1 libexpat1-dev libpng16-16 libpng-dev xz-utils liblzma5 liblzma-dev libzstd1 libssh2-1"}

for f in oci/corpus/index.json layers/baseA.tar mklayer.sh src/rustapp/Cargo.toml src/rustapp/main_v2.rs; do
  [ -e "$f" ] || { echo "$CORPUS/$f missing: build the corpus with make_corpus.sh first" >&2; exit 1; }
done
command -v umoci >/dev/null && command -v cargo >/dev/null && command -v python3 >/dev/null \
  || { echo "needs umoci (make_corpus.sh installs it), cargo and python3" >&2; exit 1; }
mkdir -p rootfs layers logs bin pairs/p4

R=rootfs                                   # chroot trees: p4base -> p4tools -> p4libsA -> p4libsB
MOUNTS=()                                  # mounted paths, unmounted on exit whatever happens
umount_all() { local i; for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || true; done; MOUNTS=(); }
trap umount_all EXIT

# ---- helpers ------------------------------------------------------------------------------------------
# chroot_open DIR: make DIR usable for apt: /proc, a private /dev with the usual nodes, DNS, no daemons.
chroot_open() {
  local d=$1
  cp -a "$d/etc/resolv.conf" "$d.resolv.conf"          # restored (content and mtime) by chroot_close
  cp /etc/resolv.conf "$d/etc/resolv.conf"
  mount -t proc proc "$d/proc"; MOUNTS+=("$d/proc")
  mount -t tmpfs -o mode=755 p4dev "$d/dev"; MOUNTS+=("$d/dev")
  mknod -m 666 "$d/dev/null" c 1 3;    mknod -m 666 "$d/dev/zero" c 1 5; mknod -m 666 "$d/dev/full" c 1 7
  mknod -m 666 "$d/dev/random" c 1 8;  mknod -m 666 "$d/dev/urandom" c 1 9; mknod -m 666 "$d/dev/tty" c 5 0
  ln -s /proc/self/fd "$d/dev/fd"
  printf '#!/bin/sh\nexit 101\n' > "$d/usr/sbin/policy-rc.d"; chmod 755 "$d/usr/sbin/policy-rc.d"
}
# chroot_close DIR: what official images do after apt: no caches/lists, resolv.conf as before; unmount.
chroot_close() {
  local d=$1
  chroot "$d" apt-get clean
  rm -rf "$d"/var/lib/apt/lists/* "$d/usr/sbin/policy-rc.d"
  cp -a "$d.resolv.conf" "$d/etc/resolv.conf"; rm -f "$d.resolv.conf"
  umount_all
}
apt_in() { local d=$1; shift; DEBIAN_FRONTEND=noninteractive chroot "$d" apt-get -y -q "$@"; }
pkgs() { dpkg --root="$1" -l | awk '/^ii/{print $2"="$3}'; }

# layer_diff BEFORE AFTER OUT: OUT := entries of AFTER that are new or differ from BEFORE (type, mode, owner,
# size, mtime, symlink target or content), plus their parent directories, plus `.wh.NAME` for every entry
# of BEFORE that AFTER no longer has. Hard links inside the copied set stay hard links (tar pipe).
layer_diff() {
  local before=$1 after=$2 out=$3 list
  list=$(mktemp)
  rm -rf "$out"; mkdir -p "$out"
  python3 - "$before" "$after" "$list" "$out" <<'PY'
import os, stat, sys, filecmp
before, after, listfile, out = sys.argv[1:5]
dev = os.lstat(after).st_dev
def key(st):
    m = st.st_mode
    k = (stat.S_IFMT(m), stat.S_IMODE(m), st.st_uid, st.st_gid, st.st_mtime_ns)
    if stat.S_ISREG(m) or stat.S_ISLNK(m): k += (st.st_size,)
    if stat.S_ISCHR(m) or stat.S_ISBLK(m): k += (st.st_rdev,)
    return k
changed, whiteouts = set(), []
def walk(rel):                      # rel: '' or 'a/b'; both trees have rel as a directory
    a = os.path.join(after, rel); b = os.path.join(before, rel)
    names_a = set(os.listdir(a)); names_b = set(os.listdir(b)) if os.path.isdir(b) and not os.path.islink(b) else set()
    for n in sorted(names_b - names_a):
        whiteouts.append(os.path.join(rel, '.wh.' + n))
    for n in sorted(names_a):
        r = os.path.join(rel, n); pa = os.path.join(after, r); pb = os.path.join(before, r)
        sa = os.lstat(pa)
        try: sb = os.lstat(pb)
        except FileNotFoundError: sb = None
        same = sb is not None and key(sa) == key(sb)
        if same and stat.S_ISLNK(sa.st_mode): same = os.readlink(pa) == os.readlink(pb)
        if same and stat.S_ISREG(sa.st_mode): same = filecmp.cmp(pa, pb, shallow=False)
        if stat.S_ISDIR(sa.st_mode):
            if sa.st_dev != dev: continue          # a mount point left behind: skip its content
            if not same: changed.add(r)
            if sb is not None and stat.S_ISDIR(sb.st_mode): walk(r)
            else: add_all(r)
        elif not same:
            changed.add(r)
def add_all(rel):                   # a directory that is new (or replaced a non-directory): all of it
    for root, dirs, files in os.walk(os.path.join(after, rel)):
        for n in dirs + files:
            changed.add(os.path.relpath(os.path.join(root, n), after))
walk('')
entries = set(changed)
for p in list(changed) + whiteouts:  # parents of every change, so the layer carries their metadata
    d = os.path.dirname(p)
    while d: entries.add(d); d = os.path.dirname(d)
with open(listfile, 'wb') as f:
    for p in ['.'] + sorted('./' + p for p in entries):
        f.write(p.encode('utf-8', 'surrogateescape') + b'\0')
with open(listfile + '.wh', 'wb') as f:
    for p in whiteouts: f.write(p.encode('utf-8', 'surrogateescape') + b'\0')
print(f"layer_diff {after}: {len(changed)} new/changed entries, {len(whiteouts)} whiteouts", file=sys.stderr)
PY
  tar -C "$after" --null --no-recursion -T "$list" --numeric-owner -cpf - | tar -C "$out" --numeric-owner -xpf -
  # whiteouts (the parent directory's mtime is restored so the entry matches the upper tree)
  while IFS= read -r -d '' w; do
    local parent; parent=$(dirname "$out/$w")
    local mt; mt=$(stat -c %y "$parent")
    : > "$out/$w"; touch -d "$mt" "$parent"
  done < "$list.wh"
  rm -f "$list" "$list.wh"
}

# ---- 1. base: exactly the corpus's baseA layer, unpacked ----------------------------------------------
rm -rf "$R"/p4base "$R"/p4tools "$R"/p4libsA "$R"/p4libsB "$R"/p4appA "$R"/p4appB "$R"/p4diff.*
mkdir -p "$R/p4base"
tar -C "$R/p4base" --numeric-owner -xpf layers/baseA.tar

# ---- 2. toolchain layer: bookworm (point release) only, same tree for A and B -------------------------
cp -a "$R/p4base" "$R/p4tools"
chroot_open "$R/p4tools"
apt_in "$R/p4tools" update
apt_in "$R/p4tools" install --no-install-recommends $P4_TOOLS
chroot_close "$R/p4tools"
pkgs "$R/p4tools" > logs/p4tools.pkgs
layer_diff "$R/p4base" "$R/p4tools" "$R/p4diff.tools"
./mklayer.sh "$R/p4diff.tools" layers/p4tools.tar; rm -rf "$R/p4diff.tools"

# ---- 3a. libraries/runtime layer of A: bookworm (point release) only -----------------------------------
cp -a "$R/p4tools" "$R/p4libsA"
chroot_open "$R/p4libsA"
apt_in "$R/p4libsA" update
apt_in "$R/p4libsA" install --no-install-recommends $P4_LIBS
chroot_close "$R/p4libsA"
pkgs "$R/p4libsA" > logs/p4libsA.pkgs

# ---- 3b. the same tree, then the pending bookworm-updates/-security upgrades (B) -----------------------
sleep 2                                    # B's rewrites get visibly later mtimes than A's
cp -a "$R/p4libsA" "$R/p4libsB"
src=$R/p4libsB/etc/apt/sources.list.d/p4-updates.list
printf 'deb %s bookworm-updates main\ndeb %s bookworm-security main\n' "$MIRROR" "$SECMIRROR" > "$src"
chroot_open "$R/p4libsB"
apt_in "$R/p4libsB" update
if [ "$P4_UPGRADE" = all ]; then apt_in "$R/p4libsB" upgrade
else apt_in "$R/p4libsB" install --only-upgrade $P4_UPGRADE; fi
rm -f "$src"
chroot_close "$R/p4libsB"
pkgs "$R/p4libsB" > logs/p4libsB.pkgs
diff logs/p4libsA.pkgs logs/p4libsB.pkgs | awk '/^>/{print $2}' > logs/p4.upgraded || true
echo "p4: $(wc -l < logs/p4.upgraded) packages upgraded in B:"; cat logs/p4.upgraded
[ -s logs/p4.upgraded ] || echo "WARNING: nothing was upgraded, imgB4 layer 3 differs from A's only in apt state" >&2

layer_diff "$R/p4tools" "$R/p4libsA" "$R/p4diff.libsA"
./mklayer.sh "$R/p4diff.libsA" layers/p4libsA.tar; rm -rf "$R/p4diff.libsA"
layer_diff "$R/p4tools" "$R/p4libsB" "$R/p4diff.libsB"
./mklayer.sh "$R/p4diff.libsB" layers/p4libsB.tar; rm -rf "$R/p4diff.libsB"

# ---- 4. app layer: the corpus's Rust service with full debug info (a large binary), rebuilt after a -----
#         two-line change (version bump + one more field in /stats). Own target dir: does not touch p3's.
(cd src/rustapp
 cp main_v2.rs src/main.rs
 export CARGO_TARGET_DIR="$PWD/target-p4" CARGO_PROFILE_RELEASE_DEBUG=true CARGO_PROFILE_RELEASE_OPT_LEVEL=2
 cargo build --release && cp target-p4/release/edge-agent ../../bin/edge-agent.p4a
 sed -e 's/"edge-agent 1.0.1"/"edge-agent 1.1.0"/' \
     -e 's/"count": g.len(), "avg": average(&g)/"count": g.len(), "avg": average(\&g), "version": VERSION_STRING/' \
     main_v2.rs > src/main.rs
 grep -q '"version": VERSION_STRING' src/main.rs || { echo "p4 source edit failed" >&2; exit 1; }
 cargo build --release && cp target-p4/release/edge-agent ../../bin/edge-agent.p4b)
for v in A B; do
  mkdir -p "$R/p4app$v/usr/local/bin" "$R/p4app$v/etc/edge-agent"
  install -m755 "bin/edge-agent.p4$(echo $v | tr AB ab)" "$R/p4app$v/usr/local/bin/edge-agent"
  printf 'listen = "0.0.0.0:8080"\ninterval = 30\n' > "$R/p4app$v/etc/edge-agent/config.toml"
  ./mklayer.sh "$R/p4app$v" layers/p4app$v.tar
done

# ---- OCI images and pairs --------------------------------------------------------------------------------
echo "baseA p4tools p4libsA p4appA" > pairs/p4/A.layers
echo "baseA p4tools p4libsB p4appB" > pairs/p4/B.layers
for img in imgA4 imgB4; do umoci rm --image "oci/corpus:$img" 2>/dev/null || true; done
add() { img=$1; shift; umoci new --image "oci/corpus:$img"
        for l in "$@"; do umoci raw add-layer --history.created_by "layer $l" --image "oci/corpus:$img" "layers/$l.tar"; done; }
add imgA4 $(cat pairs/p4/A.layers)
add imgB4 $(cat pairs/p4/B.layers)
umoci gc --layout oci/corpus
for s in A B; do : > pairs/p4/$s.tar
  for l in $(cat pairs/p4/$s.layers); do cat "layers/$l.tar" >> pairs/p4/$s.tar; done; done

# ---- summary: layer sizes and how much of the merged filesystem differs (logs/p4.stats) ----------------
python3 - pairs/p4/A.layers pairs/p4/B.layers <<'PY' | tee logs/p4.stats
import hashlib, os, sys, tarfile
def merged(layers_file):
    fs = {}
    for l in open(layers_file).read().split():
        with tarfile.open(f"layers/{l}.tar") as t:
            for m in t:
                name = os.path.normpath(m.name)
                base = os.path.basename(name); parent = os.path.dirname(name)
                if base.startswith('.wh.'):
                    gone = os.path.join(parent, base[4:])
                    for k in [k for k in fs if k == gone or k.startswith(gone + '/')]: del fs[k]
                    continue
                h = None
                if m.isfile(): h = hashlib.sha1(t.extractfile(m).read()).hexdigest()
                fs[name] = (m.type, m.mode, m.uid, m.gid, m.size, int(m.mtime), m.linkname, h)
    return fs
for side in ('A', 'B'):
    ls = open(f"pairs/p4/{side}.layers").read().split()
    sizes = ', '.join(f"{l} {os.path.getsize(f'layers/{l}.tar')/1e6:.1f} MB" for l in ls)
    print(f"img{side}4: {os.path.getsize(f'pairs/p4/{side}.tar')/1e6:.1f} MB uncompressed ({sizes})")
a, b = merged(sys.argv[1]), merged(sys.argv[2])
reg = lambda fs: {k: v for k, v in fs.items() if v[0] in (tarfile.REGTYPE, tarfile.AREGTYPE)}
ra, rb = reg(a), reg(b)
content = [k for k in rb if k in ra and rb[k][7] != ra[k][7]]
meta = [k for k in rb if k in ra and rb[k][7] == ra[k][7] and rb[k] != ra[k]]
added = [k for k in rb if k not in ra]; removed = [k for k in ra if k not in rb]
chg_bytes = sum(rb[k][4] for k in content + added)
tot_bytes = sum(v[4] for v in rb.values())
print(f"entries A {len(a)}, B {len(b)}; regular files A {len(ra)}, B {len(rb)}")
print(f"regular files of B: content changed {len(content)}, metadata only {len(meta)}, added {len(added)}, "
      f"removed {len(removed)}; changed+added = {100*(len(content)+len(added))/len(rb):.2f}% of files, "
      f"{chg_bytes/1e6:.1f} MB = {100*chg_bytes/tot_bytes:.2f}% of {tot_bytes/1e6:.1f} MB file bytes")
PY

if [ "${KEEP_ROOTFS:-0}" != 1 ]; then rm -rf "$R"/p4base "$R"/p4tools "$R"/p4libsA "$R"/p4libsB "$R"/p4appA "$R"/p4appB; fi
echo "p4 done: oci/corpus:imgA4 oci/corpus:imgB4, pairs/p4/{A,B}.tar"
