//! Image references in container-tool syntax (`oci:`, `docker-archive:`, `docker://`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{Digest, OciError};

/// Where an image lives, written the way skopeo and friends write it.
///
/// * `oci:PATH[:TAG]`: an OCI image layout directory. Without a tag, the layout's only manifest
///   (or the one tagged `latest`) is used. The tag is everything after the last `:` if that part
///   contains no `/`.
/// * `docker-archive:PATH[:REPO:TAG]`: a `docker save` tarball; `REPO:TAG` picks one image of a
///   multi-image archive (and names the image when writing).
/// * `docker://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]`: a repository on an OCI Distribution
///   registry. The host is mandatory (there is no implicit default registry). A bare
///   `HOST[:PORT]/REPO...` whose first component contains a `.` or `:` or is `localhost` is
///   accepted as well.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageReference {
    /// An OCI image layout directory.
    OciLayout {
        /// The layout directory.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` to select or write.
        tag: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive {
        /// The tarball.
        path: PathBuf,
        /// `REPO:TAG` as listed in `RepoTags` of the archive's manifest.json.
        repo_tag: Option<String>,
    },
    /// A repository on a registry.
    Registry(RegistryReference),
}

/// A `HOST[:PORT]/REPO[:TAG][@DIGEST]` reference to a registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryReference {
    /// `HOST` or `HOST:PORT` exactly as written.
    pub registry: String,
    /// The repository path, e.g. `v2/0123abcd` or `library/busybox`.
    pub repository: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The manifest digest, if any. When both tag and digest are given, the digest decides.
    pub digest: Option<Digest>,
}

impl RegistryReference {
    /// The tag or digest string to use in `/v2/<repo>/manifests/<reference>`; `latest` when
    /// neither is given.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    fn parse(input: &str, original: &str) -> Result<Self, OciError> {
        let err = |reason: &str| OciError::InvalidReference {
            input: original.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| err("digest must be sha256:<64 lowercase hex>"))?,
                ),
            ),
            None => (input, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| err("expected HOST[:PORT]/REPOSITORY"))?;
        if !valid_host(registry) {
            return Err(err("invalid registry host"));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (path, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(err("invalid tag"));
            }
        }
        if repository.is_empty()
            || repository.len() > 255
            || !repository.split('/').all(valid_path_component)
        {
            return Err(err("invalid repository name"));
        }
        Ok(RegistryReference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for RegistryReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` as in the distribution spec.
pub(crate) fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn looks_like_host(first: &str) -> bool {
    first == "localhost" || first.contains('.') || first.contains(':')
}

impl FromStr for ImageReference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, OciError> {
        let err = |reason: &str| OciError::InvalidReference {
            input: s.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') => (p, Some(t)),
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(err("missing layout path"));
            }
            if let Some(t) = tag {
                if !valid_tag(t) {
                    return Err(err("invalid tag"));
                }
            }
            return Ok(ImageReference::OciLayout {
                path: PathBuf::from(path),
                tag: tag.map(str::to_string),
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, repo_tag) = match rest.split_once(':') {
                Some((p, rt)) => (p, Some(rt)),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(err("missing archive path"));
            }
            if let Some(rt) = repo_tag {
                // REPO:TAG, where REPO may itself start with HOST:PORT/.
                let (repo, tag) = rt
                    .rsplit_once(':')
                    .filter(|(_, t)| !t.contains('/'))
                    .ok_or_else(|| err("expected docker-archive:PATH[:REPO:TAG]"))?;
                let repo_ok = !repo.is_empty()
                    && match repo.split_once('/') {
                        Some((first, p)) if looks_like_host(first) => {
                            valid_host(first) && p.split('/').all(valid_path_component)
                        }
                        _ => repo.split('/').all(valid_path_component),
                    };
                if !repo_ok || !valid_tag(tag) {
                    return Err(err("invalid REPO:TAG"));
                }
            }
            return Ok(ImageReference::DockerArchive {
                path: PathBuf::from(path),
                repo_tag: repo_tag.map(str::to_string),
            });
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return RegistryReference::parse(rest, s).map(ImageReference::Registry);
        }
        match s.split_once('/') {
            Some((first, _)) if looks_like_host(first) && !s.contains("://") => {
                RegistryReference::parse(s, s).map(ImageReference::Registry)
            }
            _ => Err(err(
                "expected oci:PATH[:TAG], docker-archive:PATH[:REPO:TAG] or docker://HOST/REPO[:TAG|@DIGEST]",
            )),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageReference::OciLayout { path, tag } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            ImageReference::DockerArchive { path, repo_tag } => {
                write!(f, "docker-archive:{}", path.display())?;
                if let Some(rt) = repo_tag {
                    write!(f, ":{rt}")?;
                }
                Ok(())
            }
            ImageReference::Registry(r) => write!(f, "docker://{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg(s: &str) -> RegistryReference {
        match s.parse::<ImageReference>().unwrap() {
            ImageReference::Registry(r) => r,
            other => panic!("not a registry reference: {other:?}"),
        }
    }

    #[test]
    fn parses_registry_references() {
        let r = reg("docker://registry2.balena-cloud.com/v2/0123abcd:delta-3c90dce25a5f9f2f");
        assert_eq!(r.registry, "registry2.balena-cloud.com");
        assert_eq!(r.repository, "v2/0123abcd");
        assert_eq!(r.tag.as_deref(), Some("delta-3c90dce25a5f9f2f"));
        assert_eq!(r.digest, None);

        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = reg(&format!("127.0.0.1:5055/a/b-c@{d}"));
        assert_eq!(r.registry, "127.0.0.1:5055");
        assert_eq!(r.repository, "a/b-c");
        assert_eq!(r.tag, None);
        assert_eq!(
            r.digest.as_ref().map(ToString::to_string).as_deref(),
            Some(d)
        );
        assert_eq!(r.manifest_reference(), d);

        let r = reg("docker://localhost:5000/x");
        assert_eq!(r.manifest_reference(), "latest");
    }

    #[test]
    fn parses_local_references() {
        assert_eq!(
            "oci:/tmp/lay:v1".parse::<ImageReference>().unwrap(),
            ImageReference::OciLayout {
                path: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            "oci:./a/b".parse::<ImageReference>().unwrap(),
            ImageReference::OciLayout {
                path: "./a/b".into(),
                tag: None
            }
        );
        assert_eq!(
            "docker-archive:/tmp/x.tar:localhost:5000/app:v2"
                .parse::<ImageReference>()
                .unwrap(),
            ImageReference::DockerArchive {
                path: "/tmp/x.tar".into(),
                repo_tag: Some("localhost:5000/app:v2".into())
            }
        );
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "oci:",
            "oci::tag",
            "oci:/x:bad tag",
            "docker-archive:",
            "docker-archive:/x.tar:noTag",
            "docker-archive:/x.tar:UPPER:t",
            "docker://",
            "docker://host",
            "docker://host/",
            "docker://host/Repo",
            "docker://host/repo:",
            "docker://host/repo:-x",
            "docker://host:port/repo",
            "docker://ho st/repo",
            "docker://host/repo@sha256:abc",
            "docker://host/repo@md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "docker://host/a//b",
            "docker://host/a..b",
            "busybox",
            "library/busybox",
            "http://host/repo",
        ] {
            let res = bad.parse::<ImageReference>();
            assert!(
                matches!(res, Err(OciError::InvalidReference { .. })),
                "{bad:?} gave {res:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn registry_display_round_trips(
            host in "[a-z][a-z0-9]{0,8}(\\.[a-z0-9]{1,5}){1,2}(:[0-9]{1,5})?",
            repo in "[a-z0-9]{1,6}((\\.|_|__|-+)[a-z0-9]{1,4})?(/[a-z0-9]{1,6}){0,2}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in proptest::option::of(any::<[u8; 32]>()),
        ) {
            let r = ImageReference::Registry(RegistryReference {
                registry: host,
                repository: repo,
                tag,
                digest: digest.map(Digest::from_bytes),
            });
            let parsed: ImageReference = r.to_string().parse().unwrap();
            prop_assert_eq!(parsed, r);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<ImageReference>();
        }
    }
}
