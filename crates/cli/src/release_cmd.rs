//! `release add` / `release list`: releases in an embedded store (`--store DIR`).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bru_delta::{Event, Progress, Step};
use bru_oci::RegistryOptions;
use bru_service::{
    absolutize, Bandwidth, BuildProgress, BuilderConfig, ClaimPolicy, Database, Embedded,
    ImageRecord, ServiceSpec,
};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Manage the releases and fleets of an embedded store.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Record a release: read each service's image (manifest digest, sizes) and store it.
    ///
    /// Prints the stored release as JSON. Relative oci:/docker-archive: paths are taken
    /// relative to the current directory.
    Add(AddArgs),
    /// List the releases of the store as JSON, oldest first.
    List(ListArgs),
    /// Set the download bandwidth of a fleet's devices: its deltas built from now on
    /// minimise download plus apply time at that bandwidth. Prints the setting as JSON.
    SetBandwidth(SetBandwidthArgs),
}

/// Arguments of `release set-bandwidth`.
#[derive(Debug, Args)]
pub struct SetBandwidthArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Fleet (application) name; created if it does not exist yet.
    #[arg(long, value_name = "NAME")]
    fleet: String,
    /// The devices' download bandwidth in MB/s.
    #[arg(long, value_name = "MBPS", required_unless_present = "default")]
    device_bandwidth: Option<Bandwidth>,
    /// Forget the fleet's bandwidth: use the builder's default (`serve --device-bandwidth`).
    #[arg(long, conflicts_with = "device_bandwidth")]
    default: bool,
}

/// The store directory and registry access.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store directory (database in DIR/state/, created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Keep the records in this database instead of DIR/state/store.sqlite:
    /// postgres://USER:PASSWORD@HOST[:PORT]/DB (shared by several servers) or sqlite:PATH.
    #[arg(
        long,
        value_name = "URL",
        env = crate::serve_cmd::DATABASE_ENV,
        hide_env_values = true
    )]
    database: Option<Database>,
    #[command(flatten)]
    registry: crate::registry_args::RegistryArgs,
}

impl StoreArgs {
    async fn open(&self) -> anyhow::Result<Embedded> {
        open_store_with(
            &self.store,
            self.registry.options()?,
            self.database.as_ref(),
        )
        .await
    }
}

/// Arguments of `release add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Fleet (application) name; created on first use.
    #[arg(long, value_name = "NAME")]
    fleet: String,
    /// Commit hash of the release.
    #[arg(long, value_name = "HASH")]
    commit: String,
    /// A service and its image: NAME=oci:DIR[:TAG], NAME=docker-archive:FILE or
    /// NAME=HOST/REPO[:TAG|@DIGEST]. Repeatable.
    #[arg(long = "service", value_name = "NAME=IMAGE", required = true)]
    services: Vec<ServiceSpec>,
}

/// Arguments of `release list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only the releases of this fleet.
    #[arg(long, value_name = "NAME")]
    fleet: Option<String>,
}

/// Opens the embedded backend of a store directory, with the records in `database`
/// (`None`: in the store directory).
pub async fn open_store_with(
    dir: &Path,
    registry: RegistryOptions,
    database: Option<&Database>,
) -> anyhow::Result<Embedded> {
    let mut config = BuilderConfig::new(dir);
    config.registry = registry;
    // One machine, short-lived processes: a build left behind by an interrupted run is
    // taken over after 30 s instead of the server's 5 min.
    config.heartbeat_interval = Duration::from_secs(5);
    if std::io::stderr().is_terminal() {
        config.progress = Some(Arc::new(TerminalBars::default()));
    }
    let policy = ClaimPolicy {
        stale_after: Duration::from_secs(30),
        ..ClaimPolicy::default()
    };
    Embedded::open_with(dir, database, config, policy)
        .await
        .with_context(|| match database {
            Some(database) => format!("open the store {} on {database}", dir.display()),
            None => format!("open the store {}", dir.display()),
        })
}

/// Runs a `release` subcommand and prints its JSON result on stdout.
pub async fn run(command: ReleaseCommand) -> anyhow::Result<()> {
    let json = match command {
        ReleaseCommand::Add(args) => {
            let cwd = std::env::current_dir().context("read the current directory")?;
            let mut services = Vec::new();
            for s in &args.services {
                services.push((s.name.clone(), absolutize(&s.name, &s.reference, &cwd)?));
            }
            let store = args.store.open().await?;
            let release = store
                .add_release(&args.fleet, &args.commit, &services)
                .await?;
            serde_json::to_string_pretty(&release)?
        }
        ReleaseCommand::List(args) => {
            let store = args.store.open().await?;
            let releases = store.store().list_releases(args.fleet.as_deref()).await?;
            serde_json::to_string_pretty(&releases)?
        }
        ReleaseCommand::SetBandwidth(args) => {
            let store = args.store.open().await?;
            store
                .store()
                .set_fleet_bandwidth(&args.fleet, args.device_bandwidth)
                .await?;
            serde_json::to_string_pretty(&serde_json::json!({
                "fleet": args.fleet,
                "device_bandwidth": args.device_bandwidth.map(Bandwidth::bytes_per_second),
            }))?
        }
    };
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{json}").context("write the result")?;
    Ok(())
}

/// One progress bar per delta build on stderr.
#[derive(Debug, Default)]
struct TerminalBars {
    bars: MultiProgress,
}

impl BuildProgress for TerminalBars {
    fn start(&self, src: &ImageRecord, dest: &ImageRecord) -> Arc<dyn Progress> {
        let style = ProgressStyle::with_template(
            "{prefix:20} {msg:22} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = self.bars.add(ProgressBar::new(0).with_style(style));
        bar.set_prefix(format!("{} {}->{}", dest.service_name, src.id, dest.id));
        Arc::new(BuildBar(bar))
    }
}

/// The bar of one build: each step restarts it.
struct BuildBar(ProgressBar);

impl Progress for BuildBar {
    fn event(&self, event: Event) {
        match event {
            Event::Begin { step, total } => {
                self.0.set_message(match step {
                    Step::FetchSource => "reading source".to_string(),
                    Step::FetchTarget => "reading target".to_string(),
                    Step::Index => "indexing".to_string(),
                    Step::Encode { layer } => format!("encoding layer {layer}"),
                    Step::Publish => "writing delta".to_string(),
                    _ => "working".to_string(),
                });
                self.0.set_length(total.unwrap_or(0));
                self.0.set_position(0);
            }
            Event::Advance { done } => self.0.set_position(done),
            Event::End {
                step: Step::Publish,
            } => self.0.finish_and_clear(),
            _ => {}
        }
    }
}
