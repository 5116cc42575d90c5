//! What a scoped token may touch: key-prefix rules, where the most specific
//! (longest) matching prefix decides, and plugin-name patterns.
//!
//! Rules are kept longest first, so the first rule whose prefix starts a
//! key is the one that decides it; a key no rule starts is out of reach.

use serde::{Deserialize, Serialize};

/// What a prefix rule grants. Ordered: `write` implies `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing: carves a prefix out of a wider rule.
    None,
    /// Read keys, listings and change events.
    Read,
    /// Also write.
    Write,
}

impl Level {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Read => "read",
            Level::Write => "write",
        }
    }
}

/// One rule of a token: every key starting with `prefix` gets `access`,
/// unless a longer rule also matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRule {
    /// The key prefix; `""` is every key.
    pub prefix: String,
    /// What the rule grants.
    pub access: Level,
}

/// How much of a prefix's keys a scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every key under the prefix.
    All,
    /// Some keys under it, not all.
    Part,
    /// No key under it.
    Nothing,
}

/// A token's prefix rules, longest prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    rules: Vec<PrefixRule>,
}

impl Scope {
    /// The scope of `rules` (at most one rule per prefix: see
    /// [`duplicate_prefix`]).
    pub fn new(rules: &[PrefixRule]) -> Self {
        let mut rules = rules.to_vec();
        rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { rules }
    }

    /// What the most specific rule grants on `key` (or any text).
    pub fn level(&self, key: &str) -> Level {
        self.rules
            .iter()
            .find(|r| key.starts_with(&r.prefix))
            .map_or(Level::None, |r| r.access)
    }

    /// How much of the keys starting with `prefix` get at least `need`.
    pub fn coverage(&self, prefix: &str, need: Level) -> Coverage {
        let at_prefix = self.level(prefix) >= need;
        let mut inside = self
            .rules
            .iter()
            .filter(|r| r.prefix.len() > prefix.len() && r.prefix.starts_with(prefix));
        match (at_prefix, inside.clone().all(|r| r.access >= need)) {
            (true, true) => Coverage::All,
            (true, false) => Coverage::Part,
            (false, _) if inside.any(|r| r.access >= need) => Coverage::Part,
            (false, _) => Coverage::Nothing,
        }
    }

    /// Prefixes that hold every key under `prefix` with at least `need`,
    /// in key order and not nested in one another: `prefix` itself when its
    /// own rule grants `need` (carve-outs below it still to be filtered),
    /// else the longer rules under it that grant `need`. A listing scans
    /// only these, not every key under `prefix`.
    pub fn granted_under(&self, prefix: &str, need: Level) -> Vec<String> {
        if self.level(prefix) >= need {
            return vec![prefix.to_owned()];
        }
        let mut under: Vec<&str> = self
            .rules
            .iter()
            .filter(|r| r.prefix.len() > prefix.len() && r.prefix.starts_with(prefix))
            .filter(|r| r.access >= need)
            .map(|r| r.prefix.as_str())
            .collect();
        under.sort_unstable();
        let mut out: Vec<String> = Vec::with_capacity(under.len());
        for p in under {
            if !out.last().is_some_and(|kept| p.starts_with(kept.as_str())) {
                out.push(p.to_owned());
            }
        }
        out
    }

    /// Whether the rules are empty.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The first prefix named by two rules, which would leave it unclear
/// which one decides.
pub fn duplicate_prefix(rules: &[PrefixRule]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    rules
        .iter()
        .find(|r| !seen.insert(r.prefix.as_str()))
        .map(|r| r.prefix.as_str())
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (plugin names are short, and the match is iterative).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in `name` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(prefix: &str, access: Level) -> PrefixRule {
        PrefixRule {
            prefix: prefix.into(),
            access,
        }
    }

    #[test]
    fn the_longest_prefix_decides() {
        let scope = Scope::new(&[
            rule("team-a/", Level::Write),
            rule("team-a/secrets/", Level::None),
            rule("shared/", Level::Read),
        ]);
        assert_eq!(scope.level("team-a/x"), Level::Write);
        assert_eq!(scope.level("team-a/secrets/k"), Level::None);
        assert_eq!(scope.level("shared/k"), Level::Read);
        assert_eq!(scope.level("team-b/k"), Level::None);
        assert_eq!(scope.level(""), Level::None);
    }

    #[test]
    fn coverage_of_a_prefix() {
        let scope = Scope::new(&[
            rule("team-a/", Level::Write),
            rule("team-a/secrets/", Level::None),
            rule("shared/", Level::Read),
        ]);
        assert_eq!(scope.coverage("team-a/x", Level::Write), Coverage::All);
        assert_eq!(scope.coverage("team-a/", Level::Read), Coverage::Part);
        assert_eq!(
            scope.coverage("team-a/secrets/", Level::Read),
            Coverage::Nothing
        );
        assert_eq!(scope.coverage("", Level::Read), Coverage::Part);
        assert_eq!(scope.coverage("team", Level::Read), Coverage::Part);
        assert_eq!(scope.coverage("shared/", Level::Read), Coverage::All);
        assert_eq!(scope.coverage("shared/", Level::Write), Coverage::Nothing);
        assert_eq!(scope.coverage("other", Level::Read), Coverage::Nothing);
        let everything = Scope::new(&[rule("", Level::Write)]);
        assert_eq!(everything.coverage("", Level::Write), Coverage::All);
    }

    #[test]
    fn the_prefixes_a_listing_scans() {
        let scope = Scope::new(&[
            rule("team-a/", Level::Write),
            rule("team-a/x/", Level::Read),
            rule("team-a/secrets/", Level::None),
            rule("shared/", Level::Read),
            rule("b/", Level::None),
        ]);
        assert_eq!(scope.granted_under("", Level::Read), ["shared/", "team-a/"]);
        assert_eq!(scope.granted_under("team-a/", Level::Read), ["team-a/"]);
        assert_eq!(scope.granted_under("t", Level::Read), ["team-a/"]);
        assert_eq!(scope.granted_under("", Level::Write), ["team-a/"]);
        assert!(scope.granted_under("b/", Level::Read).is_empty());
    }

    #[test]
    fn plugin_name_patterns() {
        assert!(name_matches("team-a-*", "team-a-schema"));
        assert!(name_matches("team-a-*", "team-a-"));
        assert!(!name_matches("team-a-*", "team-b-schema"));
        assert!(name_matches("*", "anything"));
        assert!(name_matches("a*b*c", "aXXbYYc"));
        assert!(!name_matches("a*b*c", "aXXbYY"));
        assert!(name_matches("exact", "exact"));
        assert!(!name_matches("exact", "exactly"));
        assert_eq!(
            duplicate_prefix(&[rule("a", Level::Read), rule("a", Level::Write)]),
            Some("a")
        );
    }

    proptest! {
        /// Coverage agrees with the level of the keys it speaks for: `All`
        /// means every probed key under the prefix has the level,
        /// `Nothing` that none has.
        #[test]
        fn coverage_agrees_with_levels(
            rules in proptest::collection::btree_map("[ab]{0,3}", 0u8..3, 0..6),
            prefix in "[ab]{0,2}",
            suffixes in proptest::collection::vec("[ab]{0,3}", 1..12),
            need_write in any::<bool>(),
        ) {
            let levels = [Level::None, Level::Read, Level::Write];
            let rules: Vec<_> = rules.into_iter().map(|(p, l)| rule(&p, levels[l as usize])).collect();
            let scope = Scope::new(&rules);
            let need = if need_write { Level::Write } else { Level::Read };
            let granted = |s: &String| scope.level(&format!("{prefix}{s}")) >= need;
            match scope.coverage(&prefix, need) {
                Coverage::All => prop_assert!(suffixes.iter().all(granted)),
                Coverage::Nothing => prop_assert!(!suffixes.iter().any(granted)),
                Coverage::Part => {}
            }
        }

        /// Every key under the prefix that the scope lets through lies
        /// under one of the prefixes a listing scans.
        #[test]
        fn a_listing_scans_every_granted_key(
            rules in proptest::collection::btree_map("[ab/]{0,3}", 0u8..3, 0..6),
            prefix in "[ab]{0,2}",
            suffixes in proptest::collection::vec("[ab/]{0,4}", 1..16),
        ) {
            let levels = [Level::None, Level::Read, Level::Write];
            let rules: Vec<_> = rules.into_iter().map(|(p, l)| rule(&p, levels[l as usize])).collect();
            let scope = Scope::new(&rules);
            let scanned = scope.granted_under(&prefix, Level::Read);
            for s in &suffixes {
                let key = format!("{prefix}{s}");
                if scope.level(&key) >= Level::Read {
                    prop_assert!(scanned.iter().any(|p| key.starts_with(p.as_str())), "{key} not scanned");
                }
            }
        }

        #[test]
        fn a_star_pattern_matches_what_it_should(a in "[a-c]{0,4}", b in "[a-c]{0,4}", mid in "[a-c]{0,4}") {
            let pattern = format!("{a}*{b}");
            let name = format!("{a}{mid}{b}");
            prop_assert!(name_matches(&pattern, &name));
            prop_assert_eq!(name_matches(&a, &name), name == a);
        }
    }
}
