//! Images without a container engine: the runtime file (`devcluster/runtime.yaml`, format
//! documented at its top) maps an image name to a local command, and this module turns an image
//! reference plus a container spec into the argv and environment to run, with kubelet semantics
//! (`command` replaces the entrypoint, `args` replace the default arguments, `$(VAR)` expands).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not read the runtime file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime file {path} is not valid: {source}")]
    ParseFile {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("no command is mapped for image {image:?} (add `{name}:` to {path})")]
    NoMapping {
        image: String,
        name: String,
        path: PathBuf,
    },
    #[error("image {image:?} has no command: neither the pod nor {path} gives one")]
    NoCommand { image: String, path: PathBuf },
}

/// One entry of the runtime file: what the image would hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageCommand {
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeMap {
    pub path: PathBuf,
    pub images: BTreeMap<String, ImageCommand>,
}

/// An image reference split the way the runtime file is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry.example/team/time-app` for `registry.example/team/time-app:v2@sha256:...`.
    pub repository: String,
    pub tag: String,
}

impl ImageRef {
    pub fn parse(image: &str) -> Self {
        let no_digest = image.split('@').next().unwrap_or(image);
        // A `:` after the last `/` is a tag; one before it is a registry port.
        let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
        match no_digest[last_slash..].rfind(':') {
            Some(i) if !no_digest[last_slash + i + 1..].is_empty() => ImageRef {
                repository: no_digest[..last_slash + i].to_string(),
                tag: no_digest[last_slash + i + 1..].to_string(),
            },
            Some(i) => ImageRef {
                repository: no_digest[..last_slash + i].to_string(),
                tag: "latest".into(),
            },
            None => ImageRef {
                repository: no_digest.to_string(),
                tag: "latest".into(),
            },
        }
    }

    /// The last path component: `time-app` for `registry.example/team/time-app`.
    pub fn short_name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }
}

impl RuntimeMap {
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, RuntimeError> {
        // An empty file (or one with only comments) is an empty map.
        let images: Option<BTreeMap<String, ImageCommand>> = serde_yaml_ng::from_str(text)
            .map_err(|source| RuntimeError::ParseFile {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RuntimeMap {
            path: path.to_path_buf(),
            images: images.unwrap_or_default(),
        })
    }

    /// The entry for `image` with placeholders filled in.
    pub fn resolve(&self, image: &str, bin_dir: &Path) -> Result<ImageCommand, RuntimeError> {
        let r = ImageRef::parse(image);
        let entry = self
            .images
            .get(&r.repository)
            .or_else(|| self.images.get(r.short_name()))
            .ok_or_else(|| RuntimeError::NoMapping {
                image: image.to_string(),
                name: r.short_name().to_string(),
                path: self.path.clone(),
            })?;
        let bin = bin_dir.display().to_string();
        let fill = |s: &String| {
            s.replace("{tag}", &r.tag)
                .replace("{image}", image)
                .replace("{bin}", &bin)
        };
        Ok(ImageCommand {
            command: entry.command.iter().map(fill).collect(),
            args: entry.args.iter().map(fill).collect(),
            env: entry
                .env
                .iter()
                .map(|(k, v)| (k.clone(), fill(v)))
                .collect(),
            working_dir: entry.working_dir.as_ref().map(fill),
        })
    }
}

/// The process argv, as a container runtime builds it from the image and the container spec:
/// the spec's `command` replaces the image's entrypoint *and* drops its default args; the spec's
/// `args` replace the default args. `$(VAR)` references expand from `env`.
pub fn argv(
    image: &ImageCommand,
    spec_command: Option<&[String]>,
    spec_args: Option<&[String]>,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let spec_command = spec_command.filter(|c| !c.is_empty());
    let spec_args = spec_args.filter(|a| !a.is_empty());
    let expand_all = |v: &[String]| v.iter().map(|s| expand(s, env)).collect::<Vec<_>>();
    let (entry, args) = match (spec_command, spec_args) {
        (Some(c), a) => (expand_all(c), a.map(expand_all).unwrap_or_default()),
        (None, Some(a)) => (image.command.clone(), expand_all(a)),
        (None, None) => (image.command.clone(), image.args.clone()),
    };
    entry.into_iter().chain(args).collect()
}

/// Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, an undefined reference stays as
/// written, and `$$` is an escaped `$`.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn image_references_split_into_repository_and_tag() {
        for (image, repo, tag, short) in [
            ("time-app", "time-app", "latest", "time-app"),
            ("time-app:v2", "time-app", "v2", "time-app"),
            (
                "registry.example/team/time-app:v2",
                "registry.example/team/time-app",
                "v2",
                "time-app",
            ),
            (
                "localhost:5000/time-app",
                "localhost:5000/time-app",
                "latest",
                "time-app",
            ),
            (
                "localhost:5000/time-app:1.2",
                "localhost:5000/time-app",
                "1.2",
                "time-app",
            ),
            ("nginx@sha256:abcd", "nginx", "latest", "nginx"),
            ("nginx:1.25@sha256:abcd", "nginx", "1.25", "nginx"),
            (
                "docker.io/library/python:3.11",
                "docker.io/library/python",
                "3.11",
                "python",
            ),
        ] {
            let r = ImageRef::parse(image);
            assert_eq!(
                (r.repository.as_str(), r.tag.as_str(), r.short_name()),
                (repo, tag, short),
                "{image}"
            );
        }
    }

    const FILE: &str = r#"
time-app:
  command: ["{bin}/time-app"]
  env: {APP_VERSION: "{tag}", IMG: "{image}"}
registry.example/team/time-app:
  command: ["/opt/special"]
python:
  command: [python3]
  args: ["-c", "print(1)"]
"#;

    fn map() -> RuntimeMap {
        RuntimeMap::parse(Path::new("/r.yaml"), FILE).expect("valid file")
    }

    #[test]
    fn resolves_by_full_path_then_by_last_component() {
        let m = map();
        let bin = Path::new("/w/target/debug");
        let a = m
            .resolve("other.example/x/time-app:v3", bin)
            .expect("mapped");
        assert_eq!(a.command, s(&["/w/target/debug/time-app"]));
        assert_eq!(a.env.get("APP_VERSION").map(String::as_str), Some("v3"));
        assert_eq!(
            a.env.get("IMG").map(String::as_str),
            Some("other.example/x/time-app:v3")
        );
        let b = m
            .resolve("registry.example/team/time-app:v2", bin)
            .expect("mapped");
        assert_eq!(b.command, s(&["/opt/special"]));
        let c = m.resolve("time-app", bin).expect("mapped");
        assert_eq!(c.env.get("APP_VERSION").map(String::as_str), Some("latest"));
    }

    #[test]
    fn unmapped_images_name_the_entry_to_add() {
        match map().resolve("registry.example/x/redis:7", Path::new("/b")) {
            Err(RuntimeError::NoMapping { name, .. }) => assert_eq!(name, "redis"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_and_empty_files() {
        assert!(matches!(
            RuntimeMap::parse(Path::new("/r"), "x: {comand: [a]}"),
            Err(RuntimeError::ParseFile { .. })
        ));
        assert!(RuntimeMap::parse(Path::new("/r"), "# nothing\n")
            .expect("empty is fine")
            .images
            .is_empty());
    }

    #[test]
    fn the_shipped_file_parses_and_maps_the_documented_images() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime.yaml");
        let m = RuntimeMap::load(&path).expect("shipped runtime.yaml is valid");
        let bin = Path::new("/bin-dir");
        let t = m.resolve("time-app:v2", bin).expect("time-app");
        assert_eq!(t.command, s(&["/bin-dir/time-app"]));
        assert_eq!(t.env.get("APP_VERSION").map(String::as_str), Some("v2"));
        assert_eq!(
            m.resolve("pause", bin).expect("pause").command,
            s(&["sleep", "infinity"])
        );
        assert_eq!(
            m.resolve("python:3.11", bin).expect("python").command,
            s(&["python3"])
        );
        assert_eq!(
            m.resolve("nginx:1.25", bin).expect("nginx").command[0],
            "nginx"
        );
    }

    #[test]
    fn argv_follows_kubelet_command_and_args_rules() {
        let img = ImageCommand {
            command: s(&["ep"]),
            args: s(&["default"]),
            ..Default::default()
        };
        let env: BTreeMap<String, String> = [("PORT".to_string(), "8080".to_string())].into();
        let cmd = s(&["sh", "-c"]);
        let args = s(&["serve $(PORT)"]);
        type Case<'a> = (Option<&'a [String]>, Option<&'a [String]>, Vec<String>);
        let cases: Vec<Case> = vec![
            (None, None, s(&["ep", "default"])),
            (None, Some(&args), s(&["ep", "serve 8080"])),
            (Some(&cmd), None, s(&["sh", "-c"])),
            (Some(&cmd), Some(&args), s(&["sh", "-c", "serve 8080"])),
        ];
        for (c, a, want) in cases {
            assert_eq!(argv(&img, c, a, &env), want, "command {c:?} args {a:?}");
        }
    }

    #[test]
    fn dollar_paren_expansion() {
        let env: BTreeMap<String, String> = [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "".to_string()),
        ]
        .into();
        for (input, want) in [
            ("$(A)", "1"),
            ("x$(A)y$(A)", "x1y1"),
            ("$(B)", ""),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("cost $5", "cost $5"),
            ("$(A", "$(A"),
            ("trailing $", "trailing $"),
        ] {
            assert_eq!(expand(input, &env), want, "{input}");
        }
    }
}
