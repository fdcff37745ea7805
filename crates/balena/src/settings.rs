//! Settings resolution, as balena-settings-client does it for the balena CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use crate::SettingsError;

/// The settings this tool uses, resolved from defaults, balenarc files and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `balenaUrl`: the base domain, `balena-cloud.com` by default.
    pub balena_url: String,
    /// `apiUrl`: `https://api.<balenaUrl>` unless set explicitly.
    pub api_url: String,
    /// `deltaUrl`: `https://delta.<balenaUrl>` unless set explicitly.
    pub delta_url: String,
    /// `dataDirectory`: where the `token` file lives, `<home>/.balena` by default.
    pub data_directory: PathBuf,
    /// `deltaApi`: where delta states come from and how deltas are requested (`auto` by
    /// default: detected from the API's answers; see [`DeltaApi`]).
    pub delta_api: DeltaApi,
}

/// Where the client reads delta states and how it asks for deltas (the `deltaApi` setting).
///
/// balenaCloud keeps `delta` rows in its API and builds deltas on request of the user's
/// token; openBalena has no `delta` resource and no delta server, and this project's `serve`
/// stands in for it, authorised by registry tokens as devices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeltaApi {
    /// `auto`: use the API's `delta` resource, unless the API turns out to be openBalena's
    /// (its release query answers 500 with an empty body, and a query for `delta` 401 or
    /// 404 with an empty body while the same token reads releases); then use `serve`.
    #[default]
    Auto,
    /// `pine`: balenaCloud. Delta rows from `<apiUrl>/v7/delta`, deltas requested from
    /// `<deltaUrl>/api/v3/delta?src=<image id>&dest=<image id>` with the user's token.
    Pine,
    /// `serve`: openBalena with this project's `serve` at `deltaUrl`. Delta states from
    /// `<deltaUrl>/api/v3/delta/status`, deltas requested from `<deltaUrl>/api/v3/delta`,
    /// both with image references and a registry token obtained from
    /// `<apiUrl>/auth/v1/token` with the user's token (pull on both repositories), as a
    /// device does.
    Serve,
}

impl std::str::FromStr for DeltaApi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(DeltaApi::Auto),
            "pine" => Ok(DeltaApi::Pine),
            "serve" => Ok(DeltaApi::Serve),
            other => Err(format!(
                "unknown deltaApi '{other}' (expected auto, pine or serve)"
            )),
        }
    }
}

impl std::fmt::Display for DeltaApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeltaApi::Auto => "auto",
            DeltaApi::Pine => "pine",
            DeltaApi::Serve => "serve",
        })
    }
}

/// `.` on Unix, `_` on Windows, like the `hidepath` module.
const HIDDEN: &str = if cfg!(windows) { "_" } else { "." };

impl Settings {
    /// Resolves the settings from explicit inputs. Later sources win:
    ///
    /// 1. defaults;
    /// 2. `<home>/.resinrc.yml` (keys containing `resin` renamed to `balena`);
    /// 3. `<home>/.balenarc.yml`;
    /// 4. `<cwd>/resinrc.yml` (renamed likewise);
    /// 5. `<cwd>/balenarc.yml`;
    /// 6. non-empty variables named `BALENARC_*` or `RESINRC_*` (case-insensitive), with the
    ///    prefix stripped, a `RESIN` word replaced by `BALENA` and the rest camel-cased:
    ///    `BALENARC_API_URL` sets `apiUrl`.
    ///
    /// On Windows the home files start with `_` instead of `.`.
    pub fn resolve<K, V>(
        home: &Path,
        cwd: &Path,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Settings, SettingsError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut merged = BTreeMap::new();
        let files = [
            (home.join(format!("{HIDDEN}resinrc.yml")), true),
            (home.join(format!("{HIDDEN}balenarc.yml")), false),
            (cwd.join("resinrc.yml"), true),
            (cwd.join("balenarc.yml"), false),
        ];
        for (path, legacy) in files {
            if let Some(map) = read_config_file(&path)? {
                for (key, value) in map {
                    let key = if legacy {
                        key.replacen("resin", "balena", 1)
                    } else {
                        key
                    };
                    deep_merge(&mut merged, key, value);
                }
            }
        }
        for (name, value) in env {
            let (name, value) = (name.as_ref(), value.as_ref());
            if let Some(key) = env_key(name).filter(|_| !value.is_empty()) {
                merged.insert(key, Value::String(value.to_owned()));
            }
        }
        let get = |key: &str| merged.get(key).and_then(scalar);
        let balena_url = get("balenaUrl").unwrap_or_else(|| "balena-cloud.com".to_owned());
        let delta_api = match get("deltaApi") {
            Some(value) => value
                .parse()
                .map_err(|_| SettingsError::InvalidDeltaApi { value })?,
            None => DeltaApi::Auto,
        };
        Ok(Settings {
            delta_api,
            api_url: get("apiUrl").unwrap_or_else(|| format!("https://api.{balena_url}")),
            delta_url: get("deltaUrl").unwrap_or_else(|| format!("https://delta.{balena_url}")),
            data_directory: get("dataDirectory")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(format!("{HIDDEN}balena"))),
            balena_url,
        })
    }

    /// Resolves the settings for this process: the home directory (`HOME`, or
    /// `USERPROFILE` on Windows, falling back to the temp directory), the current directory
    /// and the process environment.
    pub fn from_process_env() -> Result<Settings, SettingsError> {
        let home_var = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
        let home = std::env::var_os(home_var)
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Settings::resolve(&home, &cwd, env)
    }
}

/// Reads a YAML settings file; `None` when it does not exist.
fn read_config_file(path: &Path) -> Result<Option<BTreeMap<String, Value>>, SettingsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SettingsError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let invalid = |reason: String| SettingsError::ConfigFile {
        path: path.to_owned(),
        reason,
    };
    let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    match value {
        Value::Mapping(map) => Ok(Some(
            map.into_iter()
                .filter_map(|(k, v)| Some((scalar(&k)?, v)))
                .collect(),
        )),
        Value::Null => Err(invalid("the file is empty".to_owned())),
        other => Err(invalid(format!(
            "expected a mapping, found {}",
            kind_of(&other)
        ))),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Merges `value` into `map[key]`, recursively for mappings (lodash `merge`).
fn deep_merge(map: &mut BTreeMap<String, Value>, key: String, value: Value) {
    match (map.get_mut(&key), value) {
        (Some(Value::Mapping(old)), Value::Mapping(new)) => {
            for (k, v) in new {
                match (old.get_mut(&k), v) {
                    (Some(slot @ Value::Mapping(_)), Value::Mapping(inner)) => {
                        if let Value::Mapping(slot) = slot {
                            slot.extend(inner);
                        }
                    }
                    (_, v) => {
                        old.insert(k, v);
                    }
                }
            }
        }
        (_, value) => {
            map.insert(key, value);
        }
    }
}

/// The text of a scalar YAML value; `None` for null and collections.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The settings key an environment variable sets, if any.
fn env_key(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let rest = ["BALENARC_", "RESINRC_"]
        .iter()
        .find_map(|p| upper.starts_with(p).then(|| &name[p.len()..]))?;
    if rest.is_empty() {
        return None;
    }
    let words: Vec<String> = rest
        .split('_')
        .map(|w| {
            if w.eq_ignore_ascii_case("resin") {
                "BALENA".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect();
    Some(camel_case(&words.join("_")))
}

/// lodash `camelCase`: split into words at non-alphanumerics, lower/upper case changes and
/// letter/digit changes; lower-case everything, then capitalise every word but the first.
fn camel_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        if let Some(&prev) = current.chars().last().as_ref() {
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let boundary = (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_uppercase() && c.is_uppercase() && next_lower)
                || (prev.is_alphabetic() != c.is_alphabetic());
            if boundary {
                words.push(std::mem::take(&mut current));
            }
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut out = String::new();
    for (i, word) in words.iter().enumerate() {
        let lower = word.to_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut cs = lower.chars();
            if let Some(first) = cs.next() {
                out.extend(first.to_uppercase());
                out.push_str(cs.as_str());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(home: &Path, cwd: &Path, env: &[(&str, &str)]) -> Settings {
        Settings::resolve(home, cwd, env.iter().copied()).unwrap()
    }

    #[test]
    fn defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(dir.path(), dir.path(), &[]);
        assert_eq!(s.balena_url, "balena-cloud.com");
        assert_eq!(s.api_url, "https://api.balena-cloud.com");
        assert_eq!(s.delta_url, "https://delta.balena-cloud.com");
        assert_eq!(s.data_directory, dir.path().join(".balena"));
        assert_eq!(s.delta_api, DeltaApi::Auto);
    }

    #[test]
    fn delta_api_is_a_setting_and_refuses_unknown_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("balenarc.yml"), "deltaApi: pine\n").unwrap();
        assert_eq!(
            resolve(dir.path(), dir.path(), &[]).delta_api,
            DeltaApi::Pine
        );
        let s = resolve(dir.path(), dir.path(), &[("BALENARC_DELTA_API", "serve")]);
        assert_eq!(s.delta_api, DeltaApi::Serve);
        let err = Settings::resolve(
            dir.path(),
            dir.path(),
            [("BALENARC_DELTA_API", "openbalena")].iter().copied(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid deltaApi setting: 'openbalena' (expected auto, pine or serve)"
        );
    }

    #[test]
    fn balena_url_moves_the_derived_urls() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(
            dir.path(),
            dir.path(),
            &[("BALENARC_BALENA_URL", "example.com")],
        );
        assert_eq!(s.api_url, "https://api.example.com");
        assert_eq!(s.delta_url, "https://delta.example.com");
        assert_eq!(s.data_directory, dir.path().join(".balena"));
    }

    #[test]
    fn files_and_environment_in_precedence_order() {
        let home = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join(".resinrc.yml"),
            "resinUrl: legacy.io\ndataDirectory: /from/legacy\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".balenarc.yml"),
            "dataDirectory: /from/home\ndeltaUrl: https://d.home\n",
        )
        .unwrap();
        std::fs::write(
            cwd.path().join("resinrc.yml"),
            "apiUrl: https://a.legacy-cwd\n",
        )
        .unwrap();
        std::fs::write(cwd.path().join("balenarc.yml"), "apiUrl: https://a.cwd\n").unwrap();
        let s = resolve(home.path(), cwd.path(), &[]);
        assert_eq!(s.balena_url, "legacy.io");
        assert_eq!(s.data_directory, PathBuf::from("/from/home"));
        assert_eq!(s.delta_url, "https://d.home");
        assert_eq!(s.api_url, "https://a.cwd");

        let s = resolve(
            home.path(),
            cwd.path(),
            &[
                ("BALENARC_API_URL", "http://127.0.0.1:1"),
                ("resinrc_delta_url", "http://127.0.0.1:2"),
                ("RESINRC_RESIN_URL", "env.io"),
                ("BALENARC_DATA_DIRECTORY", ""),
                ("OTHER_API_URL", "http://ignored"),
            ],
        );
        assert_eq!(s.api_url, "http://127.0.0.1:1");
        assert_eq!(s.delta_url, "http://127.0.0.1:2");
        assert_eq!(s.balena_url, "env.io");
        // Empty variables are ignored.
        assert_eq!(s.data_directory, PathBuf::from("/from/home"));
    }

    #[test]
    fn empty_or_scalar_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("balenarc.yml");
        for text in ["", "just a string\n", "- a\n- b\n", "a: [\n"] {
            std::fs::write(&path, text).unwrap();
            let err = Settings::resolve(dir.path(), dir.path(), [("", "")]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "Error parsing config file {}: Invalid YAML: ",
                    path.display()
                )),
                "{text:?}: {msg}"
            );
        }
    }

    #[test]
    fn env_keys_are_camel_cased_like_lodash() {
        assert_eq!(env_key("BALENARC_BALENA_URL").as_deref(), Some("balenaUrl"));
        assert_eq!(
            env_key("BALENARC_DATA_DIRECTORY").as_deref(),
            Some("dataDirectory")
        );
        assert_eq!(env_key("balenarc_api_url").as_deref(), Some("apiUrl"));
        assert_eq!(env_key("RESINRC_RESIN_URL").as_deref(), Some("balenaUrl"));
        assert_eq!(env_key("BALENARC_"), None);
        assert_eq!(env_key("BALENA_API_KEY"), None);
        assert_eq!(camel_case("fooBar_baz"), "fooBarBaz");
        assert_eq!(camel_case("XMLHttp"), "xmlHttp");
        assert_eq!(camel_case("V2_URL"), "v2Url");
    }
}
