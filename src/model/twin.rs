//! Settings and records of the strategies that work with a second StatefulSet or with the
//! whole set at once: blue/green (a green twin, Service selectors switched in one patch), shadow
//! (a twin no live Service selects, fed replayed requests) and recreate (scale to 0 and back).
//!
//! Names: the twin of a blue/green rollout of `web` is `web-bg<N>`, the smallest `N` whose
//! set and PVC names are all free, so no rollout ever reuses (and so overwrites) the volumes of
//! an earlier one; the shadow of `web` is `web-shadow`. The set a user names in every command
//! is the *home* set; `rollout` follows its record to the set that serves now.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;

/// Label put on the pods of every set `rollout` creates: the set's own name, so a Service can
/// select exactly that set's pods across later template changes.
pub const SET_LABEL: &str = "rollout.dev/set";
/// Annotation on a set `rollout` created: the home set whose name the user types.
pub const HOME_ANNOTATION: &str = "rollout.dev/home";
/// Annotation on a green set: the set it replaced (for `undo`).
pub const REPLACES_ANNOTATION: &str = "rollout.dev/replaces";
/// Label on a shadow set and its pods: the set it shadows.
pub const SHADOW_OF_LABEL: &str = "rollout.dev/shadow-of";
/// Label on PVCs `rollout` created (clones, or claims of a twin): the rollout's id.
pub const CREATED_BY_LABEL: &str = "rollout.dev/created-by";
/// The label every StatefulSet pod carries with its revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Where a green set's volumes start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// New, empty volumes.
    #[default]
    Fresh,
    /// Each ordinal's claims are cloned from the blue pod of the same ordinal before green starts.
    Clone,
}

impl FromStr for DataMode {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.trim() {
            "fresh" => Ok(DataMode::Fresh),
            "clone" => Ok(DataMode::Clone),
            other => Err(format!(
                "`{other}` is not a data mode; use `fresh` (empty volumes) or `clone` (copies of each blue ordinal's volumes)"
            )),
        }
    }
}

impl fmt::Display for DataMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataMode::Fresh => "fresh",
            DataMode::Clone => "clone",
        })
    }
}

/// Blue/green settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenParams {
    /// The live Services; empty: every non-headless Service that selects the set's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Switch as soon as green passes its gates, instead of waiting for `rollout promote`.
    #[serde(default)]
    pub auto_promote: bool,
    /// How long blue stays scaled after the switch (so `abort`/`undo` are instant).
    pub scale_down_delay: HumanDuration,
    #[serde(default)]
    pub data: DataMode,
    /// Keep green's volumes when green is removed after a failure or an abort before the switch.
    #[serde(default)]
    pub keep_data: bool,
}

/// The default of `--scale-down-delay` (as Argo Rollouts, for proxies to catch up).
pub const DEFAULT_SCALE_DOWN_DELAY: HumanDuration = HumanDuration::from_secs(30);

/// How the shadow is compared with stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ShadowCompare {
    /// Highest error rate of the shadow above stable's, in percentage points.
    pub max_error_rate_increase: f64,
    /// Highest ratio of the shadow's p95 latency to stable's.
    pub max_p95_ratio: f64,
    /// Fewest replayed requests per side before the comparison can pass.
    pub min_samples: u32,
    /// Compare response bodies too.
    pub compare_bodies: bool,
    /// Lines of a body that match this pattern are left out of the body comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_lines: Option<String>,
    /// Replayed requests per second (to each side).
    pub rate: u32,
    /// Most replayed requests (to each side).
    pub max_requests: u32,
}

impl Default for ShadowCompare {
    fn default() -> Self {
        ShadowCompare {
            max_error_rate_increase: 1.0,
            max_p95_ratio: 2.0,
            min_samples: 20,
            compare_bodies: false,
            ignore_lines: None,
            rate: 10,
            max_requests: 600,
        }
    }
}

impl Eq for ShadowCompare {}

/// One replayed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayLine {
    pub method: String,
    pub path: String,
}

/// Shadow settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowParams {
    /// Pods of the shadow set.
    pub replicas: u32,
    /// How long requests are replayed and compared.
    pub duration: HumanDuration,
    /// The requests replayed in turn (default: `GET /`).
    pub requests: Vec<ReplayLine>,
    pub compare: ShadowCompare,
    /// Keep the shadow's volumes when it is removed.
    #[serde(default)]
    pub keep_data: bool,
}

/// The default of `--duration` for a shadow.
pub const DEFAULT_SHADOW_DURATION: HumanDuration = HumanDuration::from_secs(60);

/// A Service whose selector a blue/green rollout changes, with the selectors it moves between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveService {
    pub name: String,
    /// The selector before the rollout.
    pub original: BTreeMap<String, String>,
    /// The selector that keeps serving blue and never selects green.
    pub blue: BTreeMap<String, String>,
    /// The selector that serves green.
    pub green: BTreeMap<String, String>,
}

impl LiveService {
    /// The selector that serves blue as it runs now: [`Self::blue`], re-pinned to `revision`
    /// where it pins blue by revision. Blue's template may have moved on since the pin (a
    /// `helm upgrade` of the home set after the switch), and the old pin would then select none
    /// of the pods that come back.
    pub fn blue_at(&self, revision: Option<&str>) -> BTreeMap<String, String> {
        let mut selector = self.blue.clone();
        if let (Some(pinned), Some(now)) = (selector.get_mut(REVISION_LABEL), revision) {
            *pinned = now.to_string();
        }
        selector
    }
}

/// The role of a twin set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TwinRole {
    Green,
    Shadow,
}

/// What a rollout with a twin set needs to know to finish or undo itself, kept in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    pub role: TwinRole,
    /// The twin set's name.
    pub set: String,
    /// The home set (the name users type).
    pub home: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<LiveService>,
    /// The preview Service that selects only green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    pub data: DataMode,
    pub keep_data: bool,
    /// The full pod template of the twin (the new version), so any later run can create it.
    pub template: serde_json::Value,
}

/// The smallest free twin name `<home>-bg<N>`: no StatefulSet and no PVC of it exists yet.
pub fn free_twin_name(home: &str, taken_sets: &[String], taken_claims: &[String]) -> String {
    free_name(
        (1u32..).map(|n| format!("{home}-bg{n}")),
        taken_sets,
        taken_claims,
    )
    .unwrap_or_else(|| format!("{home}-bg"))
}

/// The shadow's name: `<home>-shadow`, or `<home>-shadow2`, ... when an earlier shadow's set or
/// kept PVCs hold that name (a new shadow never starts on, or deletes, volumes kept before).
pub fn shadow_name(home: &str, taken_sets: &[String], taken_claims: &[String]) -> String {
    let candidates = std::iter::once(format!("{home}-shadow"))
        .chain((2u32..).map(|n| format!("{home}-shadow{n}")));
    free_name(candidates, taken_sets, taken_claims).unwrap_or_else(|| format!("{home}-shadow"))
}

/// The first candidate set name with no StatefulSet and no PVC (`<claim>-<name>-<ordinal>`).
fn free_name(
    mut candidates: impl Iterator<Item = String>,
    taken_sets: &[String],
    taken_claims: &[String],
) -> Option<String> {
    candidates.find(|name| {
        let claim_suffix = format!("-{name}-");
        !taken_sets.iter().any(|s| s == name)
            && !taken_claims.iter().any(|c| {
                c.find(&claim_suffix).is_some_and(|at| {
                    c[at + claim_suffix.len()..]
                        .chars()
                        .all(|ch| ch.is_ascii_digit())
                })
            })
    })
}

/// The preview Service's name.
pub fn preview_name(home: &str) -> String {
    format!("{home}-preview")
}

/// The selector that serves `set`'s pods only: `original` with the set label. When the set's
/// pods do not carry the set label (the user's own set), its current revision pins it instead.
pub fn selector_for_set(
    original: &BTreeMap<String, String>,
    set: &str,
    labelled: bool,
    revision: Option<&str>,
) -> BTreeMap<String, String> {
    let mut selector = original.clone();
    selector.remove(SET_LABEL);
    selector.remove(REVISION_LABEL);
    if labelled {
        selector.insert(SET_LABEL.to_string(), set.to_string());
    } else if let Some(revision) = revision {
        selector.insert(REVISION_LABEL.to_string(), revision.to_string());
    }
    selector
}

/// `a=1,b=2` for messages.
pub fn render_selector(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn twin_names_skip_anything_taken() {
        let none: Vec<String> = vec![];
        let cases: Vec<(Vec<String>, Vec<String>, &str)> = vec![
            (none.clone(), none.clone(), "web-bg1"),
            (vec!["web-bg1".into()], none.clone(), "web-bg2"),
            // A claim left behind by a deleted set keeps its name taken.
            (none.clone(), vec!["data-web-bg1-0".into()], "web-bg2"),
            // Claims of other sets do not.
            (
                none.clone(),
                vec!["data-web-bg10-0".into(), "data-web-bg1x-0".into()],
                "web-bg1",
            ),
            (
                vec!["web-bg1".into(), "web-bg2".into()],
                vec!["data-web-bg3-2".into()],
                "web-bg4",
            ),
        ];
        for (sets, claims, expected) in cases {
            assert_eq!(
                free_twin_name("web", &sets, &claims),
                expected,
                "{sets:?} {claims:?}"
            );
        }
    }

    #[test]
    fn a_shadow_name_kept_volumes_hold_is_not_reused() {
        let none: Vec<String> = vec![];
        assert_eq!(shadow_name("web", &none, &none), "web-shadow");
        assert_eq!(
            shadow_name("web", &none, &["data-web-shadow-0".to_string()]),
            "web-shadow2"
        );
        assert_eq!(
            shadow_name(
                "web",
                &["web-shadow".to_string()],
                &["data-web-shadow2-0".to_string()]
            ),
            "web-shadow3"
        );
    }

    #[test]
    fn selectors_pin_by_set_label_or_revision() {
        let original = map(&[("app", "web")]);
        assert_eq!(
            selector_for_set(&original, "web", false, Some("web-6c8f")),
            map(&[("app", "web"), (REVISION_LABEL, "web-6c8f")])
        );
        assert_eq!(
            selector_for_set(&original, "web-bg1", true, Some("web-bg1-77")),
            map(&[("app", "web"), (SET_LABEL, "web-bg1")])
        );
        // A selector left by an earlier blue/green is replaced, not added to.
        let earlier = map(&[("app", "web"), (SET_LABEL, "web-bg1")]);
        assert_eq!(
            selector_for_set(&earlier, "web-bg2", true, None),
            map(&[("app", "web"), (SET_LABEL, "web-bg2")])
        );
        assert_eq!(render_selector(&map(&[("a", "1"), ("b", "2")])), "a=1,b=2");
    }

    #[test]
    fn data_modes_parse() {
        assert_eq!("clone".parse::<DataMode>(), Ok(DataMode::Clone));
        assert_eq!("fresh".parse::<DataMode>(), Ok(DataMode::Fresh));
        assert!("copy"
            .parse::<DataMode>()
            .is_err_and(|e| e.contains("fresh")));
    }

    #[test]
    fn blue_is_re_pinned_to_the_revision_it_runs_now() {
        let service = |blue: &[(&str, &str)]| LiveService {
            name: "web".into(),
            original: map(&[("app", "web")]),
            blue: map(blue),
            green: map(&[("app", "web"), (SET_LABEL, "web-bg1")]),
        };
        let pinned = service(&[("app", "web"), (REVISION_LABEL, "web-6c8f")]);
        assert_eq!(
            pinned.blue_at(Some("web-7d9b")),
            map(&[("app", "web"), (REVISION_LABEL, "web-7d9b")])
        );
        assert_eq!(pinned.blue_at(None), pinned.blue);
        // A former green is pinned by its set label, which no template change moves.
        let labelled = service(&[("app", "web"), (SET_LABEL, "web-bg1")]);
        assert_eq!(labelled.blue_at(Some("web-bg1-55d")), labelled.blue);
    }
}
