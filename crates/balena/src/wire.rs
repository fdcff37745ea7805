//! Pine v7 response shapes of the release-update queries: deserialised leniently by the
//! client (unknown fields ignored, sizes as numbers or strings) and serialised by the delta
//! server's read API (`bru-server`), so both speak one definition of the shapes.
#![allow(non_snake_case)]

use serde::{Deserialize, Deserializer, Serialize};

use bru_core::{Delta, Image, Release, ServiceImage};

/// A non-expanded navigation: `{"__id": 1234}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NavId {
    /// The id of the resource navigated to.
    pub __id: u64,
}

/// A release with its images expanded as balena-sdk's `getWithImageDetails` asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRelease {
    /// Release id.
    pub id: u64,
    /// Full commit hash.
    pub commit: String,
    /// Always `success` in what the release-update queries select (the filter asks for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The fleet.
    pub belongs_to__application: NavId,
    /// The images of the release, one per service.
    #[serde(default)]
    pub release_image: Vec<WireReleaseImage>,
    /// The expanded creator (balenaCloud); an empty list where nobody is recorded. Absent
    /// on openBalena, whose release has no such navigation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_created_by__user: Option<Vec<serde_json::Value>>,
}

/// One `release_image` entry: the expanded image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReleaseImage {
    /// The image (a one-element list, as pine expands).
    pub image: Vec<WireImageRef>,
}

/// An image as expanded in a release: its id and service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireImageRef {
    /// Image id.
    pub id: u64,
    /// The service (a one-element list).
    pub is_a_build_of__service: Vec<WireService>,
}

/// A service as expanded in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireService {
    /// Service name.
    pub service_name: String,
}

/// An image as the release-update query selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireImage {
    /// Image id.
    pub id: u64,
    /// Registry location.
    pub is_stored_at__image_location: String,
    /// Manifest digest, when known.
    #[serde(default)]
    pub content_hash: Option<String>,
    /// Bytes of a full pull (a number here; openBalena sends a string, accepted).
    #[serde(default, deserialize_with = "big_integer")]
    pub image_size: u64,
}

/// A delta row as the release-update query selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDelta {
    /// Delta id.
    pub id: u64,
    /// Build status.
    pub status: bru_core::DeltaStatus,
    /// Delta format version.
    pub version: u32,
    /// Where the delta image is, once built.
    #[serde(default)]
    pub is_stored_at__location: Option<String>,
    /// Bytes a device downloads (a number here; a string is accepted).
    #[serde(default, deserialize_with = "big_integer")]
    pub size: u64,
}

impl From<&Release> for WireRelease {
    /// The shape a balenaCloud-like API sends for a successful release without a recorded
    /// creator.
    fn from(r: &Release) -> WireRelease {
        WireRelease {
            id: r.id,
            commit: r.commit.clone(),
            status: Some("success".to_string()),
            belongs_to__application: NavId {
                __id: r.application_id,
            },
            release_image: r
                .images
                .iter()
                .map(|i| WireReleaseImage {
                    image: vec![WireImageRef {
                        id: i.image_id,
                        is_a_build_of__service: vec![WireService {
                            service_name: i.service_name.clone(),
                        }],
                    }],
                })
                .collect(),
            is_created_by__user: Some(Vec::new()),
        }
    }
}

impl From<&Image> for WireImage {
    fn from(i: &Image) -> WireImage {
        WireImage {
            id: i.id,
            is_stored_at__image_location: i.location.clone(),
            content_hash: i.content_hash.clone(),
            image_size: i.size,
        }
    }
}

impl From<&Delta> for WireDelta {
    fn from(d: &Delta) -> WireDelta {
        WireDelta {
            id: d.id,
            status: d.status,
            version: d.version,
            is_stored_at__location: d.location.clone(),
            size: d.size,
        }
    }
}

impl WireRelease {
    /// The domain release; `Err(reason)` if an expanded image or service is missing.
    pub fn into_release(self) -> Result<Release, String> {
        let id = self.id;
        let images = self
            .release_image
            .into_iter()
            .map(|ri| {
                let image = ri.image.into_iter().next()?;
                let service = image.is_a_build_of__service.into_iter().next()?;
                Some(ServiceImage {
                    service_name: service.service_name,
                    image_id: image.id,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                format!("release {id} lists an image without image or service details")
            })?;
        Ok(Release {
            id: self.id,
            commit: self.commit,
            application_id: self.belongs_to__application.__id,
            images,
        })
    }
}

impl From<WireImage> for Image {
    fn from(w: WireImage) -> Image {
        Image {
            id: w.id,
            location: w.is_stored_at__image_location,
            content_hash: w.content_hash,
            size: w.image_size,
        }
    }
}

impl From<WireDelta> for Delta {
    fn from(w: WireDelta) -> Delta {
        Delta {
            id: w.id,
            status: w.status,
            version: w.version,
            location: w.is_stored_at__location,
            size: w.size,
        }
    }
}

/// A Big Integer field: a JSON number, a decimal string, or null (0).
fn big_integer<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Big {
        Number(u64),
        String(String),
        Null(()),
    }
    match Big::deserialize(d)? {
        Big::Number(n) => Ok(n),
        Big::String(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid size '{s}'"))),
        Big::Null(()) => Ok(0),
    }
}

/// `serve`'s delta status answer (`/api/v3/delta/status`), tagged by `status`: serialised by
/// the server, deserialised by the client (unknown fields ignored, retry hints optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum WireDeltaStatus {
    /// Built: the delta image's name and what a device downloads.
    Ready {
        /// Delta id.
        id: u64,
        /// Delta format version.
        version: u32,
        /// Where the delta image is.
        name: String,
        /// Bytes a device downloads.
        download_bytes: u64,
    },
    /// Being built.
    Building {
        /// Delta id.
        id: u64,
        /// Delta format version.
        version: u32,
    },
    /// The build failed for good; a request is refused until the cool-down ends.
    Failed {
        /// Delta id.
        #[serde(default)]
        id: u64,
        /// Delta format version.
        #[serde(default)]
        version: u32,
        /// Seconds until a request may try again.
        #[serde(default)]
        retry_after_seconds: u64,
    },
    /// A build was given up on transient trouble; a request is answered 503 until then.
    Interrupted {
        /// Seconds until a request may try again.
        #[serde(default)]
        retry_after_seconds: u64,
    },
    /// No delta: a request starts one.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_server_sends_the_client_reads_back() {
        let release = Release {
            id: 7,
            commit: "84d3d8f0aa".into(),
            application_id: 3,
            images: vec![ServiceImage {
                service_name: "main".into(),
                image_id: 11,
            }],
        };
        let json = serde_json::to_value(WireRelease::from(&release)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "commit": "84d3d8f0aa", "status": "success",
                "belongs_to__application": {"__id": 3},
                "release_image": [{"image": [{"id": 11,
                    "is_a_build_of__service": [{"service_name": "main"}]}]}],
                "is_created_by__user": []})
        );
        let back: WireRelease = serde_json::from_value(json).unwrap();
        assert_eq!(back.into_release().unwrap(), release);

        let image = Image {
            id: 11,
            location: "reg/app@sha256:00".into(),
            content_hash: Some("sha256:00".into()),
            size: 1234,
        };
        let json = serde_json::to_value(WireImage::from(&image)).unwrap();
        assert_eq!(json["image_size"], 1234);
        assert_eq!(
            Image::from(serde_json::from_value::<WireImage>(json).unwrap()),
            image
        );

        let delta = Delta {
            id: 5,
            status: bru_core::DeltaStatus::Success,
            version: 3,
            location: Some("reg/app:delta-1".into()),
            size: 99,
        };
        let json = serde_json::to_value(WireDelta::from(&delta)).unwrap();
        assert_eq!(json["status"], "success");
        assert_eq!(
            Delta::from(serde_json::from_value::<WireDelta>(json).unwrap()),
            delta
        );
    }

    #[test]
    fn sizes_are_numbers_strings_or_null() {
        let img: WireImage = serde_json::from_str(
            r#"{"id":1,"is_stored_at__image_location":"r/1","content_hash":null,"image_size":"310954877"}"#,
        )
        .unwrap();
        assert_eq!(Image::from(img).size, 310_954_877);
        let d: WireDelta = serde_json::from_str(
            r#"{"id":2,"status":"success","version":3,"is_stored_at__location":null,"size":484575}"#,
        )
        .unwrap();
        assert_eq!(Delta::from(d).size, 484_575);
        let d: WireDelta =
            serde_json::from_str(r#"{"id":2,"status":"success","version":3,"size":null}"#).unwrap();
        assert_eq!(d.size, 0);
        assert!(serde_json::from_str::<WireDelta>(
            r#"{"id":2,"status":"success","version":3,"size":"12x"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<WireDelta>(
            r#"{"id":2,"status":"success","version":3,"size":-1}"#
        )
        .is_err());
    }

    #[test]
    fn release_images_are_flattened() {
        let r: WireRelease = serde_json::from_str(
            r#"{"id":9,"commit":"abc","status":"success","belongs_to__application":{"__id":4},
                "composition":{},"release_image":[{"id":77,"image":[{"id":5,"is_a_build_of__service":[{"service_name":"main"}]}]}],
                "is_created_by__user":[]}"#,
        )
        .unwrap();
        let r = r.into_release().unwrap();
        assert_eq!(r.application_id, 4);
        assert_eq!(r.images[0].service_name, "main");
        assert_eq!(r.images[0].image_id, 5);
        let broken: WireRelease = serde_json::from_str(
            r#"{"id":9,"commit":"abc","belongs_to__application":{"__id":4},"release_image":[{"image":[]}]}"#,
        )
        .unwrap();
        assert!(broken.into_release().is_err());
    }

    #[test]
    fn the_status_answer_reads_back_and_older_or_newer_shapes_are_read() {
        let all = [
            WireDeltaStatus::Ready {
                id: 7,
                version: 3,
                name: "r/delta:x".into(),
                download_bytes: 1234,
            },
            WireDeltaStatus::Building { id: 8, version: 3 },
            WireDeltaStatus::Failed {
                id: 9,
                version: 3,
                retry_after_seconds: 600,
            },
            WireDeltaStatus::Interrupted {
                retry_after_seconds: 30,
            },
            WireDeltaStatus::None,
        ];
        for status in all {
            let json = serde_json::to_string(&status).unwrap();
            let back: WireDeltaStatus = serde_json::from_str(&json).unwrap();
            assert_eq!(back, status, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&WireDeltaStatus::Building { id: 8, version: 3 }).unwrap(),
            r#"{"status":"building","id":8,"version":3}"#
        );
        // Retry hints are optional; fields the client does not know are ignored.
        let failed: WireDeltaStatus = serde_json::from_str(r#"{"status":"failed"}"#).unwrap();
        assert!(matches!(failed, WireDeltaStatus::Failed { id: 0, .. }));
        let none: WireDeltaStatus =
            serde_json::from_str(r#"{"status":"none","hint":"ask again"}"#).unwrap();
        assert_eq!(none, WireDeltaStatus::None);
        assert!(serde_json::from_str::<WireDeltaStatus>(r#"{"status":"lost"}"#).is_err());
    }
}
