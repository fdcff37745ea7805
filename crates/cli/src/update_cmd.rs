//! The main job: describe (and optionally prepare and wait for) an update.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bru_balena::{BalenaClient, Settings};
use bru_core::{get_update_info, prepare_update, PrepareOptions, ReleaseRef, UpdateInfo};
use bru_service::Database;
use clap::Args;

/// Exit code when waiting timed out.
const EXIT_TIMEOUT: u8 = 124;

/// Flags of the main job.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Source release: a release id, or a commit hash prefix (6-32 alphanumerics).
    #[arg(long, value_name = "RELEASE")]
    from_release: Option<String>,

    /// Target release: a release id, or a commit hash prefix (6-32 alphanumerics).
    #[arg(long, value_name = "RELEASE")]
    to_release: Option<String>,

    /// Ask the delta server for the missing deltas (with --store: build them here).
    #[arg(long)]
    prepare: bool,

    /// Prepare, then wait until the update is ready.
    #[arg(long)]
    wait: bool,

    /// Prepare and wait at most N seconds (0 times out at once).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    timeout: Option<String>,

    /// Seconds between two checks while waiting (fractions allowed) [default: 20; 1 with
    /// --store].
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    poll_interval: Option<String>,

    /// Work offline on an embedded store directory instead of balenaCloud: releases from
    /// DIR (see `release add`), deltas built in-process.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,

    /// With --store: the records are in this database instead of DIR/state/store.sqlite:
    /// postgres://USER:PASSWORD@HOST[:PORT]/DB (the one `serve` and `release` use) or
    /// sqlite:PATH. With --store, also read from the environment variable BRU_DATABASE_URL.
    #[arg(long, value_name = "URL")]
    database: Option<Database>,

    /// With --store: how to reach the registries of the store's images.
    #[command(flatten)]
    registry: crate::registry_args::RegistryArgs,
}

/// What the flags ask for, validated.
#[derive(Debug, PartialEq)]
struct Job {
    from: ReleaseRef,
    to: ReleaseRef,
    prepare: Option<PrepareOptions>,
}

impl UpdateArgs {
    fn job(self) -> anyhow::Result<Job> {
        let (Some(from), Some(to)) = (self.from_release, self.to_release) else {
            bail!("Must specify both a source and a target release");
        };
        let from = parse_release(&from, "--from-release")?;
        let to = parse_release(&to, "--to-release")?;
        let timeout = self
            .timeout
            .map(|t| {
                parse_integer(&t)
                    .map(Duration::from_secs)
                    .ok_or_else(|| anyhow::anyhow!("Invalid value for --timeout option: {t}"))
            })
            .transpose()?;
        let default_poll = if self.store.is_some() { "1" } else { "20" };
        let poll_text = self.poll_interval.as_deref().unwrap_or(default_poll);
        let poll_interval = poll_text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| {
                anyhow::anyhow!("Invalid value for --poll-interval option: {poll_text}")
            })?;
        let wait = self.wait || timeout.is_some();
        let prepare = (self.prepare || wait).then(|| PrepareOptions {
            wait,
            timeout,
            poll_interval,
            // In-process builds: a failed or abandoned build shows up at the next poll.
            retrigger_interval: match self.store {
                Some(_) => poll_interval,
                None => PrepareOptions::default().retrigger_interval,
            },
        });
        Ok(Job { from, to, prepare })
    }
}

/// A canonical non-negative decimal integer (what `parseInt` round-trips).
fn parse_integer(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().filter(|n| n.to_string() == s)
}

/// A release argument ([`ReleaseRef`]'s `FromStr`), with the original's error message.
fn parse_release(value: &str, flag: &str) -> anyhow::Result<ReleaseRef> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("Invalid value for {flag} option: {value}"))
}

/// Runs the main job and prints the JSON report on stdout.
pub async fn run(args: UpdateArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.clone();
    // BRU_REGISTRY_CREDS may be set for other commands; the flags that name hosts or a
    // platform make no sense without a store.
    if store.is_none()
        && (!args.registry.insecure.is_empty() || args.registry.platform != "linux/amd64")
    {
        bail!("--insecure-registry and --platform need --store");
    }
    if store.is_none() && args.database.is_some() {
        bail!("--database needs --store");
    }
    let registry = args.registry.options()?;
    let database = match &args.database {
        Some(database) => Some(database.clone()),
        // Like `serve` and `release`, but only where it is used: without --store, a
        // BRU_DATABASE_URL set for the server is none of this command's business.
        None if store.is_some() => database_from_env()?,
        None => None,
    };
    let job = args.job()?;
    let result = match store {
        Some(dir) => {
            let backend =
                crate::release_cmd::open_store_with(&dir, registry, database.as_ref()).await?;
            let result = match &job.prepare {
                None => get_update_info(&job.from, &job.to, &backend).await,
                Some(options) => prepare_update(&job.from, &job.to, &backend, options).await,
            };
            let result = match (&job.prepare, result) {
                // --prepare without --wait: finish the builds started here, then report.
                (Some(options), Ok(info)) if !options.wait => {
                    backend.wait_for_builds().await;
                    let (from, to) = (info.from_release.id, info.to_release.id);
                    get_update_info(&ReleaseRef::Id(from), &ReleaseRef::Id(to), &backend).await
                }
                (_, result) => result,
            };
            // Builds still running end with this process: give their rows up, so that the
            // next run builds them at once instead of reporting them as preparing.
            if let Err(e) = backend.abandon_builds().await {
                tracing::warn!(error = %e, "cannot give up unfinished builds");
            }
            result
        }
        None => {
            let settings = Settings::from_process_env()?;
            tracing::debug!(?settings, "settings");
            let client = BalenaClient::new(&settings)?;
            match &job.prepare {
                None => get_update_info(&job.from, &job.to, &client).await,
                Some(options) => prepare_update(&job.from, &job.to, &client, options).await,
            }
        }
    };
    match result {
        Ok(info) => {
            print_report(&info)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(bru_core::Error::Timeout { waited, last }) => {
            print_report(&last)?;
            let error = bru_core::Error::Timeout { waited, last };
            eprintln!("ERROR: {error}");
            Ok(ExitCode::from(EXIT_TIMEOUT))
        }
        Err(e) => Err(e.into()),
    }
}

/// The database named by BRU_DATABASE_URL, if it is set and not empty. Its value is never
/// shown: it may carry a password.
fn database_from_env() -> anyhow::Result<Option<Database>> {
    let env = crate::serve_cmd::DATABASE_ENV;
    match std::env::var_os(env) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => {
            let value = value
                .to_str()
                .ok_or_else(|| anyhow::anyhow!("Invalid value for {env}: not UTF-8"))?;
            let database = value
                .parse()
                .map_err(|e| anyhow::anyhow!("Invalid value for {env}: {e}"))?;
            Ok(Some(database))
        }
    }
}

/// Pretty JSON with two-space indentation and a final newline, like
/// `JSON.stringify(x, null, 2)` followed by `console.log`.
fn print_report(info: &UpdateInfo) -> anyhow::Result<()> {
    use std::io::Write as _;
    let json = serde_json::to_string_pretty(info)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{json}").context("write the report")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(s: &str) -> Result<ReleaseRef, String> {
        parse_release(s, "--from-release").map_err(|e| e.to_string())
    }

    #[test]
    fn release_arguments_parse_like_the_original() {
        assert_eq!(release("900813"), Ok(ReleaseRef::Id(900813)));
        // All-digit prefixes that round-trip are ids; others are commits.
        assert_eq!(release("1234567"), Ok(ReleaseRef::Id(1234567)));
        assert_eq!(release("0123456"), Ok(ReleaseRef::Commit("0123456".into())));
        assert_eq!(release("84d3d8f"), Ok(ReleaseRef::Commit("84d3d8f".into())));
        assert_eq!(
            release("foo-bar-abcdef"),
            Ok(ReleaseRef::Commit("foo-bar-abcdef".into()))
        );
        let sha = "84d3d8f43eddd81b1699552dd39338f8dbf8b11e";
        assert_eq!(release(sha), Ok(ReleaseRef::Commit(sha.into())));
        assert_eq!(
            release("12345678901234567890"),
            Ok(ReleaseRef::Commit("12345678901234567890".into()))
        );
        for bad in ["abc", "", "1234x", "ab-cd-ef", "0123"] {
            assert_eq!(
                release(bad),
                Err(format!("Invalid value for --from-release option: {bad}"))
            );
        }
    }

    fn args(list: &[&str]) -> UpdateArgs {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: UpdateArgs,
        }
        let mut argv = vec!["x"];
        argv.extend_from_slice(list);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn flags_imply_each_other() {
        let base = ["--from-release", "1", "--to-release", "2"];
        let job = args(&base).job().unwrap();
        assert_eq!(job.prepare, None);
        let job = args(&[&base[..], &["--prepare"]].concat()).job().unwrap();
        assert!(!job.prepare.unwrap().wait);
        let job = args(&[&base[..], &["--wait"]].concat()).job().unwrap();
        let options = job.prepare.unwrap();
        assert!(options.wait);
        assert_eq!(options.timeout, None);
        assert_eq!(options.poll_interval, Duration::from_secs(20));
        let job = args(&[&base[..], &["--timeout", "0", "--poll-interval", "0.05"]].concat())
            .job()
            .unwrap();
        let options = job.prepare.unwrap();
        assert!(options.wait);
        assert_eq!(options.timeout, Some(Duration::ZERO));
        assert_eq!(options.poll_interval, Duration::from_millis(50));
        // In-process builds are polled every second unless told otherwise.
        let job = args(&[&base[..], &["--wait", "--store", "dir"]].concat())
            .job()
            .unwrap();
        let options = job.prepare.unwrap();
        assert_eq!(options.poll_interval, Duration::from_secs(1));
        assert_eq!(options.retrigger_interval, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_are_reported_like_the_original() {
        let err = |list: &[&str]| args(list).job().unwrap_err().to_string();
        assert_eq!(
            err(&["--from-release", "1"]),
            "Must specify both a source and a target release"
        );
        let base = ["--from-release", "1", "--to-release", "2"];
        assert_eq!(
            err(&[&base[..], &["--timeout", "1.5"]].concat()),
            "Invalid value for --timeout option: 1.5"
        );
        assert_eq!(
            err(&[&base[..], &["--timeout", "-1"]].concat()),
            "Invalid value for --timeout option: -1"
        );
        for bad in ["0", "-1", "x", "inf", "NaN"] {
            assert_eq!(
                err(&[&base[..], &["--poll-interval", bad]].concat()),
                format!("Invalid value for --poll-interval option: {bad}")
            );
        }
        assert_eq!(
            err(&["--from-release", "1", "--to-release", "abc"]),
            "Invalid value for --to-release option: abc"
        );
    }
}
