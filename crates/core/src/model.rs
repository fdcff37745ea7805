//! Backend-neutral domain model: what a [`crate::ReleaseSource`] returns.

use std::fmt;

/// How a release is named by the user: a numeric id or a commit hash prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRef {
    /// A release id.
    Id(u64),
    /// A prefix of the release commit hash (matched with `startswith`).
    Commit(String),
}

impl fmt::Display for ReleaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseRef::Id(id) => write!(f, "{id}"),
            ReleaseRef::Commit(prefix) => f.write_str(prefix),
        }
    }
}

/// A release argument that is neither an id nor a commit prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a release id or commit prefix: {0}")]
pub struct BadReleaseRef(pub String);

impl std::str::FromStr for ReleaseRef {
    type Err = BadReleaseRef;

    /// As the original tool reads `--from-release`/`--to-release`: an id if the text is a
    /// canonical decimal integer up to 2^53 - 1 (JavaScript's safe integers; `0123` is not
    /// canonical), else a commit prefix if it holds at least 6 ASCII alphanumerics in a row.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
        let canonical = s
            .parse::<u64>()
            .ok()
            .filter(|n| n.to_string() == s && *n <= MAX_SAFE_INTEGER);
        if let Some(id) = canonical {
            return Ok(ReleaseRef::Id(id));
        }
        let longest_run = s
            .split(|c: char| !c.is_ascii_alphanumeric())
            .map(str::len)
            .max()
            .unwrap_or(0);
        if longest_run >= 6 {
            return Ok(ReleaseRef::Commit(s.to_owned()));
        }
        Err(BadReleaseRef(s.chars().take(128).collect()))
    }
}

/// A successful release with the images of its services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Release id.
    pub id: u64,
    /// Full commit hash.
    pub commit: String,
    /// Id of the application (fleet) the release belongs to.
    pub application_id: u64,
    /// One entry per service.
    pub images: Vec<ServiceImage>,
}

/// The image a release uses for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceImage {
    /// Service name from the composition.
    pub service_name: String,
    /// Image id.
    pub image_id: u64,
}

/// A successfully built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Image id.
    pub id: u64,
    /// Registry location of the image.
    pub location: String,
    /// Content hash (`sha256:…`) when known.
    pub content_hash: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// A delta row (version 3) between two images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Delta id.
    pub id: u64,
    /// Build status.
    pub status: DeltaStatus,
    /// Delta format version.
    pub version: u32,
    /// Registry location of the delta image, when built.
    pub location: Option<String>,
    /// Size of the delta in bytes.
    pub size: u64,
}

/// Status of a delta row, as balena's `delta` resource and the embedded store record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaStatus {
    /// A builder owns the row and bumps its heartbeat while it works.
    Running,
    /// The delta image exists.
    Success,
    /// The build failed for a reason that retrying soon will not fix.
    Failed,
}

impl DeltaStatus {
    /// The wire and database spelling: `running`, `success` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaStatus::Running => "running",
            DeltaStatus::Success => "success",
            DeltaStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DeltaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delta status that is not one of [`DeltaStatus`]'s spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delta status {0:?}")]
pub struct UnknownDeltaStatus(pub String);

impl std::str::FromStr for DeltaStatus {
    type Err = UnknownDeltaStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(DeltaStatus::Running),
            "success" => Ok(DeltaStatus::Success),
            "failed" => Ok(DeltaStatus::Failed),
            other => Err(UnknownDeltaStatus(other.chars().take(64).collect())),
        }
    }
}

/// The answer of a [`crate::DeltaService`] to a delta request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaTrigger {
    /// The delta exists.
    Ready,
    /// The delta is being built; ask again later.
    Building,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_refs_parse_like_the_original_and_print_back() {
        for (text, want) in [
            ("900813", ReleaseRef::Id(900813)),
            ("9007199254740991", ReleaseRef::Id(9_007_199_254_740_991)),
            (
                "9007199254740992",
                ReleaseRef::Commit("9007199254740992".into()),
            ),
            ("0123456", ReleaseRef::Commit("0123456".into())),
            ("84d3d8f", ReleaseRef::Commit("84d3d8f".into())),
        ] {
            let parsed: ReleaseRef = text.parse().unwrap();
            assert_eq!(parsed, want);
            assert_eq!(parsed.to_string(), text);
        }
        for bad in ["", "abc", "0123", "ab-cd-ef", "1234x"] {
            assert_eq!(bad.parse::<ReleaseRef>(), Err(BadReleaseRef(bad.into())));
        }
    }
}
