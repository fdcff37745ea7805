//! `balena-release-update`: describe, prepare and wait for the update between two releases
//! of a balena fleet.
//!
//! `main` only parses the command line, sets up logging, builds the runtime and hands over
//! to the module of the chosen command.

// Doc comments on the clap types are `--help` text, not rustdoc: brackets there are literal.
#![allow(rustdoc::broken_intra_doc_links)]

mod delta_cmd;
mod registry_args;
mod release_cmd;
mod serve_cmd;
mod update_cmd;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    error (bad arguments, API error, release not found, ...)
  124  --wait/--timeout: the update was not ready in time; the last state is printed";

/// Describe, prepare and wait for the update between two releases of a balena fleet.
///
/// Prints a JSON report of the update from --from-release to --to-release: per service,
/// the source and target images, the delta that connects them and whether it is ready.
#[derive(Debug, Parser)]
#[command(
    name = "balena-release-update",
    version,
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    update: update_cmd::UpdateArgs,

    /// Print the version.
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,

    /// Log more on stderr (repeat for more; RUST_LOG overrides).
    #[arg(long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands; without one, the top-level flags describe or prepare an update.
#[derive(Debug, Subcommand)]
enum Command {
    /// Build, apply and inspect balena v3 delta images (no Docker daemon needed).
    #[command(subcommand)]
    Delta(Box<delta_cmd::DeltaCommand>),
    /// Record and list releases in an embedded store (for --store).
    #[command(subcommand)]
    Release(release_cmd::ReleaseCommand),
    /// Serve the supervisor's delta endpoint (/api/v3/delta) over an embedded store.
    Serve(serve_cmd::ServeArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ERROR: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None => runtime.block_on(update_cmd::run(cli.update)),
        Some(Command::Delta(delta)) => runtime
            .block_on(delta_cmd::run(*delta))
            .map(|()| ExitCode::SUCCESS),
        Some(Command::Release(release)) => runtime
            .block_on(release_cmd::run(release))
            .map(|()| ExitCode::SUCCESS),
        // The server builds its own multi-threaded runtime.
        Some(Command::Serve(serve)) => serve_cmd::run(serve),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print and exit 0; other parse errors print `ERROR: …` and exit 1.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::UnknownArgument => {
            let arg = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(arg)) => arg.clone(),
                _ => String::new(),
            };
            eprintln!("ERROR: invalid option: {arg}");
            ExitCode::FAILURE
        }
        _ => {
            // The message and its indented details (e.g. the missing arguments), up to the
            // blank line before the usage.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            eprintln!("ERROR: {}", message.trim_start_matches("error: "));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; default level `warn`, raised by `--verbose`, overridden by `RUST_LOG`.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
