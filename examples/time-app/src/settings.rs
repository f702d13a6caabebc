//! The app's settings, read once from environment variables before anything starts.
//!
//! Parsing takes a lookup function instead of reading the process environment, so every rule
//! is tested with table cases. An empty value counts as unset, because manifests often carry
//! `value: ""` to switch a knob off.

use std::path::PathBuf;
use std::time::Duration;

/// Port used when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 8080;
/// Data directory used when `DATA_DIR` is unset: the StatefulSet mounts the pod's volume here.
pub const DEFAULT_DATA_DIR: &str = "/data";
/// Shown when neither the image tag nor the pod name was given.
pub const UNKNOWN: &str = "unknown";

/// Everything the app needs to start, resolved from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub port: u16,
    pub data_dir: PathBuf,
    /// From the image tag (`time-app:v2` -> `v2`), set by the node agent as `APP_VERSION`.
    pub version: String,
    pub pod: String,
    pub namespace: Option<String>,
    pub pod_ip: Option<String>,
    pub faults: Faults,
}

/// Knobs that make a release misbehave on purpose, so rollouts can be tested against bad pods.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Fraction of `/` requests answered 500, in `0.0..=1.0`.
    pub fail_rate: f64,
    /// Added before answering `/`.
    pub latency: Duration,
    /// `/` answers 503 for this long after start.
    pub not_ready_for: Duration,
    /// Exit with status 1 right at start.
    pub crash_at_start: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            latency: Duration::ZERO,
            not_ready_for: Duration::ZERO,
            crash_at_start: false,
        }
    }
}

impl Faults {
    /// The knobs that are switched on, as `NAME=value` words for the start line.
    pub fn describe_active(&self) -> Vec<String> {
        let mut active = Vec::new();
        if self.fail_rate > 0.0 {
            active.push(format!("FAIL_RATE={}", self.fail_rate));
        }
        if !self.latency.is_zero() {
            active.push(format!("LATENCY_MS={}", self.latency.as_millis()));
        }
        if !self.not_ready_for.is_zero() {
            active.push(format!(
                "NOT_READY_SECONDS={}",
                self.not_ready_for.as_secs()
            ));
        }
        active
    }
}

/// A setting that could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("invalid {name}={value:?}: {reason}")]
    ParseVariable {
        name: &'static str,
        value: String,
        reason: String,
    },
}

impl Settings {
    /// Reads every setting through `lookup` (a variable name to its value, if set).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        // Treat "" like unset; keep the raw text for error messages.
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        let port = parse_with(&get, "PORT", parse_port)?.unwrap_or(DEFAULT_PORT);
        let data_dir = get("DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let version = parse_with(&get, "APP_VERSION", parse_header_text)?
            .unwrap_or_else(|| UNKNOWN.to_string());
        // Outside Kubernetes the host name is the closest thing to a pod name.
        let pod = match parse_with(&get, "POD_NAME", parse_header_text)? {
            Some(pod) => pod,
            None => parse_with(&get, "HOSTNAME", parse_header_text)?
                .unwrap_or_else(|| UNKNOWN.to_string()),
        };
        let faults = Faults {
            fail_rate: parse_with(&get, "FAIL_RATE", parse_fail_rate)?.unwrap_or(0.0),
            latency: parse_with(&get, "LATENCY_MS", parse_u64)?
                .map(Duration::from_millis)
                .unwrap_or(Duration::ZERO),
            not_ready_for: parse_with(&get, "NOT_READY_SECONDS", parse_u64)?
                .map(Duration::from_secs)
                .unwrap_or(Duration::ZERO),
            crash_at_start: parse_with(&get, "CRASH_AT_START", parse_flag)?.unwrap_or(false),
        };
        Ok(Self {
            port,
            data_dir,
            version,
            pod,
            namespace: get("POD_NAMESPACE"),
            pod_ip: get("POD_IP"),
            faults,
        })
    }
}

fn parse_with<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, SettingsError> {
    match get(name) {
        None => Ok(None),
        Some(value) => {
            parse(value.trim())
                .map(Some)
                .map_err(|reason| SettingsError::ParseVariable {
                    name,
                    value,
                    reason,
                })
        }
    }
}

/// A TCP port to listen on; 0 is refused because a pod's port must be known in advance.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err("expected a port number in 1..=65535".to_string()),
        Ok(port) => Ok(port),
    }
}

/// A fraction of requests, `0.0..=1.0`.
pub fn parse_fail_rate(text: &str) -> Result<f64, String> {
    let expected = "expected a fraction between 0.0 and 1.0, e.g. 0.25";
    let rate: f64 = text.parse().map_err(|_| expected.to_string())?;
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(expected.to_string())
    }
}

/// A non-negative whole number (milliseconds or seconds, depending on the knob).
pub fn parse_u64(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| "expected a non-negative whole number".to_string())
}

/// A yes/no switch.
pub fn parse_flag(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 1/true/yes/on or 0/false/no/off".to_string()),
    }
}

/// Text that goes into a response header (`X-App-Version`, `X-Pod-Name`) as it is.
pub fn parse_header_text(text: &str) -> Result<String, String> {
    if text.bytes().all(|byte| byte.is_ascii_graphic()) {
        Ok(text.to_string())
    } else {
        Err("expected printable ASCII without spaces (it is sent in a response header)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_from(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_lookup(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let settings = settings_from(&[]).expect("no variables is valid");
        assert_eq!(
            settings,
            Settings {
                port: 8080,
                data_dir: PathBuf::from("/data"),
                version: "unknown".into(),
                pod: "unknown".into(),
                namespace: None,
                pod_ip: None,
                faults: Faults::default(),
            }
        );
    }

    #[test]
    fn reads_every_variable() {
        let settings = settings_from(&[
            ("PORT", "9000"),
            ("DATA_DIR", "/tmp/x"),
            ("APP_VERSION", "v2"),
            ("POD_NAME", "time-app-1"),
            ("HOSTNAME", "ignored-host"),
            ("POD_NAMESPACE", "default"),
            ("POD_IP", "10.244.0.7"),
            ("FAIL_RATE", "0.5"),
            ("LATENCY_MS", "250"),
            ("NOT_READY_SECONDS", "7"),
            ("CRASH_AT_START", "true"),
        ])
        .expect("all valid");
        assert_eq!(
            settings,
            Settings {
                port: 9000,
                data_dir: PathBuf::from("/tmp/x"),
                version: "v2".into(),
                pod: "time-app-1".into(),
                namespace: Some("default".into()),
                pod_ip: Some("10.244.0.7".into()),
                faults: Faults {
                    fail_rate: 0.5,
                    latency: Duration::from_millis(250),
                    not_ready_for: Duration::from_secs(7),
                    crash_at_start: true,
                },
            }
        );
    }

    #[test]
    fn pod_name_falls_back_to_hostname() {
        let settings = settings_from(&[("HOSTNAME", "laptop")]).expect("valid");
        assert_eq!(settings.pod, "laptop");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let settings = settings_from(&[
            ("PORT", ""),
            ("FAIL_RATE", " "),
            ("CRASH_AT_START", ""),
            ("APP_VERSION", ""),
        ])
        .expect("empty is unset");
        assert_eq!(settings.port, DEFAULT_PORT);
        assert_eq!(settings.faults, Faults::default());
        assert_eq!(settings.version, UNKNOWN);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("PORT", "http"),
            ("PORT", "0"),
            ("PORT", "70000"),
            ("FAIL_RATE", "abc"),
            ("FAIL_RATE", "1.5"),
            ("FAIL_RATE", "-0.1"),
            ("FAIL_RATE", "NaN"),
            ("LATENCY_MS", "-5"),
            ("LATENCY_MS", "1.5"),
            ("NOT_READY_SECONDS", "10s"),
            ("CRASH_AT_START", "maybe"),
            ("APP_VERSION", "v 2"),
            ("POD_NAME", "web\n0"),
        ];
        for (name, value) in cases {
            let err = settings_from(&[(name, value)]).expect_err(&format!("{name}={value:?}"));
            let SettingsError::ParseVariable {
                name: got_name,
                value: got_value,
                ..
            } = &err;
            assert_eq!((*got_name, got_value.as_str()), (*name, *value));
            let message = err.to_string();
            assert!(message.contains(name), "{message} names {name}");
        }
    }

    #[test]
    fn parse_fail_rate_cases() {
        let cases: &[(&str, Option<f64>)] = &[
            ("0", Some(0.0)),
            ("0.0", Some(0.0)),
            ("0.25", Some(0.25)),
            ("1", Some(1.0)),
            ("1.0", Some(1.0)),
            ("1.0001", None),
            ("inf", None),
            ("", None),
            ("25%", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_fail_rate(text).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn parse_flag_cases() {
        let cases: &[(&str, Option<bool>)] = &[
            ("1", Some(true)),
            ("true", Some(true)),
            ("TRUE", Some(true)),
            ("yes", Some(true)),
            ("on", Some(true)),
            ("0", Some(false)),
            ("false", Some(false)),
            ("No", Some(false)),
            ("off", Some(false)),
            ("2", None),
            ("y", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_flag(text).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn parse_port_cases() {
        let cases: &[(&str, Option<u16>)] = &[
            ("1", Some(1)),
            ("8080", Some(8080)),
            ("65535", Some(65535)),
            ("0", None),
            ("65536", None),
            ("-1", None),
            ("80a", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_port(text).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn describe_active_lists_only_switched_on_knobs() {
        assert!(Faults::default().describe_active().is_empty());
        let faults = Faults {
            fail_rate: 0.2,
            latency: Duration::from_millis(300),
            not_ready_for: Duration::from_secs(4),
            crash_at_start: false,
        };
        assert_eq!(
            faults.describe_active(),
            ["FAIL_RATE=0.2", "LATENCY_MS=300", "NOT_READY_SECONDS=4"]
        );
    }
}
