//! `balena-release-update delta create|apply|inspect`: the delta engine on the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bru_delta::{ApplyOptions, Bandwidth, ByteSize, CreateOptions, Event, Format, Progress, Step};
use bru_oci::{ImageReference, ImageSink, ImageSource, RegistryOptions};

use crate::registry_args::RegistryArgs;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Build, apply and inspect balena v3 delta images.
#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Build the v3 delta image that turns SOURCE into TARGET on a balena device.
    ///
    /// Every delta layer is applied in-process and must rebuild the target layer (verified
    /// against its DiffID) byte for byte, and every compressed layer must inflate to its
    /// delta, before anything is written. Prints a JSON description of the delta image.
    Create {
        /// The image the device has (oci:DIR[:TAG], docker-archive:FILE, docker://HOST/REPO[:TAG|@DIGEST]).
        #[arg(long, value_name = "IMAGE")]
        source: ImageReference,
        /// The image the device should end up with.
        #[arg(long, value_name = "IMAGE")]
        target: ImageReference,
        /// Where to write the delta image.
        #[arg(long, value_name = "IMAGE")]
        output: ImageReference,
        /// The devices' download bandwidth in MB/s: the delta minimises download time plus
        /// apply time on such a device (small: fewest bytes; large: cheapest apply).
        #[arg(long, value_name = "MBPS", default_value = "1")]
        device_bandwidth: Bandwidth,
        /// Minimise the download alone, whatever the apply costs the device.
        #[arg(long, conflicts_with = "device_bandwidth")]
        fewest_bytes: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Rebuild the target image from SOURCE and a delta image, as a device does.
    ///
    /// Every rebuilt layer is checked against the target's DiffID; the output has the
    /// target's exact config bytes (same image ID). Prints a JSON summary.
    Apply {
        /// The image the delta was built against.
        #[arg(long, value_name = "IMAGE")]
        source: ImageReference,
        /// The delta image.
        #[arg(long, value_name = "IMAGE")]
        delta: ImageReference,
        /// Where to write the rebuilt image.
        #[arg(long, value_name = "IMAGE")]
        output: ImageReference,
        /// Limit of the rebuilt bytes (uncompressed), for each layer and for all together,
        /// e.g. 20GiB or 500MB. Stops a gzip bomb or a delta that repeats the source endlessly
        /// [default: derived from the inputs: 4 x the source's uncompressed size, plus per
        /// delta layer 32 x its compressed size, at least 64 MiB].
        #[arg(long, value_name = "SIZE")]
        max_output_bytes: Option<ByteSize>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Describe a delta image as JSON: layers, common prefix, compressed sizes, labels.
    Inspect {
        /// The delta image.
        #[arg(value_name = "IMAGE")]
        image: ImageReference,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// Options shared by `create` and `apply`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Manifest flavour to write [default: oci for oci: outputs, docker otherwise].
    #[arg(long, value_enum)]
    format: Option<ManifestFlavour>,
    /// gzip level of the written layers, 1-9, or 0 for uncompressed tars
    /// [default: 9 for delta layers (smallest download), 0 for rebuilt layers (fast, as a device stores them)].
    #[arg(long, value_name = "0-9", value_parser = clap::value_parser!(u32).range(0..=9))]
    gzip_level: Option<u32>,
    /// Directory for temporary files (decompressed layers) [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Manifest flavours.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ManifestFlavour {
    /// Docker schema 2 (what balena-engine pushes).
    Docker,
    /// OCI image manifest.
    Oci,
}

fn format_for(output: &ImageReference, flavour: Option<ManifestFlavour>) -> Format {
    match flavour {
        Some(ManifestFlavour::Docker) => Format::Docker,
        Some(ManifestFlavour::Oci) => Format::Oci,
        None if matches!(output, ImageReference::OciLayout { .. }) => Format::Oci,
        None => Format::Docker,
    }
}

/// Opens two images to read and one to write, naming the failing reference.
async fn open_three(
    opts: &RegistryOptions,
    first: &ImageReference,
    second: &ImageReference,
    output: &ImageReference,
) -> anyhow::Result<(
    Box<dyn ImageSource>,
    Box<dyn ImageSource>,
    Box<dyn ImageSink>,
)> {
    let open = |r: &ImageReference| {
        let r = r.clone();
        async move {
            bru_oci::open_source(&r, opts)
                .await
                .with_context(|| format!("open {r}"))
        }
    };
    let sink = bru_oci::open_sink(output, opts)
        .await
        .with_context(|| format!("open {output}"))?;
    Ok((open(first).await?, open(second).await?, sink))
}

/// Runs a `delta` subcommand; prints its JSON result on stdout.
pub async fn run(cmd: DeltaCommand) -> anyhow::Result<()> {
    let json = match cmd {
        DeltaCommand::Create {
            source,
            target,
            output,
            device_bandwidth,
            fewest_bytes,
            common,
        } => {
            let opts = common.registry.options()?;
            let (src, dst, sink) = open_three(&opts, &source, &target, &output).await?;
            let create = CreateOptions {
                workdir: common.workdir,
                format: format_for(&output, common.format),
                gzip_level: common
                    .gzip_level
                    .unwrap_or(CreateOptions::default().gzip_level),
                device_bandwidth: (!fewest_bytes).then_some(device_bandwidth),
            };
            let info = bru_delta::create(&*src, &*dst, &*sink, &create, progress())
                .await
                .context("create delta")?;
            serde_json::to_string_pretty(&info)?
        }
        DeltaCommand::Apply {
            source,
            delta,
            output,
            max_output_bytes,
            common,
        } => {
            let opts = common.registry.options()?;
            let (src, d, sink) = open_three(&opts, &source, &delta, &output).await?;
            let apply = ApplyOptions {
                workdir: common.workdir,
                format: format_for(&output, common.format),
                gzip_level: common
                    .gzip_level
                    .unwrap_or(ApplyOptions::default().gzip_level),
                max_output_bytes: max_output_bytes.map(|b| b.0),
            };
            let info = bru_delta::apply(&*src, &*d, &*sink, &apply, progress())
                .await
                .context("apply delta")?;
            serde_json::to_string_pretty(&info)?
        }
        DeltaCommand::Inspect { image, registry } => {
            let opts = registry.options()?;
            let d = bru_oci::open_source(&image, &opts)
                .await
                .with_context(|| format!("open {image}"))?;
            let info = bru_delta::inspect(&*d).await.context("inspect delta")?;
            serde_json::to_string_pretty(&info)?
        }
    };
    println!("{json}");
    Ok(())
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
fn progress() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(Bars::default())
    } else {
        Arc::new(bru_delta::NoProgress)
    }
}

#[derive(Default)]
struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

fn step_label(step: Step) -> String {
    match step {
        Step::FetchSource => "fetching source layers".into(),
        Step::FetchTarget => "fetching target layers".into(),
        Step::Index => "indexing basis".into(),
        Step::Encode { layer } => format!("encoding layer {layer}"),
        Step::Rebuild { layer } => format!("rebuilding layer {layer}"),
        Step::Publish => "writing image".into(),
        _ => "working".into(),
    }
}

impl Progress for Bars {
    fn event(&self, event: Event) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        match event {
            Event::Begin { step, total } => {
                let bar = match total {
                    Some(total) => ProgressBar::new(total).with_style(
                        ProgressStyle::with_template(
                            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    ),
                    None => ProgressBar::new_spinner(),
                };
                bar.set_message(step_label(step));
                *current = Some(bar);
            }
            Event::Advance { done } => {
                if let Some(bar) = current.as_ref() {
                    bar.set_position(done);
                }
            }
            Event::End { .. } => {
                if let Some(bar) = current.take() {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}
