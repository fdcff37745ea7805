//! Pine v7 response shapes, deserialised leniently (unknown fields ignored).
#![allow(non_snake_case)]

use serde::{Deserialize, Deserializer};

use bru_core::{Delta, Image, Release, ServiceImage};

/// A non-expanded navigation: `{"__id": 1234}`.
#[derive(Debug, Deserialize)]
pub(crate) struct NavId {
    __id: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireRelease {
    id: u64,
    commit: String,
    belongs_to__application: NavId,
    #[serde(default)]
    release_image: Vec<WireReleaseImage>,
}

#[derive(Debug, Deserialize)]
struct WireReleaseImage {
    image: Vec<WireImageRef>,
}

#[derive(Debug, Deserialize)]
struct WireImageRef {
    id: u64,
    is_a_build_of__service: Vec<WireService>,
}

#[derive(Debug, Deserialize)]
struct WireService {
    service_name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireImage {
    id: u64,
    is_stored_at__image_location: String,
    #[serde(default)]
    content_hash: Option<String>,
    #[serde(default, deserialize_with = "big_integer")]
    image_size: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireDelta {
    id: u64,
    status: bru_core::DeltaStatus,
    version: u32,
    #[serde(default)]
    is_stored_at__location: Option<String>,
    #[serde(default, deserialize_with = "big_integer")]
    size: u64,
}

impl WireRelease {
    /// The domain release; `Err(reason)` if an expanded image or service is missing.
    pub(crate) fn into_release(self) -> Result<Release, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
