//! Image references as a user types them (`[CONTAINER=]IMAGE`) and how they land on a pod
//! template.
//!
//! The grammar follows the container image reference format that registries and the kubelet
//! accept (`[registry[:port]/]repository[:tag][@algorithm:hex]`), so a typo such as `app:` or
//! `UPPER/Case` is refused here with a message naming the part that is wrong, instead of
//! producing a pod that sits in `InvalidImageName` half way through a rollout.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::PodSpec;
use serde::{Deserialize, Serialize};

/// Longest repository name (registry included) that registries accept.
const MAX_NAME_LEN: usize = 255;
/// Longest tag that registries accept.
const MAX_TAG_LEN: usize = 128;
/// Longest container name (a DNS-1123 label).
const MAX_CONTAINER_NAME_LEN: usize = 63;

/// Why an image reference or a `CONTAINER=IMAGE` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference is empty")]
    Empty,
    #[error(
        "image reference `{input}` contains whitespace; quote the argument or remove the space"
    )]
    Whitespace { input: String },
    #[error("image reference `{input}` ends with `:` but has no tag after it (write e.g. `{name}:v2`, or drop the `:`)")]
    EmptyTag { input: String, name: String },
    #[error("image reference `{input}` has an invalid tag `{tag}`: a tag is 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`")]
    BadTag { input: String, tag: String },
    #[error("image reference `{input}`: repository `{component}` must be lowercase (registries refuse upper-case repository names)")]
    UppercaseRepository { input: String, component: String },
    #[error("image reference `{input}`: repository path component `{component}` is invalid: use lowercase letters and digits separated by `.`, `_`, `__` or `-`")]
    BadRepositoryComponent { input: String, component: String },
    #[error("image reference `{input}`: registry `{registry}` is not a valid host[:port]")]
    BadRegistry { input: String, registry: String },
    #[error("image reference `{input}`: digest `{digest}` is invalid (expected algorithm:hex, e.g. sha256:<64 hex digits>)")]
    BadDigest { input: String, digest: String },
    #[error("image reference `{input}` is longer than {MAX_NAME_LEN} characters")]
    TooLong { input: String },
    #[error("`{input}`: container name `{name}` is not a valid container name (lowercase letters, digits and `-`, at most 63, starting and ending with a letter or digit)")]
    BadContainerName { input: String, name: String },
    #[error("`{input}`: nothing after `=`; write CONTAINER=IMAGE")]
    MissingImageAfterEquals { input: String },
}

/// Why a set of image changes does not fit a pod template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyImageError {
    #[error(
        "StatefulSet {statefulset} has no container `{container}` (its containers: {available})"
    )]
    NoSuchContainer {
        statefulset: String,
        container: String,
        available: String,
    },
    #[error("StatefulSet {statefulset} has several containers ({available}); say which one with --image CONTAINER=IMAGE")]
    AmbiguousContainer {
        statefulset: String,
        available: String,
    },
    #[error("StatefulSet {statefulset} has no containers to set an image on")]
    NoContainers { statefulset: String },
    #[error("container `{container}` is given more than one image")]
    DuplicateContainer { container: String },
    #[error("no image given: use --image [CONTAINER=]IMAGE or --manifest FILE")]
    NothingToChange,
}

/// A validated image reference, e.g. `registry.local:5000/team/app:v2@sha256:...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host (and port) when the reference names one.
    pub registry: Option<String>,
    /// Repository path without registry, tag or digest (`team/app`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(registry) = &self.registry {
            write!(f, "{registry}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_image_ref(input)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_image_ref(input: &str) -> Result<ImageRef, ImageRefError> {
    if input.is_empty() {
        return Err(ImageRefError::Empty);
    }
    if input.chars().any(char::is_whitespace) {
        return Err(ImageRefError::Whitespace {
            input: input.to_string(),
        });
    }
    let err_input = || input.to_string();

    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => {
            if !is_valid_digest(digest) {
                return Err(ImageRefError::BadDigest {
                    input: err_input(),
                    digest: digest.to_string(),
                });
            }
            (rest, Some(digest.to_string()))
        }
        None => (input, None),
    };

    // A `:` after the last `/` separates the tag; one before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            let tag = &rest[at + 1..];
            let name = &rest[..at];
            if tag.is_empty() {
                return Err(ImageRefError::EmptyTag {
                    input: err_input(),
                    name: name.to_string(),
                });
            }
            if !is_valid_tag(tag) {
                return Err(ImageRefError::BadTag {
                    input: err_input(),
                    tag: tag.to_string(),
                });
            }
            (name, Some(tag.to_string()))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(ImageRefError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ImageRefError::TooLong { input: err_input() });
    }

    let (registry, repository) = match name.split_once('/') {
        Some((first, remainder)) if looks_like_registry(first) => {
            if !is_valid_registry(first) {
                return Err(ImageRefError::BadRegistry {
                    input: err_input(),
                    registry: first.to_string(),
                });
            }
            (Some(first.to_string()), remainder)
        }
        _ => (None, name),
    };
    for component in repository.split('/') {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ImageRefError::UppercaseRepository {
                input: err_input(),
                component: repository.to_string(),
            });
        }
        if !is_valid_path_component(component) {
            return Err(ImageRefError::BadRepositoryComponent {
                input: err_input(),
                component: component.to_string(),
            });
        }
    }
    Ok(ImageRef {
        registry,
        repository: repository.to_string(),
        tag,
        digest,
    })
}

/// The same rule the container tools use: a first component with a `.` or `:`, or `localhost`,
/// is a registry, otherwise it is the first part of the repository path.
fn looks_like_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn is_valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        // An IPv6 literal in brackets keeps its colons inside the brackets.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (registry, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return false;
        }
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !is_lower_alnum(*first) || !is_lower_alnum(*last) {
        return false;
    }
    // Separators between alphanumeric runs: `.`, `_`, `__`, or any number of `-`.
    let mut i = 0;
    while i < bytes.len() {
        if is_lower_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_lower_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    tag.len() <= MAX_TAG_LEN
        && bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic)
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'_' | b'-'));
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True when `name` is a valid container name (a DNS-1123 label).
pub fn is_valid_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= MAX_CONTAINER_NAME_LEN
        && bytes.iter().all(|b| is_lower_alnum(*b) || *b == b'-')
        && bytes.first().is_some_and(|b| is_lower_alnum(*b))
        && bytes.last().is_some_and(|b| is_lower_alnum(*b))
}

/// One `--image [CONTAINER=]IMAGE` argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageChange {
    /// The container to change; `None` means "the only container".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub image: ImageRef,
}

impl FromStr for ImageChange {
    type Err = ImageRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.split_once('=') {
            Some((container, image)) => {
                if !is_valid_container_name(container) {
                    return Err(ImageRefError::BadContainerName {
                        input: input.to_string(),
                        name: container.to_string(),
                    });
                }
                if image.is_empty() {
                    return Err(ImageRefError::MissingImageAfterEquals {
                        input: input.to_string(),
                    });
                }
                Ok(ImageChange {
                    container: Some(container.to_string()),
                    image: image.parse()?,
                })
            }
            None => Ok(ImageChange {
                container: None,
                image: input.parse()?,
            }),
        }
    }
}

impl fmt::Display for ImageChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.container {
            Some(container) => write!(f, "{container}={}", self.image),
            None => write!(f, "{}", self.image),
        }
    }
}

/// A container and the image it runs; used for the stable and target images in plans and
/// state records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    pub container: String,
    pub image: String,
}

/// The images of a pod spec's containers (not init containers), in order.
pub fn container_images(spec: &PodSpec) -> Vec<ContainerImage> {
    spec.containers
        .iter()
        .map(|c| ContainerImage {
            container: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
        })
        .collect()
}

/// Resolves `--image` arguments against a pod spec: which container each one names (a bare
/// IMAGE needs exactly one container) and the image it gets. Init containers can be named
/// explicitly; a bare IMAGE never targets one.
pub fn resolve_image_changes(
    statefulset: &str,
    spec: &PodSpec,
    changes: &[ImageChange],
) -> Result<Vec<ContainerImage>, ApplyImageError> {
    if changes.is_empty() {
        return Err(ApplyImageError::NothingToChange);
    }
    let names: Vec<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect();
    let available = || {
        spec.containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut resolved: Vec<ContainerImage> = Vec::with_capacity(changes.len());
    for change in changes {
        let container = match &change.container {
            Some(name) if names.contains(&name.as_str()) => name.clone(),
            Some(name) => {
                return Err(ApplyImageError::NoSuchContainer {
                    statefulset: statefulset.to_string(),
                    container: name.clone(),
                    available: available(),
                })
            }
            None => match spec.containers.as_slice() {
                [only] => only.name.clone(),
                [] => {
                    return Err(ApplyImageError::NoContainers {
                        statefulset: statefulset.to_string(),
                    })
                }
                _ => {
                    return Err(ApplyImageError::AmbiguousContainer {
                        statefulset: statefulset.to_string(),
                        available: available(),
                    })
                }
            },
        };
        if resolved.iter().any(|r| r.container == container) {
            return Err(ApplyImageError::DuplicateContainer { container });
        }
        resolved.push(ContainerImage {
            container,
            image: change.image.to_string(),
        });
    }
    Ok(resolved)
}

/// Sets resolved images on a pod spec (containers and init containers by name).
/// Names that are not there are left alone: resolve first with [`resolve_image_changes`].
pub fn apply_images(spec: &mut PodSpec, images: &[ContainerImage]) {
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        if let Some(change) = images.iter().find(|i| i.container == container.name) {
            container.image = Some(change.image.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    type IsRefError = fn(&ImageRefError) -> bool;
    type IsApplyError = fn(&ApplyImageError) -> bool;

    #[test]
    fn valid_references_parse_and_print_back() {
        let cases = [
            ("app", None, "app", None, None),
            ("app:v2", None, "app", Some("v2"), None),
            (
                "team/app:1.2.3-rc.1",
                None,
                "team/app",
                Some("1.2.3-rc.1"),
                None,
            ),
            (
                "registry.local:5000/team/app:v2",
                Some("registry.local:5000"),
                "team/app",
                Some("v2"),
                None,
            ),
            ("localhost/app", Some("localhost"), "app", None, None),
            (
                "localhost:5000/app:latest",
                Some("localhost:5000"),
                "app",
                Some("latest"),
                None,
            ),
            (
                "ghcr.io/org/my_app__x:V2",
                Some("ghcr.io"),
                "org/my_app__x",
                Some("V2"),
                None,
            ),
            (
                "[::1]:5000/app:v1",
                Some("[::1]:5000"),
                "app",
                Some("v1"),
                None,
            ),
            ("a--b.c/d", Some("a--b.c"), "d", None, None),
            ("app---x", None, "app---x", None, None),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let parsed: ImageRef = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.registry.as_deref(), registry, "{input}");
            assert_eq!(parsed.repository, repository, "{input}");
            assert_eq!(parsed.tag.as_deref(), tag, "{input}");
            assert_eq!(parsed.digest.as_deref(), digest, "{input}");
            assert_eq!(parsed.to_string(), input);
        }
    }

    #[test]
    fn digest_references_parse() {
        let hex = "a".repeat(64);
        let input = format!("app:v2@sha256:{hex}");
        let parsed: ImageRef = input.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.tag.as_deref(), Some("v2"));
        assert_eq!(parsed.digest, Some(format!("sha256:{hex}")));
        assert_eq!(parsed.to_string(), input);
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        let cases: &[(&str, IsRefError, &str)] = &[
            ("", |e| matches!(e, ImageRefError::Empty), "empty"),
            (
                "app:",
                |e| matches!(e, ImageRefError::EmptyTag { .. }),
                "no tag after",
            ),
            (
                "UPPER/Case",
                |e| matches!(e, ImageRefError::UppercaseRepository { .. }),
                "lowercase",
            ),
            (
                "App",
                |e| matches!(e, ImageRefError::UppercaseRepository { .. }),
                "lowercase",
            ),
            (
                "my app:v1",
                |e| matches!(e, ImageRefError::Whitespace { .. }),
                "whitespace",
            ),
            (
                "app:v1 ",
                |e| matches!(e, ImageRefError::Whitespace { .. }),
                "whitespace",
            ),
            (
                "app:-v1",
                |e| matches!(e, ImageRefError::BadTag { .. }),
                "invalid tag",
            ),
            (
                "app:v1/x",
                |e| matches!(e, ImageRefError::BadRegistry { .. }),
                "host[:port]",
            ),
            (
                "app:v!",
                |e| matches!(e, ImageRefError::BadTag { .. }),
                "invalid tag",
            ),
            (
                "-app",
                |e| matches!(e, ImageRefError::BadRepositoryComponent { .. }),
                "path component",
            ),
            (
                "app.",
                |e| matches!(e, ImageRefError::BadRepositoryComponent { .. }),
                "path component",
            ),
            (
                "team//app",
                |e| matches!(e, ImageRefError::BadRepositoryComponent { .. }),
                "path component",
            ),
            (
                "a___b",
                |e| matches!(e, ImageRefError::BadRepositoryComponent { .. }),
                "path component",
            ),
            (
                "reg.io:port/app",
                |e| matches!(e, ImageRefError::BadRegistry { .. }),
                "host[:port]",
            ),
            (
                "app@sha256:xyz",
                |e| matches!(e, ImageRefError::BadDigest { .. }),
                "digest",
            ),
            (
                "app@",
                |e| matches!(e, ImageRefError::BadDigest { .. }),
                "digest",
            ),
            (":v1", |e| matches!(e, ImageRefError::Empty), "empty"),
        ];
        for (input, check, fragment) in cases {
            let err = input.parse::<ImageRef>().expect_err(input);
            assert!(check(&err), "{input}: unexpected error {err:?}");
            let message = err.to_string();
            assert!(
                message.contains(fragment),
                "{input}: message `{message}` lacks `{fragment}`"
            );
            if !input.is_empty() && !matches!(err, ImageRefError::Empty) {
                assert!(
                    message.contains(input.trim_end()),
                    "{input}: message `{message}` does not quote the input"
                );
            }
        }
    }

    #[test]
    fn overlong_tag_and_name_are_refused() {
        let tag = "v".repeat(129);
        assert!(matches!(
            format!("app:{tag}").parse::<ImageRef>(),
            Err(ImageRefError::BadTag { .. })
        ));
        let name = "a".repeat(256);
        assert!(matches!(
            name.parse::<ImageRef>(),
            Err(ImageRefError::TooLong { .. })
        ));
    }

    #[test]
    fn image_changes_parse_with_and_without_container() {
        let cases = [
            ("app:v2", None, "app:v2"),
            ("web=app:v2", Some("web"), "app:v2"),
            (
                "side-car=registry.local:5000/x:1",
                Some("side-car"),
                "registry.local:5000/x:1",
            ),
        ];
        for (input, container, image) in cases {
            let change: ImageChange = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(change.container.as_deref(), container);
            assert_eq!(change.image.to_string(), image);
            assert_eq!(change.to_string(), input);
        }
    }

    #[test]
    fn bad_image_changes_are_refused() {
        let cases: &[(&str, IsRefError)] = &[
            ("Web=app:v2", |e| {
                matches!(e, ImageRefError::BadContainerName { .. })
            }),
            ("=app:v2", |e| {
                matches!(e, ImageRefError::BadContainerName { .. })
            }),
            ("web=", |e| {
                matches!(e, ImageRefError::MissingImageAfterEquals { .. })
            }),
            ("web=app:", |e| matches!(e, ImageRefError::EmptyTag { .. })),
            ("web_1=app", |e| {
                matches!(e, ImageRefError::BadContainerName { .. })
            }),
        ];
        for (input, check) in cases {
            let err = input.parse::<ImageChange>().expect_err(input);
            assert!(check(&err), "{input}: {err:?}");
        }
    }

    fn spec(names: &[&str], init: &[&str]) -> PodSpec {
        let make = |n: &&str| Container {
            name: n.to_string(),
            image: Some("old:1".into()),
            ..Default::default()
        };
        PodSpec {
            containers: names.iter().map(make).collect(),
            init_containers: (!init.is_empty()).then(|| init.iter().map(make).collect()),
            ..Default::default()
        }
    }

    fn changes(args: &[&str]) -> Vec<ImageChange> {
        args.iter()
            .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
            .collect()
    }

    #[test]
    fn resolving_images_against_containers() {
        type Expect = Result<Vec<(&'static str, &'static str)>, IsApplyError>;
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], Expect);
        let cases: Vec<Case> = vec![
            (&["app"], &[], &["app:v2"], Ok(vec![("app", "app:v2")])),
            (
                &["app", "proxy"],
                &[],
                &["proxy=envoy:2"],
                Ok(vec![("proxy", "envoy:2")]),
            ),
            (
                &["app", "proxy"],
                &[],
                &["app=a:2", "proxy=p:2"],
                Ok(vec![("app", "a:2"), ("proxy", "p:2")]),
            ),
            (
                &["app"],
                &["migrate"],
                &["migrate=m:2"],
                Ok(vec![("migrate", "m:2")]),
            ),
            (
                &["app", "proxy"],
                &[],
                &["app:v2"],
                Err(|e| matches!(e, ApplyImageError::AmbiguousContainer { .. })),
            ),
            (
                &["app"],
                &[],
                &["db=pg:16"],
                Err(|e| matches!(e, ApplyImageError::NoSuchContainer { .. })),
            ),
            (
                &["app"],
                &[],
                &["app=a:2", "a:3"],
                Err(|e| matches!(e, ApplyImageError::DuplicateContainer { .. })),
            ),
            (
                &[],
                &[],
                &["a:3"],
                Err(|e| matches!(e, ApplyImageError::NoContainers { .. })),
            ),
            (
                &["app"],
                &[],
                &[],
                Err(|e| matches!(e, ApplyImageError::NothingToChange)),
            ),
        ];
        for (containers, init, args, expect) in cases {
            let got = resolve_image_changes("web", &spec(containers, init), &changes(args));
            match (got, expect) {
                (Ok(got), Ok(want)) => {
                    let got: Vec<(&str, &str)> = got
                        .iter()
                        .map(|c| (c.container.as_str(), c.image.as_str()))
                        .collect();
                    assert_eq!(got, want, "{args:?}");
                }
                (Err(e), Err(check)) => assert!(check(&e), "{args:?}: {e:?}"),
                (got, _) => panic!("{args:?}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn no_such_container_message_lists_the_containers() {
        let err = resolve_image_changes(
            "web",
            &spec(&["app", "proxy"], &[]),
            &changes(&["db=pg:16"]),
        )
        .expect_err("db is not a container");
        assert_eq!(
            err.to_string(),
            "StatefulSet web has no container `db` (its containers: app, proxy)"
        );
    }

    #[test]
    fn applying_images_changes_only_named_containers() {
        let mut pod = spec(&["app", "proxy"], &["migrate"]);
        apply_images(
            &mut pod,
            &[
                ContainerImage {
                    container: "proxy".into(),
                    image: "envoy:2".into(),
                },
                ContainerImage {
                    container: "migrate".into(),
                    image: "m:2".into(),
                },
            ],
        );
        let images = container_images(&pod);
        assert_eq!(images[0].image, "old:1");
        assert_eq!(images[1].image, "envoy:2");
        let init = pod.init_containers.clone().unwrap_or_default();
        assert_eq!(init[0].image.as_deref(), Some("m:2"));
    }
}
