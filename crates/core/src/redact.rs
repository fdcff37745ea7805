//! Secrets out of logs: URLs and request targets with their credentials masked.

use std::borrow::Cow;

/// What replaces a secret.
pub const MASK: &str = "***";

/// `url` (absolute, or a request target such as `/path?query`) with its secrets masked: the
/// password of the user information (`user:***@host`; a user part without a password is
/// masked whole, as tokens are sent that way) and the values of query parameters that carry
/// credentials (`access_token`, `token`, `password`, `api_key`, signatures of pre-signed
/// URLs such as `X-Amz-Signature`, …). Everything else is kept, so the log still says which
/// resource was asked for.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let base = redact_userinfo(base);
    let redacted_query = query.and_then(redact_query);
    if matches!(base, Cow::Borrowed(_)) && redacted_query.is_none() {
        return Cow::Borrowed(url);
    }
    let mut out = base.into_owned();
    if let Some(q) = query {
        out.push('?');
        out.push_str(redacted_query.as_deref().unwrap_or(q));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Cow::Owned(out)
}

/// `text` with every URL in it (a whitespace-separated word containing `://` or `?`)
/// passed through [`redact_url`]: for error messages that may quote URLs.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") && !text.contains('?') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.contains("://") || word.contains('?') {
            out.push_str(&redact_url(word));
        } else {
            out.push_str(word);
        }
        rest = &rest[end..];
    }
    Cow::Owned(out)
}

fn redact_userinfo(base: &str) -> Cow<'_, str> {
    let Some(scheme_end) = base.find("://") else {
        return Cow::Borrowed(base);
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let authority = &base[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return Cow::Borrowed(base);
    };
    let userinfo = &authority[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{MASK}"),
        None => MASK.to_string(),
    };
    Cow::Owned(format!(
        "{}{masked}{}",
        &base[..authority_start],
        &base[authority_start + at..]
    ))
}

/// The query with secret values masked, or `None` when nothing had to change.
fn redact_query(query: &str) -> Option<String> {
    let mut changed = false;
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !value.is_empty() && is_secret(key) => {
                changed = true;
                Cow::Owned(format!("{key}={MASK}"))
            }
            _ => Cow::Borrowed(pair),
        })
        .collect();
    changed.then(|| parts.join("&"))
}

/// Query parameter names that carry credentials.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let key = key
        .trim_start_matches("x-amz-")
        .trim_start_matches("x-goog-");
    matches!(key, "sig" | "key" | "code" | "jwt" | "apikey")
        || [
            "token",
            "secret",
            "passw",
            "signature",
            "credential",
            "api_key",
            "api-key",
            "auth",
            "session",
        ]
        .iter()
        .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_masked_and_the_rest_kept() {
        for (input, expected) in [
            (
                "/api/v3/delta?src=1&access_token=eyJabc.def&dest=2",
                "/api/v3/delta?src=1&access_token=***&dest=2",
            ),
            (
                "https://user:hunter2@reg.example:5000/v2/app/manifests/v1",
                "https://user:***@reg.example:5000/v2/app/manifests/v1",
            ),
            (
                "https://0123token@api.example/v7/release",
                "https://***@api.example/v7/release",
            ),
            (
                "https://s3.example/blob?X-Amz-Credential=AK%2F1&X-Amz-Signature=ab12&X-Amz-Expires=60",
                "https://s3.example/blob?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
            ),
            (
                "http://h/?apikey=1&Password=2&client_secret=3&jwt=4#frag",
                "http://h/?apikey=***&Password=***&client_secret=***&jwt=***#frag",
            ),
        ] {
            assert_eq!(redact_url(input), expected);
        }
        for unchanged in [
            "/api/v3/delta?src=reg.example/a@sha256:00&dest=2",
            "https://reg.example/v2/a/blobs/sha256:00?digest=sha256:00",
            "/healthz",
            "no url at all",
            "http://h/?token=",
        ] {
            assert!(
                matches!(redact_url(unchanged), Cow::Borrowed(_)),
                "{unchanged}"
            );
        }
    }

    #[test]
    fn urls_inside_messages_are_masked() {
        let text = "request to https://u:pw@h/x?token=abc failed: timed out";
        assert_eq!(
            redact_text(text),
            "request to https://u:***@h/x?token=*** failed: timed out"
        );
        assert_eq!(redact_text("plain error"), "plain error");
    }
}
