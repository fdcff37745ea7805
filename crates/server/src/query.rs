//! The `src` and `dest` of a delta request, parsed from the raw query string.

use bru_oci::{ImageReference, RegistryReference};

/// One side of a delta request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// An image id of the store (as the release-update client's trigger sends them).
    Id(u64),
    /// An image on a registry, `HOST[:PORT]/REPO[:TAG][@sha256:…]`.
    Registry(RegistryReference),
}

/// Parses `src` and `dest` from a raw query string whose values are not URL-encoded
/// (`/`, `:` and `@` appear literally); `%XX` escapes are decoded if a client sends them.
/// Other parameters are ignored; a repeated `src` or `dest` is refused.
pub fn parse_query(raw: &str) -> Result<(Requested, Requested), String> {
    let (mut src, mut dest) = (None, None);
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "src" => &mut src,
            "dest" => &mut dest,
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!("{key} is given twice"));
        }
        *slot = Some(parse_one(key, &percent_decode(value)?)?);
    }
    match (src, dest) {
        (Some(s), Some(d)) => Ok((s, d)),
        (None, _) => Err("src is missing".into()),
        (_, None) => Err("dest is missing".into()),
    }
}

fn parse_one(key: &str, value: &str) -> Result<Requested, String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map(Requested::Id)
            .map_err(|_| format!("{key}: image id out of range"));
    }
    match value.parse::<ImageReference>() {
        Ok(ImageReference::Registry(r)) => Ok(Requested::Registry(r)),
        Ok(_) => Err(format!(
            "{key}: only registry references (HOST/REPO[:TAG][@DIGEST]) and image ids are accepted"
        )),
        Err(e) => Err(format!("{key}: {e}")),
    }
}

/// Decodes %-escapes (the `percent-encoding` crate, as URLs are decoded: a `%` not followed
/// by two hex digits stays as it is, and is then refused by whatever parses the value).
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "the query is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn escapes_are_decoded_and_malformed_ones_refused_by_the_value_parser() {
        let (src, _) = parse_query("src=reg.example%2Fapp%3Av1&dest=7").unwrap();
        let Requested::Registry(s) = src else {
            panic!("{src:?}")
        };
        assert_eq!(
            (s.registry.as_str(), s.repository.as_str()),
            ("reg.example", "app")
        );
        assert!(parse_query("src=reg.example/app%zz&dest=7").is_err());
        assert!(parse_query("src=reg.example/app%FF&dest=7").is_err());
    }

    #[test]
    fn unencoded_references_survive() {
        let raw = format!("src=127.0.0.1:5055/v2/abc@{DIGEST}&dest=reg.example/app/x:v2");
        let (src, dest) = parse_query(&raw).unwrap();
        let Requested::Registry(s) = src else {
            panic!("{src:?}")
        };
        assert_eq!(s.registry, "127.0.0.1:5055");
        assert_eq!(s.repository, "v2/abc");
        assert_eq!(s.digest.unwrap().to_string(), DIGEST);
        let Requested::Registry(d) = dest else {
            panic!("{dest:?}")
        };
        assert_eq!(
            (d.registry.as_str(), d.repository.as_str(), d.tag.as_deref()),
            ("reg.example", "app/x", Some("v2"))
        );
    }

    #[test]
    fn encoded_references_and_ids() {
        let (src, dest) =
            parse_query("version=3&src=12&dest=reg.example%2Fapp%40sha256%3A0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(src, Requested::Id(12));
        assert!(matches!(dest, Requested::Registry(r) if r.repository == "app"));
    }

    #[test]
    fn malformed_queries_are_refused() {
        for raw in [
            "",
            "src=1",
            "dest=1",
            "src=1&src=2&dest=3",
            "src=1&dest=99999999999999999999999",
            "src=oci:/etc:x&dest=1",
            "src=docker-archive:/etc/passwd&dest=1",
            "src=noslash&dest=1",
            "src=reg.example/App&dest=1",
            "src=reg.example/app@sha256:short&dest=1",
            "src=reg.example/app%zz&dest=1",
            "src=reg.example/app%ff&dest=1",
            "src=&dest=1",
        ] {
            assert!(parse_query(raw).is_err(), "{raw}");
        }
    }
}
