//! Bearer tokens: Docker token-auth JWTs as balena's API issues them to devices.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::ServerError;

/// Verifies registry tokens against one public key (ES256 for an EC P-256 key, RS256 for
/// an RSA key; the algorithm follows the key type).
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for the PEM public key `pem` (`BEGIN PUBLIC KEY`, or `BEGIN RSA PUBLIC
    /// KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, ServerError> {
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Verifier {
                key,
                algorithm: Algorithm::ES256,
            });
        }
        match DecodingKey::from_rsa_pem(pem) {
            Ok(key) => Ok(Verifier {
                key,
                algorithm: Algorithm::RS256,
            }),
            Err(e) => Err(ServerError::Key {
                reason: format!("expected an EC P-256 or RSA public key in PEM: {e}"),
            }),
        }
    }

    /// The signature algorithm tokens must use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks the signature, `exp` (required) and `nbf` (when present) and returns the
    /// claims this server reads.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, String> {
        let mut validation = Validation::new(self.algorithm);
        validation.validate_nbf = true;
        // The audience is checked by the caller against both registries of a request.
        validation.validate_aud = false;
        validation.leeway = 10;
        jsonwebtoken::decode::<Claims>(token, &self.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| e.to_string())
    }
}

/// The claims of a registry token that decide access.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Claims {
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    access: Vec<Access>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// One entry of the `access` claim.
#[derive(Debug, Clone, Deserialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

impl Claims {
    /// True when `aud` names `host`. A token without `aud` is for no registry: with more
    /// than one registry allowed it could otherwise read all of them.
    pub(crate) fn audience_allows(&self, host: &str) -> bool {
        match &self.aud {
            None => false,
            Some(Audience::One(a)) => a == host,
            Some(Audience::Many(all)) => all.iter().any(|a| a == host),
        }
    }

    /// True when an `access` entry grants `pull` on `repository` (registry-relative path).
    pub(crate) fn grants_pull(&self, repository: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository"
                && a.name == repository
                && a.actions.iter().any(|x| x == "pull" || x == "*")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn access_needs_pull_on_the_exact_repository() {
        let c = claims(
            r#"{"access":[{"type":"repository","name":"v2/abc","actions":["pull"]},
                          {"type":"repository","name":"v2/denied","actions":[]},
                          {"type":"registry","name":"v2/other","actions":["pull"]}]}"#,
        );
        assert!(c.grants_pull("v2/abc"));
        assert!(!c.grants_pull("v2/denied"));
        assert!(!c.grants_pull("v2/other"));
        assert!(!c.grants_pull("v2/ab"));
        assert!(!claims("{}").grants_pull("v2/abc"));
    }

    #[test]
    fn audience_is_required_and_must_match() {
        assert!(!claims("{}").audience_allows("reg.example:5000"));
        assert!(claims(r#"{"aud":"reg.example:5000"}"#).audience_allows("reg.example:5000"));
        assert!(!claims(r#"{"aud":"reg.example"}"#).audience_allows("reg.example:5000"));
        assert!(claims(r#"{"aud":["x","reg"]}"#).audience_allows("reg"));
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn rsa_keys_verify_rs256_tokens() {
        let verifier =
            Verifier::from_pem(include_bytes!("../tests/keys/rsa-test-public.pem")).unwrap();
        assert_eq!(verifier.algorithm(), Algorithm::RS256);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!(
            "../tests/keys/rsa-test-private.pem"
        ))
        .unwrap();
        let claims = serde_json::json!({"exp": unix_now() + 60, "aud": "reg",
            "access": [{"type": "repository", "name": "v2/a", "actions": ["pull"]}]});
        let header = jsonwebtoken::Header::new(Algorithm::RS256);
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let verified = verifier.verify(&token).unwrap();
        assert!(verified.grants_pull("v2/a") && verified.audience_allows("reg"));

        // A token without exp, one signed with HS256 over the public key, and an unsigned
        // one are refused.
        let no_exp =
            jsonwebtoken::encode(&header, &serde_json::json!({"aud": "reg"}), &key).unwrap();
        assert!(verifier.verify(&no_exp).is_err());
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(include_bytes!(
                "../tests/keys/rsa-test-public.pem"
            )),
        )
        .unwrap();
        assert!(verifier.verify(&hs).is_err());
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims.to_string()));
        assert!(verifier.verify(&unsigned).is_err());
    }

    #[test]
    fn keys_that_are_not_public_keys_are_refused() {
        assert!(matches!(
            Verifier::from_pem(b"not a key"),
            Err(ServerError::Key { .. })
        ));
        let garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(Verifier::from_pem(garbage).is_err());
    }
}
