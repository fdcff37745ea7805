//! balenaCloud / openBalena API client for balena-release-update.
//!
//! * [`Settings`] finds the API and delta URLs and the data directory exactly like the balena
//!   CLI (`~/.balenarc.yml`, `./balenarc.yml`, `BALENARC_*` variables, derived URLs).
//! * [`Token`] reads `<dataDirectory>/token` with the rules of balena-auth.
//! * [`BalenaClient`] sends the pine v7 queries of `@balena/release-update` byte for byte
//!   (see [`pine`]) and triggers deltas on the delta server. It implements the
//!   [`bru_core::ReleaseSource`] and [`bru_core::DeltaService`] traits.
//! * Against openBalena (no `delta` resource, no delta server; detected, or chosen with the
//!   `deltaApi` setting, see [`DeltaApi`]) it reads releases and images from the API and
//!   delta states and deltas from this project's `serve` at `deltaUrl`, authorised by a
//!   registry token it obtains from the API's `/auth/v1/token` with the user's token, as a
//!   device does.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bru_balena::{BalenaClient, Settings};
//! use bru_core::{get_update_info, ReleaseRef};
//!
//! let settings = Settings::from_process_env()?;
//! let client = BalenaClient::new(&settings)?;
//! let info = get_update_info(&ReleaseRef::Id(900813), &ReleaseRef::Id(900814), &client).await?;
//! println!("{}", serde_json::to_string_pretty(&info)?);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod client;
mod error;
pub mod pine;
mod settings;
mod token;
pub mod wire;

pub use client::{BalenaClient, ClientConfig};
pub use error::SettingsError;
pub use settings::{DeltaApi, Settings};
pub use token::Token;
