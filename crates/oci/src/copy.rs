//! Copying an image between any source and any sink (what `skopeo copy` does).

use crate::{Digest, ImageSink, ImageSource, OciError};

/// Copies the image of `src` to `sink` blob by blob (config, layers), then its
/// manifest bytes unchanged, and finishes the sink. Every blob is verified
/// while it streams through a temporary file. Returns the manifest digest.
pub async fn copy_image(src: &dyn ImageSource, sink: &dyn ImageSink) -> Result<Digest, OciError> {
    let image = src.image().await?;
    let dir = tempfile::tempdir().map_err(OciError::Stream)?;
    for desc in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
        let path = dir.path().join(desc.digest.hex());
        let mut reader = src.blob(desc).await?;
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| OciError::io(&path, e))?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(OciError::from_stream)?;
        drop(file);
        sink.put_blob(&path, desc).await?;
    }
    let digest = sink
        .put_manifest(&image.manifest_bytes, &image.manifest_media_type)
        .await?;
    sink.finish().await?;
    Ok(digest)
}
