//! TLS to PostgreSQL, when the database URL asks for it.
//!
//! `sslmode=require` in the URL makes every connection use TLS (rustls), and the server's
//! certificate is **verified**, against the public roots (`webpki-roots`) plus the CA
//! certificates of `sslrootcert=FILE` (PEM), if given: stricter than libpq's `require`, which
//! does not verify without a root file, so that a managed database cannot be impersonated. A
//! private CA or a self-signed server certificate is given with `sslrootcert`. Without
//! `sslmode`, or with `disable` or `prefer`, connections are plain TCP, as before (libpq's
//! `prefer` would try unverified TLS; a connection that is neither plain nor verified is not
//! offered). tokio-postgres does not know `sslrootcert`: it is taken out of the URL here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ServiceError;

/// CA certificate files larger than this are refused (a bundle of public roots is ~200 KiB).
const MAX_CA_FILE: u64 = 4 << 20;

/// `url` without its `sslrootcert` parameter, and that parameter (percent-decoded).
pub(super) fn take_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut root = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(value) => {
                let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                root = Some(PathBuf::from(decoded.into_owned()));
                false
            }
            None => true,
        })
        .collect();
    if kept.is_empty() {
        (base.to_string(), root)
    } else {
        (format!("{base}?{}", kept.join("&")), root)
    }
}

/// The TLS connector for `mode` (`None`: plain connections), trusting the public roots and
/// the certificates of `root_cert`.
pub(super) fn connector(
    mode: tokio_postgres::config::SslMode,
    root_cert: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, ServiceError> {
    if mode != tokio_postgres::config::SslMode::Require {
        if root_cert.is_some() {
            return Err(invalid("sslrootcert needs sslmode=require".into()));
        }
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_cert {
        let size = std::fs::metadata(path)
            .map_err(|e| invalid(format!("cannot read sslrootcert {}: {e}", path.display())))?
            .len();
        if size > MAX_CA_FILE {
            return Err(invalid(format!(
                "sslrootcert {} is {size} bytes, more than {MAX_CA_FILE}",
                path.display()
            )));
        }
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| invalid(format!("cannot read sslrootcert {}: {e}", path.display())))?
        {
            let cert = cert.map_err(|e| {
                invalid(format!(
                    "bad certificate in sslrootcert {}: {e}",
                    path.display()
                ))
            })?;
            roots.add(cert).map_err(|e| {
                invalid(format!(
                    "bad certificate in sslrootcert {}: {e}",
                    path.display()
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(invalid(format!(
                "sslrootcert {} holds no PEM certificate",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn invalid(reason: String) -> ServiceError {
    ServiceError::InvalidInput {
        what: "database URL",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    fn refused(mode: SslMode, root: Option<&Path>) -> ServiceError {
        match connector(mode, root) {
            Ok(_) => panic!("accepted {root:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        let (url, root) = take_root_cert(
            "postgres://u:p@db:5432/x?sslmode=require&sslrootcert=%2Fetc%2Fca%20s.pem&application_name=a",
        );
        assert_eq!(
            url,
            "postgres://u:p@db:5432/x?sslmode=require&application_name=a"
        );
        assert_eq!(root.as_deref(), Some(Path::new("/etc/ca s.pem")));
        let (url, root) = take_root_cert("postgres://db/x?sslrootcert=/ca.pem");
        assert_eq!(url, "postgres://db/x");
        assert_eq!(root.as_deref(), Some(Path::new("/ca.pem")));
        let (url, root) = take_root_cert("postgres://db/x");
        assert_eq!((url.as_str(), root), ("postgres://db/x", None));
    }

    #[test]
    fn plain_modes_have_no_connector_and_refuse_a_root_file() {
        assert!(matches!(connector(SslMode::Prefer, None), Ok(None)));
        assert!(matches!(connector(SslMode::Disable, None), Ok(None)));
        let err = refused(SslMode::Prefer, Some(Path::new("/ca.pem")));
        assert!(err.to_string().contains("sslmode=require"), "{err}");
    }

    #[test]
    fn bad_root_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = refused(SslMode::Require, Some(&missing));
        assert!(err.to_string().contains("cannot read sslrootcert"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = refused(SslMode::Require, Some(&empty));
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        assert!(!err.is_transient());
        let big = dir.path().join("big.pem");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_CA_FILE + 1)
            .unwrap();
        let err = refused(SslMode::Require, Some(&big));
        assert!(err.to_string().contains("more than"), "{err}");
        assert!(matches!(connector(SslMode::Require, None), Ok(Some(_))));
    }
}
