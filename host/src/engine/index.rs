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
    globs: GlobSet,
    glob_rules: Vec<u32>,
}

impl DispatchIndex {
    /// Build an index from `(rule number, patterns)`. Patterns must be
    /// valid (see [`valid_pattern`]); the error names the bad one.
    pub fn build<'a>(
        rules: impl IntoIterator<Item = (u32, &'a [String])>,
    ) -> Result<DispatchIndex, String> {
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut globs = GlobSetBuilder::new();
        let mut glob_rules = Vec::new();
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
                    globs.add(glob);
                    glob_rules.push(rule);
                } else {
                    exact.entry(p.as_str().into()).or_default().push(rule);
                }
            }
        }
        let globs = globs.build().map_err(|e| e.to_string())?;
        Ok(DispatchIndex {
            exact,
            globs,
            glob_rules,
        })
    }

    /// The rules `name` reaches, sorted and without repeats, into `out`
    /// (cleared first). `scratch` is reused across lookups.
    pub fn lookup(&self, name: &str, scratch: &mut Vec<usize>, out: &mut Vec<u32>) {
        out.clear();
        if let Some(rules) = self.exact.get(name) {
            out.extend_from_slice(rules);
        }
        if !self.glob_rules.is_empty() {
            self.globs.matches_into(name, scratch);
            out.extend(scratch.iter().map(|&g| self.glob_rules[g]));
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
    fn empty_index_matches_nothing() {
        let ix = idx(&[]);
        assert!(find(&ix, "X").is_empty());
    }
}
