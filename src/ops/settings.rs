//! Effective settings: flags > environment > manifest > defaults.
//!
//! The only place kmm reads environment variables. The environment arrives as a lookup function
//! so tests can pass a map instead of mutating the process environment, and the flags as
//! [`Overrides`], plain data the CLI fills from its global flags (so `ops` knows nothing of
//! clap).
//!
//! | setting | flag | environment | manifest | default |
//! | --- | --- | --- | --- | --- |
//! | manifest | `--manifest` | `KMM_MANIFEST` | | `./kari-models.toml` |
//! | models dir (from the flag or the environment, a file or a path the OS refuses is `E_ARGS`) | `--models-dir` | `KMM_MODELS_DIR` | `settings.models_dir` | `models/` beside the manifest |
//! | endpoint | `--mirror` | `HF_ENDPOINT` | `settings.endpoint` | `https://huggingface.co` |
//! | offline | `--offline` | `HF_HUB_OFFLINE` | `settings.offline` | false |
//! | workers | `--max-workers` | `KMM_MAX_WORKERS` | `settings.max_workers` | 8 |
//! | token | | `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, file `HF_TOKEN_PATH` or `$HF_HOME/token` | | none |
//! | HF cache (local source) | | `HF_HUB_CACHE`, else `$HF_HOME/hub` | | `~/.cache/huggingface/hub` |
//! | chunk size (files from 64 MiB on, or from 4 chunks on when set, are fetched in parallel chunks; memory is about (connections + 2) chunks) | | `KMM_CHUNK_SIZE` (bytes, 64 KiB to 64 MiB) | | 4 MiB |
//! | direct writes of chunked downloads (`O_DIRECT`, past the page cache) | | `KMM_DIRECT_IO` (`0`/`off` to write through the page cache) | | on (Linux) |
//! | most connections per large file (4 start; more join when connections are slow) | | `KMM_CONNECTIONS_PER_FILE` (1-64) | | 16 |
//! | progress as JSON lines on stderr (with `--json`) | | `KMM_PROGRESS_JSON=1` | | off |
//! | extra CA certificates (a mirror behind a private CA; a bad file is `E_ARGS`) | | `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` (PEM bundles), `SSL_CERT_DIR` | | the system store and the bundled roots |
//! | how long a rate-limited or overloaded hub (429, 502-504) is retried without progress | | `KMM_HUB_RETRY_BUDGET` (a duration) | | 2m |
//! | hub retries and timeouts (a bad value is `E_ARGS`) | | `KMM_HUB_MAX_RETRIES` (0-100), `KMM_HUB_RETRY_DELAY`, `KMM_HUB_CONNECT_TIMEOUT`, `KMM_HUB_READ_TIMEOUT` (durations) | | 5, 1s, 10s, 30s |
//! | shared tier of a fleet (`s3://BUCKET/PREFIX`; endpoint and credentials from `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ALLOW_HTTP`) | `--shared-store` | `KMM_SHARED_STORE` | `settings.shared_store` | none |
//! | a shared tier that cannot be used is `E_NET`, not a warning | `--require-shared-store` | `KMM_REQUIRE_SHARED_STORE=1` | `settings.require_shared_store` | off |
//! | the name this host reports and holds leases under | | `KMM_NODE_NAME` | | the host name |
//! | shared tier timings | | `KMM_SHARED_STORE_LEASE_TTL`, `KMM_SHARED_STORE_WAIT`, `KMM_SHARED_STORE_TIMEOUT` (durations), `KMM_SHARED_STORE_MULTIPART_MIN` (bytes) | | 30s, 30m, 60s, 16 MiB |
//! | minimum download rate: a body below it over the window is dropped, retried on a fresh connection, and after 3 stalls in a row `E_NET` (a bad value is `E_ARGS`) | | `KMM_HUB_MIN_RATE` (bytes per second, 0 turns the rule off), `KMM_HUB_MIN_RATE_TIME` (a duration) | | 1024, 30s |

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hub::Token;
use crate::manifest::Manifest;

/// The Hub itself, used when nothing else names an endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Parallel downloads when nothing else says.
pub const DEFAULT_MAX_WORKERS: usize = 8;

/// Highest `KMM_HUB_MIN_RATE` (10 GB/s): anything above is a typo, not a link.
const MAX_MIN_RATE: u64 = 10_000_000_000;

/// Looks up an environment variable.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What the command line says about where and how to work; `None`/`false` leaves the decision
/// to the environment, the manifest and the defaults.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub manifest: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    /// A mirror endpoint, checked for reachability when the session opens.
    pub mirror: Option<String>,
    pub offline: bool,
    pub max_workers: Option<u16>,
    /// How long to wait for another kmm holding the store lock (`None`: forever).
    pub lock_timeout: Option<Duration>,
    /// `--shared-store s3://BUCKET/PREFIX`.
    pub shared_store: Option<String>,
    /// `--require-shared-store`.
    pub require_shared_store: bool,
}

/// Everything a verb needs to know about where and how to work.
#[derive(Debug, Clone)]
pub struct Settings {
    pub manifest_path: PathBuf,
    /// Absolute.
    pub models_dir: PathBuf,
    pub endpoint: String,
    /// The endpoint came from `--mirror`: its reachability is checked before anything else.
    pub mirror: bool,
    pub offline: bool,
    pub max_workers: usize,
    pub token: Option<Token>,
    pub quota_gb: Option<f64>,
    /// Where `quota_gb` came from, as errors name it: `quota_gb` (the manifest) or a flag such
    /// as `--max-quota-gb`.
    pub quota_origin: &'static str,
    pub prune: bool,
    pub lock_timeout: Option<Duration>,
    /// The local Hugging Face cache searched before the network.
    pub hf_cache: PathBuf,
    /// Chunk size for parallel downloads (`None`: the hub client's default).
    pub chunk_size: Option<u64>,
    pub connections_per_file: Option<usize>,
    /// Direct writes for chunked downloads (`None`: the hub client's default).
    pub direct_io: Option<bool>,
    /// With `--json`, progress events as JSON lines on stderr.
    pub progress_json: bool,
    /// `KMM_HUB_*`: retries and timeouts of hub requests (`None`: the hub client's defaults).
    pub hub_tuning: HubTuning,
    /// `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`: PEM bundles trusted besides the
    /// bundled roots and the system store, with the variable that named each.
    pub ca_bundles: Vec<(String, PathBuf)>,
    /// The proxy variables that are set, values without credentials (for error messages).
    pub proxies: Vec<(String, String)>,
    /// The fleet's shared tier, when one is named.
    pub shared_store: Option<crate::shared::SharedStoreConfig>,
}

/// Operators' overrides of the hub client's retry and timeout defaults, for slow or flaky links
/// (and tests that cannot wait minutes for a stalled server).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HubTuning {
    /// `KMM_HUB_MAX_RETRIES` (0 to 100).
    pub max_retries: Option<u32>,
    /// `KMM_HUB_RETRY_DELAY`, doubled per retry.
    pub retry_delay: Option<Duration>,
    /// `KMM_HUB_CONNECT_TIMEOUT`.
    pub connect_timeout: Option<Duration>,
    /// `KMM_HUB_READ_TIMEOUT`.
    pub read_timeout: Option<Duration>,
    /// `KMM_HUB_MIN_RATE`, bytes per second (0: no minimum).
    pub min_rate: Option<u64>,
    /// `KMM_HUB_MIN_RATE_TIME`: the window the minimum rate is measured over.
    pub min_rate_time: Option<Duration>,
    /// `KMM_HUB_RETRY_BUDGET`: how long overload answers (429, 502-504) are retried without
    /// progress.
    pub retry_budget: Option<Duration>,
}

impl HubTuning {
    /// Applies the overrides that are set to `config`.
    pub fn apply_to(&self, config: &mut crate::hub::HubConfig) {
        if let Some(retries) = self.max_retries {
            config.max_retries = retries;
        }
        if let Some(delay) = self.retry_delay {
            config.retry_base_delay = delay;
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout = timeout;
        }
        if let Some(timeout) = self.read_timeout {
            config.read_timeout = timeout;
        }
        if let Some(rate) = self.min_rate {
            config.min_rate_bytes_per_sec = rate;
        }
        if let Some(window) = self.min_rate_time {
            config.min_rate_window = window;
        }
        if let Some(budget) = self.retry_budget {
            config.retry_budget = budget;
        }
    }
}

/// Where the manifest is: `--manifest`, else `KMM_MANIFEST`, else `./kari-models.toml`,
/// made absolute against `cwd`.
pub fn manifest_path(args: &Overrides, env: EnvLookup<'_>, cwd: &Path) -> PathBuf {
    let path = args
        .manifest
        .clone()
        .or_else(|| non_empty(env("KMM_MANIFEST")).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("kari-models.toml"));
    absolute(cwd, &path)
}

/// Combines flags, environment and manifest. Reads the token file when no token variable is set.
pub fn resolve(
    args: &Overrides,
    env: EnvLookup<'_>,
    manifest: &Manifest,
    cwd: &Path,
) -> Result<Settings> {
    let manifest_path = absolute(cwd, &manifest.path);
    let manifest_dir = manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cwd.to_path_buf());

    let models_dir = if let Some(dir) = &args.models_dir {
        check_models_dir(absolute(cwd, dir), "--models-dir")?
    } else if let Some(dir) = non_empty(env("KMM_MODELS_DIR")) {
        check_models_dir(absolute(cwd, Path::new(&dir)), "KMM_MODELS_DIR")?
    } else if let Some(dir) = &manifest.settings.models_dir {
        absolute(&manifest_dir, dir)
    } else {
        manifest_dir.join("models")
    };

    let (endpoint, mirror) = if let Some(url) = &args.mirror {
        (check_endpoint(url, "--mirror")?, true)
    } else if let Some(url) = non_empty(env("HF_ENDPOINT")) {
        (check_endpoint(&url, "HF_ENDPOINT")?, false)
    } else if let Some(url) = &manifest.settings.endpoint {
        (check_endpoint(url, "settings.endpoint")?, false)
    } else {
        (DEFAULT_ENDPOINT.to_string(), false)
    };

    let offline = args.offline
        || env("HF_HUB_OFFLINE").is_some_and(|value| is_truthy(&value))
        || manifest.settings.offline.unwrap_or(false);

    let max_workers = if let Some(n) = args.max_workers {
        usize::from(n)
    } else if let Some(text) = non_empty(env("KMM_MAX_WORKERS")) {
        match text.trim().parse::<usize>() {
            Ok(n) if (1..=256).contains(&n) => n,
            _ => {
                return Err(Error::args(format!(
                    "KMM_MAX_WORKERS must be a number from 1 to 256, got `{text}`"
                )));
            }
        }
    } else {
        manifest.settings.max_workers.unwrap_or(DEFAULT_MAX_WORKERS)
    };

    let proxies: Vec<(String, String)> = PROXY_VARIABLES
        .iter()
        .filter_map(|name| {
            non_empty(env(name)).map(|value| (name.to_string(), crate::hub::redact_url(&value)))
        })
        .collect();
    let ca_bundles: Vec<(String, PathBuf)> = CA_BUNDLE_VARIABLES
        .iter()
        .filter_map(|name| non_empty(env(name)).map(|path| (name.to_string(), path.into())))
        .collect();
    Ok(Settings {
        manifest_path,
        models_dir,
        endpoint,
        mirror,
        offline,
        max_workers,
        token: find_token(env)?,
        quota_gb: manifest.settings.quota_gb,
        quota_origin: "quota_gb",
        prune: manifest.settings.prune,
        lock_timeout: args.lock_timeout,
        hf_cache: hf_hub_cache(env),
        chunk_size: number_env(env, "KMM_CHUNK_SIZE", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)?,
        connections_per_file: number_env(env, "KMM_CONNECTIONS_PER_FILE", 1, 64)?
            .map(|n| n as usize),
        direct_io: switch_env(env, "KMM_DIRECT_IO")?,
        progress_json: env("KMM_PROGRESS_JSON").is_some_and(|value| is_truthy(&value)),
        hub_tuning: HubTuning {
            max_retries: number_env(env, "KMM_HUB_MAX_RETRIES", 0, 100)?.map(|n| n as u32),
            retry_delay: duration_env(env, "KMM_HUB_RETRY_DELAY")?,
            connect_timeout: duration_env(env, "KMM_HUB_CONNECT_TIMEOUT")?,
            read_timeout: duration_env(env, "KMM_HUB_READ_TIMEOUT")?,
            min_rate: number_env(env, "KMM_HUB_MIN_RATE", 0, MAX_MIN_RATE)?,
            min_rate_time: duration_env(env, "KMM_HUB_MIN_RATE_TIME")?,
            retry_budget: duration_env(env, "KMM_HUB_RETRY_BUDGET")?,
        },
        shared_store: shared_store(args, env, manifest, &proxies, &ca_bundles)?,
        proxies,
        ca_bundles,
    })
}

/// The shared tier: `--shared-store`, else `KMM_SHARED_STORE`, else the manifest's
/// `shared_store`; required by `--require-shared-store`, `KMM_REQUIRE_SHARED_STORE` or the
/// manifest's `require_shared_store`. Requiring a tier that is not named is `E_ARGS`.
/// `proxies` and `ca_bundles` are the hub's, which the tier's client shares.
fn shared_store(
    args: &Overrides,
    env: EnvLookup<'_>,
    manifest: &Manifest,
    proxies: &[(String, String)],
    ca_bundles: &[(String, PathBuf)],
) -> Result<Option<crate::shared::SharedStoreConfig>> {
    use crate::shared::{AwsVariables, SharedStoreConfig, TierTimings, check_node_name, parse_url};
    let named = if let Some(url) = &args.shared_store {
        Some((url.clone(), "--shared-store"))
    } else if let Some(url) = non_empty(env("KMM_SHARED_STORE")) {
        Some((url, "KMM_SHARED_STORE"))
    } else {
        manifest
            .settings
            .shared_store
            .clone()
            .map(|url| (url, "settings.shared_store"))
    };
    let required = args.require_shared_store
        || env("KMM_REQUIRE_SHARED_STORE").is_some_and(|value| is_truthy(&value))
        || manifest.settings.require_shared_store.unwrap_or(false);
    let Some((url, origin)) = named else {
        if required {
            return Err(Error::args("a shared store is required but none is named").with_hint(
                "name it with --shared-store s3://BUCKET/PREFIX, KMM_SHARED_STORE or shared_store in [settings]",
            ));
        }
        return Ok(None);
    };
    let (bucket, prefix) = parse_url(&url, origin)?;
    let node_name = match non_empty(env("KMM_NODE_NAME")) {
        Some(name) => check_node_name(&name, "KMM_NODE_NAME")?,
        None => check_node_name(
            &sysinfo::System::host_name().unwrap_or_else(|| "localhost".to_string()),
            "the host name",
        )?,
    };
    let defaults = TierTimings::default();
    let timings = TierTimings {
        lease_ttl: duration_env(env, "KMM_SHARED_STORE_LEASE_TTL")?.unwrap_or(defaults.lease_ttl),
        max_wait: duration_env(env, "KMM_SHARED_STORE_WAIT")?.unwrap_or(defaults.max_wait),
        multipart_min: number_env(env, "KMM_SHARED_STORE_MULTIPART_MIN", 5 << 20, 5 << 30)?
            .unwrap_or(defaults.multipart_min),
        request_timeout: duration_env(env, "KMM_SHARED_STORE_TIMEOUT")?
            .unwrap_or(defaults.request_timeout),
    };
    Ok(Some(SharedStoreConfig {
        url: format!("s3://{bucket}/{prefix}")
            .trim_end_matches('/')
            .to_string(),
        bucket,
        prefix,
        required,
        aws: AwsVariables::read(env),
        ca_bundles: ca_bundles.iter().map(|(_, path)| path.clone()).collect(),
        proxies: proxies.to_vec(),
        node_name,
        timings,
    }))
}

/// The proxy variables reqwest reads (it also honours `NO_PROXY`).
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Variables naming a PEM bundle of extra CA certificates: OpenSSL's, then those
/// `huggingface_hub` (requests) and curl users already set. `SSL_CERT_DIR` is read by the
/// system store loader itself.
const CA_BUNDLE_VARIABLES: [&str; 3] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"];

impl Settings {
    /// The settings of a library call ([`crate::api`]): no environment, no manifest; the
    /// store at `models_dir`, `max_workers` downloads at once, no local Hugging Face cache
    /// beyond what the caller names, and `quota_gb` when the caller sets one.
    pub fn for_library(models_dir: &Path, max_workers: usize, quota_gb: Option<f64>) -> Settings {
        Settings {
            manifest_path: models_dir.join("kari-models.toml"),
            models_dir: models_dir.to_path_buf(),
            endpoint: DEFAULT_ENDPOINT.to_string(),
            mirror: false,
            offline: false,
            max_workers: max_workers.max(1),
            token: None,
            quota_gb,
            quota_origin: "quota_gb",
            prune: false,
            lock_timeout: None,
            hf_cache: PathBuf::new(),
            chunk_size: None,
            connections_per_file: None,
            direct_io: None,
            progress_json: false,
            hub_tuning: HubTuning::default(),
            ca_bundles: Vec::new(),
            proxies: Vec::new(),
            shared_store: None,
        }
    }
}

/// The Python that runs baseline work: `flag` (`--python`), else `KMM_PYTHON`, else `python3`.
pub fn python(flag: Option<&str>, env: EnvLookup<'_>) -> String {
    flag.map(str::to_string)
        .or_else(|| env("KMM_PYTHON").filter(|p| !p.trim().is_empty()))
        .unwrap_or_else(|| "python3".to_string())
}

/// `HF_HUB_CACHE`, else `$HF_HOME/hub` (as `huggingface_hub` looks it up).
pub fn hf_hub_cache(env: EnvLookup<'_>) -> PathBuf {
    match non_empty(env("HF_HUB_CACHE")) {
        Some(dir) => PathBuf::from(dir),
        None => hf_home(env).join("hub"),
    }
}

/// `KMM_CHUNK_SIZE` bounds: every chunk in flight or waiting to be hashed is held in memory.
const MIN_CHUNK_SIZE: u64 = 64 << 10;
const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// An optional on/off variable (`1`/`on`/`yes`/`true` or `0`/`off`/`no`/`false`); anything
/// else is `E_ARGS`.
fn switch_env(env: EnvLookup<'_>, name: &str) -> Result<Option<bool>> {
    let Some(text) = non_empty(env(name)) else {
        return Ok(None);
    };
    if is_truthy(&text) {
        return Ok(Some(true));
    }
    match text.trim().to_ascii_uppercase().as_str() {
        "0" | "OFF" | "NO" | "FALSE" => Ok(Some(false)),
        _ => Err(Error::args(format!(
            "{name}=`{}` is neither on (1, on, yes, true) nor off (0, off, no, false)",
            text.trim()
        ))),
    }
}

/// An optional whole-number variable within `min..=max`; anything else is `E_ARGS`.
fn number_env(env: EnvLookup<'_>, name: &str, min: u64, max: u64) -> Result<Option<u64>> {
    let Some(text) = non_empty(env(name)) else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(Error::args(format!(
            "{name} must be a number from {min} to {max}, got `{text}`"
        ))),
    }
}

/// An optional duration variable (`200ms`, `30s`, `2m`); a value that does not parse, or zero,
/// is `E_ARGS` (as a bad `KMM_MAX_WORKERS` is), not a warning that scrolls by.
fn duration_env(env: EnvLookup<'_>, name: &str) -> Result<Option<Duration>> {
    let Some(text) = non_empty(env(name)) else {
        return Ok(None);
    };
    match humantime::parse_duration(text.trim()) {
        Ok(duration) if !duration.is_zero() => Ok(Some(duration)),
        _ => Err(Error::args(format!(
            "{name} must be a duration such as `200ms` or `30s`, got `{text}`"
        ))),
    }
}

/// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file (`HF_TOKEN_PATH`, else
/// `$HF_HOME/token`), as huggingface_hub looks it up. The value is trimmed; empty means none.
fn find_token(env: EnvLookup<'_>) -> Result<Option<Token>> {
    if let Some(token) =
        non_empty(env("HF_TOKEN")).or_else(|| non_empty(env("HUGGING_FACE_HUB_TOKEN")))
    {
        return Ok(Some(Token::new(token.trim())));
    }
    let token_file = match non_empty(env("HF_TOKEN_PATH")) {
        Some(path) => PathBuf::from(path),
        None => hf_home(env).join("token"),
    };
    match std::fs::read_to_string(&token_file) {
        Ok(text) => Ok(non_empty(Some(text.trim().to_string())).map(Token::new)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io(
            format!("reading the token file {}", token_file.display()),
            &error,
        )),
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home(env: EnvLookup<'_>) -> PathBuf {
    if let Some(home) = non_empty(env("HF_HOME")) {
        return PathBuf::from(home);
    }
    if let Some(cache) = non_empty(env("XDG_CACHE_HOME")) {
        return PathBuf::from(cache).join("huggingface");
    }
    let home = non_empty(env("HOME")).unwrap_or_else(|| "/".to_string());
    PathBuf::from(home).join(".cache").join("huggingface")
}

fn check_endpoint(url: &str, source: &str) -> Result<String> {
    let trimmed = url.trim().trim_end_matches('/');
    match url::Url::parse(trimmed) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
            Ok(trimmed.to_string())
        }
        _ => Err(Error::args(format!(
            "{source} must be an http(s) URL such as https://huggingface.co, got `{url}`"
        ))),
    }
}

/// huggingface_hub's truthy values for boolean variables.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// A models directory the user named (`source`: the flag or the variable) that is a file, or a
/// path the OS refuses, is `E_ARGS` here, before a verb reports it as a failed write somewhere
/// inside (`E_DISK` on `<file>/.kmm/licenses.json`). A missing folder is fine: apply makes it.
fn check_models_dir(dir: PathBuf, source: &str) -> Result<PathBuf> {
    match std::fs::metadata(&dir) {
        Ok(metadata) if !metadata.is_dir() => Err(Error::args(format!(
            "{source} `{}` is a file",
            dir.display()
        ))
        .with_hint(format!(
            "{source} takes the folder that holds the models (created when missing)"
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidFilename => Err(Error::args(
            format!(
                "{source} is longer than the OS allows ({} bytes; a name may have 255, a path 4096)",
                dir.as_os_str().len()
            ),
        )
        .with_hint(format!("pass a shorter {source}"))),
        _ => Ok(dir),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn download_settings_from_the_environment() {
        let vars: HashMap<&str, &str> = HashMap::from([
            ("HF_HOME", "/h"),
            ("KMM_CHUNK_SIZE", "1048576"),
            ("KMM_CONNECTIONS_PER_FILE", "3"),
        ]);
        let env = |name: &str| vars.get(name).map(|v| v.to_string());
        assert_eq!(hf_hub_cache(&env), PathBuf::from("/h/hub"));
        let cache = |name: &str| (name == "HF_HUB_CACHE").then(|| "/c".to_string());
        assert_eq!(hf_hub_cache(&cache), PathBuf::from("/c"));
        assert_eq!(
            number_env(&env, "KMM_CHUNK_SIZE", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE).unwrap(),
            Some(1 << 20)
        );
        let bad = |_: &str| Some("12".to_string());
        assert!(number_env(&bad, "KMM_CHUNK_SIZE", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE).is_err());
        let huge = |_: &str| Some((MAX_CHUNK_SIZE + 1).to_string());
        assert!(number_env(&huge, "KMM_CHUNK_SIZE", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE).is_err());
        let switch = |value: &'static str| move |_: &str| Some(value.to_string());
        assert_eq!(
            switch_env(&switch("off"), "KMM_DIRECT_IO").unwrap(),
            Some(false)
        );
        assert_eq!(
            switch_env(&switch("0"), "KMM_DIRECT_IO").unwrap(),
            Some(false)
        );
        assert_eq!(
            switch_env(&switch("Yes"), "KMM_DIRECT_IO").unwrap(),
            Some(true)
        );
        assert_eq!(switch_env(&env, "KMM_DIRECT_IO").unwrap(), None);
        let error = switch_env(&switch("maybe"), "KMM_DIRECT_IO").unwrap_err();
        assert!(error.to_string().contains("KMM_DIRECT_IO"), "{error}");
        assert_eq!(number_env(&env, "NOPE", 1, 2).unwrap(), None);
    }

    #[test]
    fn hub_tuning_from_the_environment_and_bad_values_are_args_errors() {
        let env = env_of(&[
            ("KMM_HUB_MAX_RETRIES", "2"),
            ("KMM_HUB_READ_TIMEOUT", "300ms"),
        ]);
        assert_eq!(
            number_env(&env, "KMM_HUB_MAX_RETRIES", 0, 100).unwrap(),
            Some(2)
        );
        assert_eq!(
            duration_env(&env, "KMM_HUB_READ_TIMEOUT").unwrap(),
            Some(Duration::from_millis(300))
        );
        assert_eq!(duration_env(&env, "KMM_HUB_RETRY_DELAY").unwrap(), None);
        for bad in ["soon", "0s", "-1s"] {
            let env = env_of(&[("KMM_HUB_READ_TIMEOUT", bad)]);
            let error = duration_env(&env, "KMM_HUB_READ_TIMEOUT").unwrap_err();
            assert_eq!(error.code(), crate::error::ErrorCode::Args, "{bad}");
            assert!(
                error.to_string().contains("KMM_HUB_READ_TIMEOUT"),
                "{error}"
            );
        }
        let mut config = crate::hub::HubConfig::new("http://127.0.0.1:1");
        let tuning = HubTuning {
            max_retries: Some(2),
            read_timeout: Some(Duration::from_millis(300)),
            ..HubTuning::default()
        };
        tuning.apply_to(&mut config);
        assert_eq!(config.max_retries, 2);
        assert_eq!(config.read_timeout, Duration::from_millis(300));
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.min_rate_bytes_per_sec, crate::hub::DEFAULT_MIN_RATE);
        assert_eq!(config.min_rate_window, crate::hub::DEFAULT_MIN_RATE_WINDOW);
    }

    #[test]
    fn the_minimum_rate_from_the_environment_and_bad_values_are_args_errors() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_with("", dir.path());
        let home = dir.path().join("hf");
        let home = home.to_str().unwrap();
        let settings_with = |pairs: &[(&str, &str)]| {
            let mut pairs = pairs.to_vec();
            pairs.push(("HF_HOME", home));
            let env = env_of(&pairs);
            resolve(&Overrides::default(), &env, &manifest, dir.path())
        };
        let tuning = settings_with(&[
            ("KMM_HUB_MIN_RATE", "2048"),
            ("KMM_HUB_MIN_RATE_TIME", "1s"),
        ])
        .unwrap()
        .hub_tuning;
        assert_eq!(tuning.min_rate, Some(2048));
        assert_eq!(tuning.min_rate_time, Some(Duration::from_secs(1)));
        let mut config = crate::hub::HubConfig::new("http://127.0.0.1:1");
        tuning.apply_to(&mut config);
        assert_eq!(config.min_rate_bytes_per_sec, 2048);
        assert_eq!(config.min_rate_window, Duration::from_secs(1));
        // 0 turns the rule off; unset leaves the default.
        let off = settings_with(&[("KMM_HUB_MIN_RATE", "0")])
            .unwrap()
            .hub_tuning;
        assert_eq!(off.min_rate, Some(0));
        assert_eq!(off.min_rate_time, None);
        for (name, bad) in [
            ("KMM_HUB_MIN_RATE", "1kB"),
            ("KMM_HUB_MIN_RATE", "-1"),
            ("KMM_HUB_MIN_RATE", "99999999999999"),
            ("KMM_HUB_MIN_RATE_TIME", "0s"),
            ("KMM_HUB_MIN_RATE_TIME", "a while"),
        ] {
            let error = settings_with(&[(name, bad)]).unwrap_err();
            assert_eq!(error.code(), crate::error::ErrorCode::Args, "{name}={bad}");
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    fn manifest_with(text: &str, dir: &Path) -> Manifest {
        Manifest::parse(&dir.join("kari-models.toml"), text).unwrap()
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn flags_beat_env_beat_manifest_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_with(
            "[settings]\nmodels_dir = \"store\"\nendpoint = \"http://127.0.0.1:1\"\nmax_workers = 3\n",
            dir.path(),
        );
        let empty_home = dir.path().join("hf");
        let home = empty_home.to_str().unwrap();

        let from_manifest = resolve(
            &Overrides::default(),
            &env_of(&[("HF_HOME", home)]),
            &manifest,
            dir.path(),
        )
        .unwrap();
        assert_eq!(from_manifest.models_dir, dir.path().join("store"));
        assert_eq!(from_manifest.endpoint, "http://127.0.0.1:1");
        assert_eq!(from_manifest.max_workers, 3);
        assert!(!from_manifest.offline);

        let env = env_of(&[
            ("HF_HOME", home),
            ("HF_ENDPOINT", "http://127.0.0.1:2/"),
            ("KMM_MAX_WORKERS", "5"),
            ("HF_HUB_OFFLINE", "yes"),
            ("KMM_MODELS_DIR", "/srv/models"),
        ]);
        let from_env = resolve(&Overrides::default(), &env, &manifest, dir.path()).unwrap();
        assert_eq!(from_env.endpoint, "http://127.0.0.1:2");
        assert_eq!(from_env.max_workers, 5);
        assert!(from_env.offline);
        assert_eq!(from_env.models_dir, PathBuf::from("/srv/models"));

        let args = Overrides {
            mirror: Some("http://127.0.0.1:3".into()),
            max_workers: Some(7),
            models_dir: Some("flag-models".into()),
            ..Overrides::default()
        };
        let from_flags = resolve(&args, &env, &manifest, dir.path()).unwrap();
        assert_eq!(from_flags.endpoint, "http://127.0.0.1:3");
        assert!(from_flags.mirror);
        assert_eq!(from_flags.max_workers, 7);
        assert_eq!(from_flags.models_dir, dir.path().join("flag-models"));
    }

    #[test]
    fn defaults_without_anything() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_with("", dir.path());
        let home = dir.path().join("hf");
        let settings = resolve(
            &Overrides::default(),
            &env_of(&[("HF_HOME", home.to_str().unwrap())]),
            &manifest,
            dir.path(),
        )
        .unwrap();
        assert_eq!(settings.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(settings.models_dir, dir.path().join("models"));
        assert_eq!(settings.max_workers, DEFAULT_MAX_WORKERS);
        assert!(settings.token.is_none());
    }

    #[test]
    fn token_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_with("", dir.path());
        let home = dir.path().join("hf");
        fs_err::create_dir_all(&home).unwrap();
        fs_err::write(home.join("token"), "hf_from_file\n").unwrap();
        let home = home.to_str().unwrap();
        let token_of = |pairs: &[(&str, &str)]| {
            resolve(&Overrides::default(), &env_of(pairs), &manifest, dir.path())
                .unwrap()
                .token
                .map(|t| t.expose().to_string())
        };
        assert_eq!(
            token_of(&[("HF_HOME", home)]).as_deref(),
            Some("hf_from_file")
        );
        assert_eq!(
            token_of(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]).as_deref(),
            Some("hf_env")
        );
        let other = dir.path().join("other-token");
        fs_err::write(&other, "  hf_path  ").unwrap();
        assert_eq!(
            token_of(&[
                ("HF_HOME", home),
                ("HF_TOKEN_PATH", other.to_str().unwrap())
            ])
            .as_deref(),
            Some("hf_path")
        );
    }

    #[test]
    fn bad_mirror_is_an_args_error() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_with("", dir.path());
        let args = Overrides {
            mirror: Some("ftp://example".into()),
            ..Overrides::default()
        };
        let error = resolve(&args, &env_of(&[]), &manifest, dir.path()).unwrap_err();
        assert_eq!(error.code(), crate::ErrorCode::Args);
    }
}
