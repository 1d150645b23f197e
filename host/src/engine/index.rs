//! The dispatch index: which rules a signal name reaches.
//!
//! Exact names live in a hash map; glob patterns (`*` matches any run of
//! characters) are compiled together into one [`GlobSet`]. A lookup is one
//! hash probe plus one set match, whatever the number of rules, and a name
//! that matches nothing never touches a rule. The index is rebuilt whole on
//! every reload and swapped in with the rule list.

use std::collections::HashMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::names::valid_pattern;

/// Rule numbers by pattern.
#[derive(Debug, Default)]
pub struct DispatchIndex {
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Glob sets, each with the rule of each of its globs: one set for
    /// all rules, or one per rule when the combined set is too large.
    sets: Vec<(GlobSet, Vec<u32>)>,
}

/// The exact names, and the globs with their rules, of `rules`.
type Split = (HashMap<Box<str>, Vec<u32>>, Vec<(globset::Glob, u32)>);

fn split<'a>(rules: impl IntoIterator<Item = (u32, &'a [String])>) -> Result<Split, String> {
    let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
    let mut globs = Vec::new();
    for (rule, patterns) in rules {
        for p in patterns {
            if !valid_pattern(p) {
                return Err(format!(
                    "invalid signal pattern `{p}`: use A-Z, 0-9, `_`, `-` and `*`"
                ));
            }
            if p.contains('*') {
                let glob = GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| format!("invalid signal pattern `{p}`: {e}"))?;
                globs.push((glob, rule));
            } else {
                exact.entry(p.as_str().into()).or_default().push(rule);
            }
        }
    }
    Ok((exact, globs))
}

fn set_of(globs: &[(globset::Glob, u32)]) -> Result<(GlobSet, Vec<u32>), String> {
    let mut set = GlobSetBuilder::new();
    for (g, _) in globs {
        set.add(g.clone());
    }
    let set = set
        .build()
        .map_err(|e| format!("the signal patterns cannot be matched: {e}"))?;
    Ok((set, globs.iter().map(|(_, r)| *r).collect()))
}

impl DispatchIndex {
    /// Build an index from `(rule number, patterns)`. Patterns must be
    /// valid (see [`valid_pattern`]); the error names the bad one, or says
    /// that the globs together cannot be matched.
    pub fn build<'a>(
        rules: impl IntoIterator<Item = (u32, &'a [String])>,
    ) -> Result<DispatchIndex, String> {
        let (exact, globs) = split(rules)?;
        let sets = if globs.is_empty() {
            Vec::new()
        } else {
            vec![set_of(&globs)?]
        };
        Ok(DispatchIndex { exact, sets })
    }

    /// [`DispatchIndex::build`] for rules each of whose patterns build
    /// alone: when the combined glob set cannot be built (too large), one
    /// set per rule is used instead, and a rule whose set still fails is
    /// left out and logged. One rule can never turn dispatch off for the
    /// others.
    pub fn build_resilient<'a>(
        rules: impl IntoIterator<Item = (u32, &'a [String])> + Clone,
    ) -> DispatchIndex {
        if let Ok(index) = Self::build(rules.clone()) {
            return index;
        }
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut sets = Vec::new();
        for (rule, patterns) in rules {
            match split([(rule, patterns)]).and_then(|(e, g)| {
                let set = if g.is_empty() {
                    None
                } else {
                    Some(set_of(&g)?)
                };
                Ok((e, set))
            }) {
                Ok((e, set)) => {
                    for (name, mut r) in e {
                        exact.entry(name).or_default().append(&mut r);
                    }
                    sets.extend(set);
                }
                Err(e) => tracing::error!(rule, "rule left out of dispatch: {e}"),
            }
        }
        tracing::warn!(
            sets = sets.len(),
            "the combined signal patterns are too large to match at once: one matcher per rule"
        );
        DispatchIndex { exact, sets }
    }

    /// The rules `name` reaches, sorted and without repeats, into `out`
    /// (cleared first). `scratch` is reused across lookups.
    pub fn lookup(&self, name: &str, scratch: &mut Vec<usize>, out: &mut Vec<u32>) {
        out.clear();
        if let Some(rules) = self.exact.get(name) {
            out.extend_from_slice(rules);
        }
        for (set, rules) in &self.sets {
            set.matches_into(name, scratch);
            out.extend(scratch.iter().map(|&g| rules[g]));
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(rules: &[&[&str]]) -> DispatchIndex {
        let owned: Vec<Vec<String>> = rules
            .iter()
            .map(|ps| ps.iter().map(|p| p.to_string()).collect())
            .collect();
        DispatchIndex::build(
            owned
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u32, p.as_slice())),
        )
        .unwrap()
    }

    fn find(ix: &DispatchIndex, name: &str) -> Vec<u32> {
        let mut out = Vec::new();
        ix.lookup(name, &mut Vec::new(), &mut out);
        out
    }

    #[test]
    fn exact_and_globs_merge_sorted_and_deduplicated() {
        let ix = idx(&[
            &["DOOR-1-OPEN"],
            &["DOOR-*-OPEN", "DOOR-1-*"],
            &["*"],
            &["PANIC-*"],
        ]);
        assert_eq!(find(&ix, "DOOR-1-OPEN"), vec![0, 1, 2]);
        assert_eq!(find(&ix, "DOOR-22-OPEN"), vec![1, 2]);
        assert_eq!(find(&ix, "PANIC-1"), vec![2, 3]);
        assert_eq!(find(&ix, "PANIC"), vec![2], "PANIC-* needs the dash");
    }

    #[test]
    fn star_matches_any_run_including_empty() {
        let ix = idx(&[&["A*B"]]);
        assert_eq!(find(&ix, "AB"), vec![0]);
        assert_eq!(find(&ix, "A-X-B"), vec![0]);
        assert!(find(&ix, "A-X-BC").is_empty());
    }

    #[test]
    fn patterns_are_validated() {
        for bad in ["", "door", "A?B", "A[B]", "-A", "A B", "A/B"] {
            let owned = vec![bad.to_string()];
            let err = DispatchIndex::build([(0, owned.as_slice())]).unwrap_err();
            assert!(err.contains("invalid signal pattern"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_per_rule_fallback_matches_like_the_combined_index() {
        let owned: Vec<Vec<String>> = [
            &["DOOR-1-OPEN"][..],
            &["DOOR-*-OPEN", "DOOR-1-*"],
            &["*"],
            &["PANIC-*"],
        ]
        .iter()
        .map(|ps| ps.iter().map(|p| p.to_string()).collect())
        .collect();
        let rules = || {
            owned
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u32, p.as_slice()))
        };
        let (exact, globs) = split(rules()).unwrap();
        let fallback = DispatchIndex {
            exact,
            sets: globs
                .iter()
                .map(|g| set_of(std::slice::from_ref(g)).unwrap())
                .collect(),
        };
        let combined = DispatchIndex::build_resilient(rules());
        for name in ["DOOR-1-OPEN", "DOOR-22-OPEN", "PANIC-1", "PANIC", "X"] {
            assert_eq!(find(&fallback, name), find(&combined, name), "{name}");
        }
    }

    #[test]
    fn empty_index_matches_nothing() {
        let ix = idx(&[]);
        assert!(find(&ix, "X").is_empty());
    }
}
