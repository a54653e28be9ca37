//! The violations that the set, queue and fencing checkers report.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How many violations of one check are kept. A systematic bug (a queue that is a stack)
/// breaks a pairwise rule for nearly every pair; a hundred examples say as much as a
/// million and stay printable.
const VIOLATIONS_MAX: usize = 100;

/// One broken guarantee: which check found it and a message naming the records involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub check: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

/// Collects violations, keeping at most [`VIOLATIONS_MAX`] of each check and counting the rest.
#[derive(Debug, Default)]
pub(crate) struct Report {
    violations: Vec<Violation>,
    dropped: Vec<(&'static str, usize)>,
}

impl Report {
    pub(crate) fn push(&mut self, check: &'static str, message: String) {
        if self.violations.iter().filter(|v| v.check == check).count() < VIOLATIONS_MAX {
            self.violations.push(Violation { check: check.to_owned(), message });
        } else if let Some((_, n)) = self.dropped.iter_mut().find(|(c, _)| *c == check) {
            *n += 1;
        } else {
            self.dropped.push((check, 1));
        }
    }

    /// `Ok(summary)` when nothing was broken, otherwise every violation kept.
    pub(crate) fn finish<S>(mut self, summary: S) -> Result<S, Vec<Violation>> {
        for (check, n) in self.dropped {
            self.violations
                .push(Violation { check: check.to_owned(), message: format!("{n} more not shown") });
        }
        if self.violations.is_empty() { Ok(summary) } else { Err(self.violations) }
    }
}
