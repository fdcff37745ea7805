//! The registry flags, one set for every command that reads or writes images.

use bru_oci::RegistryOptions;
use clap::Args;

/// How to reach registries: plain HTTP hosts, credentials, the platform of multi-platform
/// images. Flattened into every command that reads or writes images.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Speak plain HTTP to this registry (HOST:PORT); repeatable. HTTPS otherwise.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,
    /// Registry credentials USER:PASSWORD for reading images and pushing deltas
    /// [default: the registry's entry in ~/.docker/config.json].
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "BRU_REGISTRY_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// Platform to pick from a multi-platform image: OS/ARCH[/VARIANT].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", default_value = "linux/amd64")]
    pub platform: String,
}

impl RegistryArgs {
    /// The library's options from the flags; `ERROR`s name the flag.
    pub fn options(&self) -> anyhow::Result<RegistryOptions> {
        let mut opts = RegistryOptions::default();
        opts.insecure = self.insecure.clone();
        opts.credentials = self
            .creds
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--creds: {e}"))?;
        opts.platform = self
            .platform
            .parse()
            .map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
        Ok(opts)
    }
}
