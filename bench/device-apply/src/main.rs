//! `device-apply`: applies deltas to source layers as a balena device does and prints what it
//! cost as one JSON object on stdout (logs go to stderr).

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use bru_device_apply::{
    apply_with, delta_stream, ApplyOptions, ApplyReport, Counters, DeltaKind, DeviceBasis,
    PipeModel, ReadModel,
};
use clap::{Parser, ValueEnum};
use flate2::read::MultiGzDecoder;
use serde::Serialize;
use serde_json::Value;

/// Apply balena v3 deltas as a device does (extracted layers, per-read file opens, librsync-go
/// command execution, synchronous pipe) and report counters and timings as JSON.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Uncompressed (or gzip'd) source layer tars, bottom layer first.
    #[arg(long, num_args = 1.., required_unless_present = "source_oci")]
    layers: Vec<PathBuf>,
    /// A delta: raw librsync stream, gzip'd stream, or delta layer blob (gzip'd tar). Repeatable.
    #[arg(long, required_unless_present = "delta_oci")]
    delta: Vec<PathBuf>,
    /// Expected DiffID (`sha256:…`) of each --delta's output, in the same order (`-`: none).
    #[arg(long = "diff-id")]
    diff_id: Vec<String>,
    /// Source image as an OCI layout `DIR[:TAG]` (instead of --layers).
    #[arg(long, conflicts_with = "layers", requires = "delta_oci")]
    source_oci: Option<String>,
    /// Delta image as an OCI layout `DIR[:TAG]` (instead of --delta); expected DiffIDs come from
    /// its `io.resin.delta.config` label, empty layers are skipped.
    #[arg(long, conflicts_with = "delta", requires = "source_oci")]
    delta_oci: Option<String>,
    /// Directory for the extracted layers (default: a temporary directory, removed at exit).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Apply each delta N times and report the median seconds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// How basis reads reach the per-layer readers.
    #[arg(long, value_enum, default_value_t = Model::GoBuffer)]
    read_model: Model,
    /// `goroutine`: output through a synchronous pipe to a hashing thread whose ends wait by
    /// spinning, a hand-off costing about what Go's `io.Pipe` between goroutines costs (as on a
    /// device); `thread`: the same pipe as an OS-thread rendezvous (~20× dearer per command);
    /// `inline`: hashed in the applying thread (no hand-off).
    #[arg(long, value_enum, default_value_t = PipeArg::Goroutine)]
    pipe: PipeArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PipeArg {
    Thread,
    Inline,
    Goroutine,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Model {
    GoBuffer,
    Direct,
}

/// One delta to apply.
#[derive(Debug)]
struct DeltaJob {
    name: String,
    path: PathBuf,
    expected: Option<String>,
}

#[derive(Debug, Serialize)]
struct Output {
    read_model: ReadModel,
    pipe_model: PipeModel,
    basis: BasisSummary,
    deltas: Vec<DeltaResult>,
    totals: Totals,
}

#[derive(Debug, Serialize)]
struct BasisSummary {
    layers: usize,
    bytes: u64,
    files: u64,
    segments: usize,
    extract_seconds: f64,
}

#[derive(Debug, Serialize)]
struct DeltaResult {
    name: String,
    kind: DeltaKind,
    /// True for an empty delta layer (shared with the target): nothing to apply.
    skipped: bool,
    diff_id: Option<String>,
    expected_diff_id: Option<String>,
    diff_id_ok: Option<bool>,
    counters: Counters,
    apply_seconds: f64,
    cpu_seconds: Option<f64>,
    runs_apply_seconds: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Totals {
    counters: Counters,
    apply_seconds: f64,
    cpu_seconds: Option<f64>,
    all_diff_ids_ok: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs everything; `Ok(false)` when a DiffID did not match.
fn run(args: Args) -> Result<bool> {
    let (layers, jobs) = match (&args.source_oci, &args.delta_oci) {
        (Some(src), Some(delta)) => oci_inputs(src, delta)?,
        _ => {
            ensure!(
                args.diff_id.is_empty() || args.diff_id.len() == args.delta.len(),
                "give one --diff-id per --delta ({} deltas, {} DiffIDs)",
                args.delta.len(),
                args.diff_id.len()
            );
            let jobs = args
                .delta
                .iter()
                .enumerate()
                .map(|(i, p)| DeltaJob {
                    name: p.display().to_string(),
                    path: p.clone(),
                    expected: args.diff_id.get(i).filter(|d| *d != "-").cloned(),
                })
                .collect();
            (args.layers.clone(), jobs)
        }
    };
    let tmp;
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("create a temporary workdir")?;
            tmp.path().to_path_buf()
        }
    };
    eprintln!(
        "extracting {} layers into {}",
        layers.len(),
        workdir.display()
    );
    let mut readers = Vec::new();
    for p in &layers {
        readers.push(open_maybe_gzip(p).with_context(|| format!("open layer {}", p.display()))?);
    }
    let basis = DeviceBasis::extract(readers, &workdir).context("extract the source layers")?;
    let summary = BasisSummary {
        layers: basis.layers().len(),
        bytes: basis.len(),
        files: basis.layers().iter().map(|l| l.file_count()).sum(),
        segments: basis.layers().iter().map(|l| l.segments().len()).sum(),
        extract_seconds: basis.extract_seconds(),
    };
    eprintln!(
        "basis: {} bytes, {} files, extracted in {:.2}s",
        summary.bytes, summary.files, summary.extract_seconds
    );
    let read_model = match args.read_model {
        Model::GoBuffer => ReadModel::GoBuffer,
        Model::Direct => ReadModel::Direct,
    };
    let pipe_model = match args.pipe {
        PipeArg::Thread => PipeModel::Thread,
        PipeArg::Inline => PipeModel::Inline,
        PipeArg::Goroutine => PipeModel::Goroutine,
    };
    let opts = ApplyOptions::with_read_model(read_model).pipe_model(pipe_model);
    let mut deltas = Vec::new();
    for job in &jobs {
        deltas.push(apply_job(&basis, job, &opts, args.repeat)?);
    }
    let mut totals = Totals {
        counters: Counters::default(),
        apply_seconds: 0.0,
        cpu_seconds: Some(0.0),
        all_diff_ids_ok: true,
    };
    for d in &deltas {
        totals.counters += d.counters;
        totals.apply_seconds += d.apply_seconds;
        totals.cpu_seconds = totals.cpu_seconds.zip(d.cpu_seconds).map(|(a, b)| a + b);
        totals.all_diff_ids_ok &= d.diff_id_ok != Some(false);
    }
    let ok = totals.all_diff_ids_ok;
    let out = Output {
        read_model,
        pipe_model,
        basis: summary,
        deltas,
        totals,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ok)
}

fn apply_job(
    basis: &DeviceBasis,
    job: &DeltaJob,
    opts: &ApplyOptions,
    repeat: u32,
) -> Result<DeltaResult> {
    let mut reports: Vec<ApplyReport> = Vec::new();
    let mut kind = DeltaKind::Raw;
    for _ in 0..repeat {
        let f = fs::File::open(&job.path)
            .with_context(|| format!("open delta {}", job.path.display()))?;
        let input = delta_stream(BufReader::with_capacity(64 * 1024, f))
            .with_context(|| format!("read delta {}", job.path.display()))?;
        kind = input.kind;
        let Some(stream) = input.stream else {
            eprintln!("{}: empty delta layer, skipped", job.name);
            return Ok(DeltaResult {
                name: job.name.clone(),
                kind,
                skipped: true,
                diff_id: None,
                expected_diff_id: job.expected.clone(),
                diff_id_ok: None,
                counters: Counters::default(),
                apply_seconds: 0.0,
                cpu_seconds: None,
                runs_apply_seconds: Vec::new(),
            });
        };
        let r =
            apply_with(basis, stream, opts).with_context(|| format!("apply delta {}", job.name))?;
        eprintln!(
            "{}: {} COPY, {} LITERAL, {} opens, {:.3}s",
            job.name,
            r.counters.copy_commands,
            r.counters.literal_commands,
            r.counters.file_opens,
            r.apply_seconds
        );
        reports.push(r);
    }
    let Some(first) = reports.first() else {
        bail!("no apply run");
    };
    let runs: Vec<f64> = reports.iter().map(|r| r.apply_seconds).collect();
    let cpu: Option<Vec<f64>> = reports.iter().map(|r| r.cpu_seconds).collect();
    let diff_id_ok = job.expected.as_ref().map(|e| *e == first.diff_id);
    if diff_id_ok == Some(false) {
        eprintln!("{}: DiffID mismatch, got {}", job.name, first.diff_id);
    }
    Ok(DeltaResult {
        name: job.name.clone(),
        kind,
        skipped: false,
        diff_id: Some(first.diff_id.clone()),
        expected_diff_id: job.expected.clone(),
        diff_id_ok,
        counters: first.counters,
        apply_seconds: median(runs.clone()),
        cpu_seconds: cpu.map(median),
        runs_apply_seconds: runs,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A file, decompressed on the fly if it starts with the gzip magic.
fn open_maybe_gzip(p: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = BufReader::with_capacity(256 * 1024, fs::File::open(p)?);
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(MultiGzDecoder::new(head.chain(f))))
    } else {
        Ok(Box::new(head.chain(f)))
    }
}

/// Source layer blobs and delta jobs from two OCI layouts.
fn oci_inputs(source: &str, delta: &str) -> Result<(Vec<PathBuf>, Vec<DeltaJob>)> {
    let (src_dir, src_manifest) = oci_manifest(source)?;
    let layers = blob_list(&src_dir, &src_manifest)?;
    let (delta_dir, delta_manifest) = oci_manifest(delta)?;
    let delta_layers = blob_list(&delta_dir, &delta_manifest)?;
    let config_digest = delta_manifest["config"]["digest"]
        .as_str()
        .context("delta manifest has no config digest")?;
    let config: Value = serde_json::from_slice(
        &fs::read(blob_path(&delta_dir, config_digest)?).context("read the delta config")?,
    )
    .context("parse the delta config")?;
    let target = config["config"]["Labels"]["io.resin.delta.config"]
        .as_str()
        .context("delta config has no io.resin.delta.config label")?;
    let target: Value =
        serde_json::from_str(target).context("parse the io.resin.delta.config label")?;
    let diff_ids: Vec<String> = target["rootfs"]["diff_ids"]
        .as_array()
        .context("target config has no rootfs.diff_ids")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    ensure!(
        diff_ids.len() == delta_layers.len(),
        "delta image has {} layers, target has {} DiffIDs",
        delta_layers.len(),
        diff_ids.len()
    );
    let jobs = delta_layers
        .into_iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (path, expected))| DeltaJob {
            name: format!("layer {i}"),
            path,
            expected: Some(expected),
        })
        .collect();
    Ok((layers, jobs))
}

/// The manifest of `DIR[:TAG]` (the only image if there is no tag).
fn oci_manifest(reference: &str) -> Result<(PathBuf, Value)> {
    let (dir, tag) = match reference.rsplit_once(':') {
        Some((d, t)) if !t.contains('/') && Path::new(d).is_dir() => (PathBuf::from(d), Some(t)),
        _ => (PathBuf::from(reference), None),
    };
    let index: Value = serde_json::from_slice(
        &fs::read(dir.join("index.json"))
            .with_context(|| format!("read {}/index.json", dir.display()))?,
    )
    .context("parse index.json")?;
    let manifests = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?;
    let entry = match tag {
        Some(t) => manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(t))
            .with_context(|| format!("no image tagged {t} in {}", dir.display()))?,
        None => {
            ensure!(
                manifests.len() == 1,
                "{} holds {} images: give a tag",
                dir.display(),
                manifests.len()
            );
            &manifests[0]
        }
    };
    let digest = entry["digest"]
        .as_str()
        .context("manifest without digest")?;
    let read = |d: &str| -> Result<Value> {
        serde_json::from_slice(&fs::read(blob_path(&dir, d)?)?).context("parse a manifest")
    };
    let mut manifest = read(digest)?;
    // An image index (multi-platform): follow its first manifest.
    if let Some(first) = manifest["manifests"].as_array().and_then(|m| m.first()) {
        let d = first["digest"]
            .as_str()
            .context("index entry without digest")?;
        manifest = read(d)?;
    }
    Ok((dir, manifest))
}

fn blob_list(dir: &Path, manifest: &Value) -> Result<Vec<PathBuf>> {
    manifest["layers"]
        .as_array()
        .context("manifest has no layers")?
        .iter()
        .map(|l| blob_path(dir, l["digest"].as_str().context("layer without digest")?))
        .collect()
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .with_context(|| format!("bad digest {digest}"))?;
    ensure!(
        !alg.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "bad digest {digest}"
    );
    Ok(dir.join("blobs").join(alg).join(hex))
}
