//! The session token or API key stored by `balena login`.

use std::fmt;
use std::path::Path;

use base64::Engine as _;

use crate::SettingsError;

/// A token read from `<dataDirectory>/token`.
///
/// A token that decodes as a JWT is a session token and may expire; anything else is an API
/// key, which never expires. Signatures are never verified. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    secret: String,
    expires_at: Option<i64>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Token {
    /// Reads `<data_directory>/token`. A missing file means no token.
    pub fn load(data_directory: &Path) -> Result<Option<Token>, SettingsError> {
        let path = data_directory.join("token");
        match std::fs::read(&path) {
            Ok(bytes) => Token::parse(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(SettingsError::Read { path, source: e })
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no token");
                Ok(None)
            }
        }
    }

    /// Parses the text of a token file, with balena-settings-storage's rules:
    /// text that looks like a number is malformed; text that parses as JSON must be a JSON
    /// string (which is unwrapped); anything else is taken as is. Surrounding ASCII
    /// whitespace is trimmed; a blank file means no token.
    pub fn parse(text: &str) -> Result<Option<Token>, SettingsError> {
        if looks_numeric(text) {
            return Err(SettingsError::MalformedToken);
        }
        let secret = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(_) => return Err(SettingsError::MalformedToken),
            Err(_) => text.to_owned(),
        };
        let secret = secret.trim_matches(|c: char| c.is_ascii_whitespace());
        if secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Token {
            expires_at: jwt_expiry(secret),
            secret: secret.to_owned(),
        }))
    }

    /// The text sent as `Authorization: Bearer <secret>`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether this is a JWT whose `exp` (seconds since the epoch) is before `now`.
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|exp| exp < now)
    }
}

/// `^-?\d+\.?\d*$`
fn looks_numeric(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let int_len = digits.bytes().take_while(u8::is_ascii_digit).count();
    if int_len == 0 {
        return false;
    }
    let rest = &digits[int_len..];
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    rest.bytes().all(|b| b.is_ascii_digit())
}

/// The `exp` claim of a JWT: `None` for an API key or a JWT without `exp`.
fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.as_object()?.get("exp")?;
    exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", enc(r#"{"alg":"HS256"}"#), enc(claims))
    }

    #[test]
    fn api_key_is_kept_verbatim_and_never_expires() {
        let t = Token::parse("abcDEF123\n").unwrap().unwrap();
        assert_eq!(t.secret(), "abcDEF123");
        assert!(!t.is_expired_at(i64::MAX));
    }

    #[test]
    fn json_string_is_unwrapped() {
        let t = Token::parse("\"key\"").unwrap().unwrap();
        assert_eq!(t.secret(), "key");
    }

    #[test]
    fn numbers_and_json_non_strings_are_malformed() {
        for text in [
            "123",
            "-1.5",
            "12.",
            "{\"a\":1}",
            "[1]",
            "true",
            "null",
            " 42 ",
        ] {
            assert!(
                matches!(Token::parse(text), Err(SettingsError::MalformedToken)),
                "{text:?}"
            );
        }
        assert_eq!(SettingsError::MalformedToken.to_string(), "Malformed token");
    }

    #[test]
    fn blank_file_is_no_token() {
        assert_eq!(Token::parse("").unwrap(), None);
        assert_eq!(Token::parse(" \n").unwrap(), None);
    }

    #[test]
    fn jwt_expiry_is_read() {
        let t = Token::parse(&format!("{}\n", jwt(r#"{"exp":1000,"iat":1}"#)))
            .unwrap()
            .unwrap();
        assert!(t.is_expired_at(1001));
        assert!(!t.is_expired_at(999));
        let t = Token::parse(&jwt(r#"{"iat":1}"#)).unwrap().unwrap();
        assert!(!t.is_expired_at(i64::MAX));
        // Three dot-separated parts that are not base64 JSON: an API key.
        let t = Token::parse("a.b.c").unwrap().unwrap();
        assert!(!t.is_expired_at(i64::MAX));
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = Token::parse("supersecret").unwrap().unwrap();
        assert!(!format!("{t:?}").contains("supersecret"));
    }

    #[test]
    fn load_reads_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Token::load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("token"), "k\n").unwrap();
        assert_eq!(Token::load(dir.path()).unwrap().unwrap().secret(), "k");
    }
}
