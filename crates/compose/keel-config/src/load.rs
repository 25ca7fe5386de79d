//! Layering: defaults, file, environment; then one typed deserialization and the cross-field
//! checks.

use std::path::{Path, PathBuf};

use crate::Settings;

/// Why the configuration could not be loaded; every message names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration at `{path}`: {message}")]
    Invalid { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Check(String),
}

/// The file read when no `--config` is given, if it exists.
pub(crate) const DEFAULT_FILE: &str = "keel.toml";

/// Loads the settings: `file` (or `keel.toml` if present), then `env`, which is normally
/// `std::env::vars()` and only `KEEL_*` entries of which are read.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let mut tree = toml::Table::new();
    let file = match file {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
    };
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        tree = toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?;
    }
    let mut env: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("KEEL_"))
        .collect();
    env.sort();
    for (var, raw) in env {
        let path: Vec<String> = var["KEEL_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty section name".into(),
            });
        }
        insert(&mut tree, &path, env_value(&raw))
            .map_err(|message| ConfigError::Env { var, message })?;
    }
    let settings: Settings =
        serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            ConfigError::Invalid {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            }
        })?;
    settings.validate().map_err(ConfigError::Check)?;
    Ok(settings)
}

/// An environment value as a TOML scalar or array when it reads as one (`42`, `true`,
/// `["127.0.0.1/32"]`), else as a plain string.
fn env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => match table.remove("v") {
            Some(
                value @ (toml::Value::String(_)
                | toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => value,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn insert(tree: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = path.split_last().expect("path is never empty");
    let mut table = tree;
    for section in sections {
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{section}` is a value, not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DatabaseKind, LogFormat, Strategy};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults_need_no_file_and_pick_sqlite_under_the_data_dir() {
        let settings = load(Some(write("").path()), env(&[])).unwrap();
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.database_kind(), Some(DatabaseKind::Sqlite));
        assert_eq!(
            settings.database_url().expose(),
            "sqlite://keel-data/keel.db"
        );
        assert_eq!(settings.cache.users.strategy, Strategy::Lazy);
        assert_eq!(settings.cache.users.ttl_secs, 180);
        assert!(
            !settings.telemetry.access_log,
            "the access log is off by default"
        );
        assert_eq!(
            settings.queue.sqlite_synchronous,
            crate::SqliteSynchronous::Normal
        );
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let file = write(
            "data_dir = \"/srv/keel\"\n[server]\nlisten = \"0.0.0.0:9000\"\n[cache.users]\nstrategy = \"write-through\"\nttl_secs = 60\n",
        );
        let settings = load(
            Some(file.path()),
            env(&[
                ("KEEL_SERVER__LISTEN", "127.0.0.1:7000"),
                ("KEEL_CACHE__USERS__TTL_SECS", "30"),
                ("KEEL_TELEMETRY__LOG_FORMAT", "text"),
                ("KEEL_TELEMETRY__ACCESS_LOG", "true"),
                ("KEEL_QUEUE__SQLITE_SYNCHRONOUS", "full"),
                ("KEEL_DATABASE__URL", "postgres://u:secret@db/app"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.data_dir, PathBuf::from("/srv/keel"));
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(settings.cache.users.strategy, Strategy::WriteThrough);
        assert_eq!(settings.cache.users.ttl_secs, 30);
        assert_eq!(settings.telemetry.log_format, LogFormat::Text);
        assert!(settings.telemetry.access_log);
        assert_eq!(
            settings.queue.sqlite_synchronous,
            crate::SqliteSynchronous::Full
        );
        assert_eq!(settings.database_kind(), Some(DatabaseKind::Postgres));
        let printed = toml::to_string(&settings).unwrap();
        assert!(printed.contains("postgres://u:***@db/app"), "{printed}");
        assert!(!printed.contains("secret"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = load(Some(write("[server]\nlisn = \"x\"\n").path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains("lisn"), "{err}");
        let err = load(
            Some(write("").path()),
            env(&[("KEEL_CACHE__USERS__STRATEGGY", "ttl")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("strateggy"), "{err}");
        let err = load(Some(write("").path()), env(&[("KEEL_NOPE", "1")])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let err = load(
            Some(write("[cache.users]\nstrategy = \"write-sideways\"\n").path()),
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cache.users.strategy"), "{err}");
        let err = load(
            Some(write("").path()),
            env(&[("KEEL_SERVER__LISTEN", "nowhere")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err = load(
            Some(write("").path()),
            env(&[("KEEL_DATABASE__URL", "oracle://x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
        let err = load(
            Some(write("").path()),
            env(&[("KEEL_CACHE__USERS__JITTER_RATIO", "0.9")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("jitter_ratio"), "{err}");
        let err = load(Some(write("[server\n").path()), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        let err = load(Some(Path::new("/definitely/not/here.toml")), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn environment_arrays_set_lists() {
        let settings = load(
            None,
            env(&[(
                "KEEL_SERVER__TRUSTED_PROXIES",
                r#"["127.0.0.1/32", "10.0.0.0/8"]"#,
            )]),
        )
        .unwrap();
        assert_eq!(
            settings.server.trusted_proxies,
            ["127.0.0.1/32", "10.0.0.0/8"]
        );
        // Not an array, so a string: which this key refuses, naming it.
        let err = load(None, env(&[("KEEL_SERVER__TRUSTED_PROXIES", "[not toml")])).unwrap_err();
        assert!(err.to_string().contains("server.trusted_proxies"), "{err}");
    }

    #[test]
    fn quoted_environment_values_stay_strings() {
        let settings = load(Some(write("").path()), env(&[("KEEL_DATA_DIR", "\"42\"")])).unwrap();
        assert_eq!(settings.data_dir, PathBuf::from("42"));
    }
}
