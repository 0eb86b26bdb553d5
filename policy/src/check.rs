//! Field checks shared by the kinds: names, labels, HTTP tokens, ranges.
//!
//! Each check appends to a [`Checker`] instead of returning early, so one run reports every
//! problem of a resource.

use crate::duration::HumanDuration;
use crate::error::FieldError;

/// The longest duration any field accepts. Proxies add durations to clocks; a bound keeps
/// `Instant + Duration` from overflowing, and nothing in a mesh needs to wait a week.
pub const MAX_DURATION: HumanDuration = HumanDuration::from_secs(7 * 24 * 3600);

/// Collects the problems of one resource.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    pub(crate) errors: Vec<FieldError>,
}

impl Checker {
    pub(crate) fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason));
    }

    /// A DNS-1123 label: what Kubernetes requires of namespace and service names, and what a
    /// name must be to appear in `SVC.NS.svc.clusterset.local`.
    pub(crate) fn dns_label(&mut self, path: &str, value: &str) {
        if let Err(reason) = dns_label(value) {
            self.err(path, reason);
        }
    }

    pub(crate) fn labels<'a>(
        &mut self,
        path: &str,
        labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) {
        for (key, value) in labels {
            if let Err(reason) = label_key(key) {
                self.err(format!("{path}.{key}"), reason);
            }
            if let Err(reason) = label_value(value) {
                self.err(format!("{path}.{key}"), reason);
            }
        }
    }

    pub(crate) fn percent(&mut self, path: &str, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.err(
                path,
                format!("{value} is not a percentage between 0 and 100"),
            );
        }
    }

    /// A duration that must be positive and at most [`MAX_DURATION`].
    pub(crate) fn duration(&mut self, path: &str, value: HumanDuration) {
        if value.get().is_zero() {
            self.err(
                path,
                "must be greater than 0 (leave the field out to use the default)",
            );
        } else if value > MAX_DURATION {
            self.err(
                path,
                format!("{value} is longer than the maximum of {MAX_DURATION}"),
            );
        }
    }

    pub(crate) fn at_least(&mut self, path: &str, value: u64, min: u64) {
        if value < min {
            self.err(path, format!("must be at least {min}, got {value}"));
        }
    }

    pub(crate) fn status(&mut self, path: &str, value: u16, range: std::ops::RangeInclusive<u16>) {
        if !range.contains(&value) {
            self.err(
                path,
                format!(
                    "{value} is not an HTTP status between {} and {}",
                    range.start(),
                    range.end()
                ),
            );
        }
    }

    pub(crate) fn method(&mut self, path: &str, value: &str) {
        if let Err(reason) = http_method(value) {
            self.err(path, reason);
        }
    }

    /// A path or path prefix as it appears in an HTTP request line.
    pub(crate) fn http_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') {
            self.err(path, format!("{value:?} must start with /"));
        } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(path, format!("{value:?} must not contain whitespace"));
        }
    }

    pub(crate) fn regex(&mut self, path: &str, value: &str) {
        if let Err(e) = regex::Regex::new(value) {
            // The regex crate's message spans several lines with a caret diagram; keep the
            // last line, which says what is wrong, so the error stays on one line.
            let text = e.to_string();
            let reason = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid")
                .trim()
                .trim_start_matches("error: ")
                .to_owned();
            self.err(
                path,
                format!("invalid regular expression {value:?}: {reason}"),
            );
        }
    }

    pub(crate) fn header_name(&mut self, path: &str, value: &str) {
        if value.is_empty() {
            self.err(path, "must not be empty");
        } else if !value.bytes().all(is_tchar) {
            self.err(
                path,
                format!("{value:?} is not a valid HTTP header name (letters, digits and -)"),
            );
        }
    }
}

pub(crate) fn dns_label(value: &str) -> Result<(), String> {
    if strait_proto::names::is_dns_label(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// Kubernetes label key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// characters. Endpoint labels come from Kubernetes pods, so the same syntax applies.
fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|l| dns_label(l).is_ok());
        if !ok {
            return Err(format!(
                "label key {key:?} has an invalid prefix: it must be a lower-case DNS name"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Err(format!(
            "invalid label key {key:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && label_chars(value)) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn label_chars(s: &str) -> bool {
    let bytes = s.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// RFC 9110 token characters, which header names and methods are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn http_method(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    // Methods are case-sensitive on the wire; `get` would silently never match a GET request,
    // so it is refused with the spelling that would.
    if value
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Ok(());
    }
    if value.bytes().all(is_tchar) {
        Err(format!(
            "HTTP methods are case-sensitive and upper-case: {value:?} would never match; did you mean {:?}?",
            value.to_ascii_uppercase()
        ))
    } else {
        Err(format!("{value:?} is not an HTTP method"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "echo", "echo-v2", "0abc", &"a".repeat(63)] {
            assert!(dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Echo", "a.b", "a_b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "app.kubernetes.io/name", "version", "a_b.c-d"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/app", "Bad_Prefix/app", "app/", "-app", "a b"] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2").is_ok());
        assert!(label_value("v1 2").is_err());
    }

    #[test]
    fn methods() {
        assert!(http_method("GET").is_ok());
        assert!(http_method("PROPFIND").is_ok());
        let err = http_method("get").unwrap_err();
        assert!(err.contains("\"GET\""), "{err}");
        assert!(http_method("GE T").is_err());
    }

    #[test]
    fn regex_errors_stay_on_one_line() {
        let mut c = Checker::default();
        c.regex("p", "(unclosed");
        assert_eq!(c.errors.len(), 1);
        assert!(!c.errors[0].reason.contains('\n'), "{}", c.errors[0].reason);
        assert!(
            c.errors[0].reason.contains("unclosed"),
            "{}",
            c.errors[0].reason
        );
    }
}
