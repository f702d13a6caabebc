//! Object names from the command line, checked before any request: an empty or malformed name
//! would otherwise reach the API server as a request it cannot route (a list instead of a get,
//! or "namespace parameter required") and come back as a misleading error.

/// What kind of name is being checked, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A StatefulSet: a DNS subdomain (RFC 1123), at most 253 characters.
    StatefulSet,
    /// A namespace: a DNS label (RFC 1123), at most 63 characters, no dots.
    Namespace,
}

impl NameKind {
    fn what(self) -> &'static str {
        match self {
            NameKind::StatefulSet => "StatefulSet name",
            NameKind::Namespace => "namespace",
        }
    }

    fn max_len(self) -> usize {
        match self {
            NameKind::StatefulSet => 253,
            NameKind::Namespace => 63,
        }
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the {what} is empty; give the name (e.g. `time-app`)")]
    Empty { what: &'static str },
    #[error("the {what} `{name}` is not a valid Kubernetes name: {reason}; names are lowercase letters, digits and `-`{dots}, starting and ending with a letter or digit (`kubectl get {list}` lists them)")]
    Invalid {
        what: &'static str,
        name: String,
        reason: String,
        dots: &'static str,
        list: &'static str,
    },
}

/// Checks `name` as a `kind` name; returns it unchanged when it is one.
pub fn check_name(kind: NameKind, name: &str) -> Result<String, NameError> {
    let what = kind.what();
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    let invalid = |reason: String| NameError::Invalid {
        what,
        name: name.to_string(),
        reason,
        dots: match kind {
            NameKind::StatefulSet => " or `.`",
            NameKind::Namespace => "",
        },
        list: match kind {
            NameKind::StatefulSet => "statefulsets",
            NameKind::Namespace => "namespaces",
        },
    };
    if name.len() > kind.max_len() {
        return Err(invalid(format!(
            "it has {} characters, more than {}",
            name.len(),
            kind.max_len()
        )));
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || (c == '.' && kind == NameKind::StatefulSet)
    };
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        let reason = if c.is_ascii_uppercase() {
            format!("it has the uppercase letter `{c}`")
        } else if c.is_whitespace() {
            "it has a space".to_string()
        } else {
            format!("it has the character `{c}`")
        };
        return Err(invalid(reason));
    }
    // Each dot-separated part starts and ends with a letter or digit.
    for part in name.split('.') {
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !alnum(part.chars().next()) || !alnum(part.chars().last()) {
            return Err(invalid(format!(
                "`{part}` does not start and end with a letter or digit"
            )));
        }
    }
    Ok(name.to_string())
}

/// clap's value parser for a StatefulSet argument.
pub fn statefulset_name(input: &str) -> Result<String, NameError> {
    check_name(NameKind::StatefulSet, input)
}

/// clap's value parser for `-n/--namespace`.
pub fn namespace_name(input: &str) -> Result<String, NameError> {
    check_name(NameKind::Namespace, input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass_unchanged() {
        for name in [
            "time-app",
            "a",
            "web-0",
            "db.primary",
            "x1",
            &"a".repeat(253),
        ] {
            assert_eq!(statefulset_name(name).as_deref(), Ok(name), "{name}");
        }
        for ns in ["default", "shop-1", &"n".repeat(63)] {
            assert_eq!(namespace_name(ns).as_deref(), Ok(ns), "{ns}");
        }
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let cases: &[(NameKind, &str, &str)] = &[
            (NameKind::StatefulSet, "", "is empty"),
            (NameKind::StatefulSet, "Time-App", "uppercase letter `T`"),
            (NameKind::StatefulSet, "time_app", "character `_`"),
            (NameKind::StatefulSet, "time app", "a space"),
            (
                NameKind::StatefulSet,
                "-app",
                "`-app` does not start and end",
            ),
            (NameKind::StatefulSet, "app-", "does not start and end"),
            (NameKind::StatefulSet, "a..b", "`` does not start and end"),
            (NameKind::StatefulSet, "app/x", "character `/`"),
            (NameKind::Namespace, "", "namespace is empty"),
            (NameKind::Namespace, "my.ns", "character `.`"),
            (NameKind::Namespace, "Shop", "uppercase"),
            (
                NameKind::Namespace,
                &"n".repeat(64),
                "64 characters, more than 63",
            ),
        ];
        for (kind, name, needle) in cases {
            let err = check_name(*kind, name).expect_err(name).to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
        let long = "a".repeat(254);
        assert!(statefulset_name(&long).is_err());
    }
}
