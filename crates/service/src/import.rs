//! Release import: resolving image references to the facts a store records.

use std::path::Path;
use std::str::FromStr;

use bru_oci::{open_source, ImageReference, RegistryOptions};
use serde::Deserialize;

use crate::store::NewImage;
use crate::ServiceError;

/// A service of a release and its image, written `NAME=IMAGE`: `api=oci:./layout:v2`,
/// `api=docker-archive:api.tar`, `api=registry.local/api:v2`. Both halves are checked when
/// parsed; the image is kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service name.
    pub name: String,
    /// The image reference, as written (a valid [`ImageReference`]).
    pub reference: String,
}

impl FromStr for ServiceSpec {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, reference)) = s.split_once('=') else {
            return Err(ServiceError::InvalidInput {
                what: "service",
                reason: format!(
                    "expected NAME=IMAGE, got {:?}",
                    s.chars().take(200).collect::<String>()
                ),
            });
        };
        check_service_name(name)?;
        reference
            .parse::<ImageReference>()
            .map_err(|source| ServiceError::InvalidReference {
                service: name.to_string(),
                source,
            })?;
        Ok(ServiceSpec {
            name: name.to_string(),
            reference: reference.to_string(),
        })
    }
}

/// Parses `reference` and makes a relative `oci:` or `docker-archive:` path absolute
/// against `base`. Registry references are returned as given.
pub fn absolutize(service: &str, reference: &str, base: &Path) -> Result<String, ServiceError> {
    let parsed: ImageReference =
        reference
            .parse()
            .map_err(|source| ServiceError::InvalidReference {
                service: service.to_string(),
                source,
            })?;
    Ok(match parsed {
        ImageReference::OciLayout { path, tag } if path.is_relative() => {
            ImageReference::OciLayout {
                path: base.join(path),
                tag,
            }
            .to_string()
        }
        ImageReference::DockerArchive { path, repo_tag } if path.is_relative() => {
            ImageReference::DockerArchive {
                path: base.join(path),
                repo_tag,
            }
            .to_string()
        }
        _ => reference.to_string(),
    })
}

/// Reads the image `reference` of `service` (manifest and config only) and returns what a
/// store records: the manifest digest and the bytes of a full pull (config plus compressed
/// layers).
pub async fn resolve_image(
    service: &str,
    reference: &str,
    registry: &RegistryOptions,
) -> Result<NewImage, ServiceError> {
    check_service_name(service)?;
    let parsed: ImageReference =
        reference
            .parse()
            .map_err(|source| ServiceError::InvalidReference {
                service: service.to_string(),
                source,
            })?;
    let err = |source| ServiceError::Image {
        reference: reference.to_string(),
        source,
    };
    let source = open_source(&parsed, registry).await.map_err(err)?;
    let image = source.image().await.map_err(err)?;
    let image_size = image
        .manifest
        .layers
        .iter()
        .fold(image.manifest.config.size, |sum, l| {
            sum.saturating_add(l.size)
        });
    Ok(NewImage {
        service_name: service.to_string(),
        location: reference.to_string(),
        content_hash: image.manifest_digest.to_string(),
        image_size,
    })
}

/// Checks a fleet name, a commit and service names before anything is read or written.
pub fn check_release(fleet: &str, commit: &str, services: &[&str]) -> Result<(), ServiceError> {
    if fleet.is_empty() || fleet.len() > 128 || fleet.chars().any(char::is_control) {
        return Err(ServiceError::InvalidInput {
            what: "fleet",
            reason: "expected 1-128 printable characters".into(),
        });
    }
    if commit.is_empty() || commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(ServiceError::InvalidInput {
            what: "commit",
            reason: format!("expected 1-64 ASCII letters and digits, got {commit:?}"),
        });
    }
    if services.is_empty() {
        return Err(ServiceError::InvalidInput {
            what: "release",
            reason: "a release needs at least one service".into(),
        });
    }
    for (i, s) in services.iter().enumerate() {
        check_service_name(s)?;
        if services[..i].contains(s) {
            return Err(ServiceError::InvalidInput {
                what: "service",
                reason: format!("{s} is given twice"),
            });
        }
    }
    Ok(())
}

fn check_service_name(s: &str) -> Result<(), ServiceError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidInput {
            what: "service",
            reason: format!("expected 1-63 letters, digits, '_', '-' or '.', got {s:?}"),
        })
    }
}

/// A declarative fleet file (`fleet.json` in a store directory): releases imported, in
/// order, when the store is first opened. Relative image paths are relative to the file.
///
/// ```json
/// {"fleet": "demo",
///  "releases": [{"commit": "0123abcd", "services": {"api": "oci:images:api-1"}}]}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Fleet name.
    pub fleet: String,
    /// Releases, oldest first (they get ids in this order on a fresh store).
    pub releases: Vec<FleetRelease>,
}

/// One release of a [`FleetFile`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRelease {
    /// Commit hash.
    pub commit: String,
    /// Service name to image reference.
    pub services: std::collections::BTreeMap<String, String>,
}

impl FleetFile {
    /// Reads and parses a fleet file.
    pub fn read(path: &Path) -> Result<FleetFile, ServiceError> {
        let bytes = std::fs::read(path).map_err(ServiceError::io(path))?;
        serde_json::from_slice(&bytes).map_err(|e| ServiceError::FleetFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_layout_paths_become_absolute() {
        let base = Path::new("/srv/demo");
        assert_eq!(
            absolutize("a", "oci:images:api-1", base).unwrap(),
            "oci:/srv/demo/images:api-1"
        );
        assert_eq!(
            absolutize("a", "oci:/abs/images", base).unwrap(),
            "oci:/abs/images"
        );
        assert_eq!(
            absolutize("a", "127.0.0.1:5055/app:v1", base).unwrap(),
            "127.0.0.1:5055/app:v1"
        );
        assert!(matches!(
            absolutize("a", "not a reference", base),
            Err(ServiceError::InvalidReference { .. })
        ));
    }

    #[test]
    fn release_arguments_are_checked() {
        assert!(check_release("demo", "abc123", &["api", "web"]).is_ok());
        for (fleet, commit, services) in [
            ("", "abc123", vec!["api"]),
            ("demo", "", vec!["api"]),
            ("demo", "abc 123", vec!["api"]),
            ("demo", "abc123", vec![]),
            ("demo", "abc123", vec!["api", "api"]),
            ("demo", "abc123", vec!["a/b"]),
        ] {
            assert!(
                matches!(
                    check_release(fleet, commit, &services),
                    Err(ServiceError::InvalidInput { .. })
                ),
                "{fleet:?} {commit:?} {services:?}"
            );
        }
    }

    #[test]
    fn service_specs_parse_and_bad_ones_say_why() {
        let spec: ServiceSpec = "api=oci:./layout:v2".parse().unwrap();
        assert_eq!(spec.name, "api");
        assert_eq!(spec.reference, "oci:./layout:v2");
        let spec: ServiceSpec = "db=registry.local:5000/db@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        assert_eq!(spec.name, "db");
        for bad in ["api", "=oci:x", "a b=oci:x", "api=", "api=oci:"] {
            let err = bad.parse::<ServiceSpec>().unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
        let err = "api".parse::<ServiceSpec>().unwrap_err().to_string();
        assert!(err.contains("NAME=IMAGE"), "{err}");
    }
}
