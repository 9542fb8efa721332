//! Config errors for humans: file, line, key path, what would be valid, and what was found.
//!
//! Position: shared by the reader and the validator (file → validated `Config`; no I/O).
//! Keys: none of its own; it maps key paths (`routes[1].match.methods[0]`) to source lines.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;

/// One problem in a config file.
///
/// Displays as `{file}:{line}: {path}: {message}`, for example
/// `weir.toml:42: routes[2].timeout: expected a duration such as "250ms" (got "fast")`.
/// The line is omitted when it is 0 (the file could not be read) and the path when it is empty
/// (a TOML syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as it was given (command line or caller).
    pub file: String,
    /// 1-based line of the offending key or value; 0 when no line applies.
    pub line: usize,
    /// Key path with 0-based array indexes, such as `upstreams.backend.retry.budget_ratio`.
    pub path: String,
    /// What is wrong, what would be valid, and `(got …)` with the offending value.
    pub message: String,
}

/// Every problem found in one config file, in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if self.line > 0 {
            write!(f, "{}:", self.line)?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// === impl ConfigErrors ===

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === impl Collector ===

/// Where a key sits in the file (byte offset) and its value's source text (for `(got …)`).
#[derive(Debug, Clone)]
struct Loc {
    offset: usize,
    text: String,
}

/// Collects the errors of one file, and remembers where each key path was seen so that later
/// (semantic) checks can point at the key they are about.
#[derive(Debug)]
pub(crate) struct Collector {
    file: String,
    line_starts: Vec<usize>,
    /// Each error with the byte offset it sorts by.
    errors: Vec<(usize, ConfigError)>,
    locs: HashMap<String, Loc>,
    error_paths: HashSet<String>,
}

impl Collector {
    pub(crate) fn new(file: &str, src: &str) -> Collector {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Collector {
            file: file.to_owned(),
            line_starts,
            errors: Vec::new(),
            locs: HashMap::new(),
            error_paths: HashSet::new(),
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|&start| start <= offset)
            .max(1)
    }

    /// Records an error at a byte span.
    pub(crate) fn at_span(&mut self, span: &Range<usize>, path: &str, message: String) {
        self.push(span.start, path, message);
    }

    /// Records an error about a key path seen while reading; the line is that key's line, or the
    /// line of its nearest enclosing key that was written in the file.
    pub(crate) fn at_path(&mut self, path: &str, message: String) {
        let offset = self.offset_at(path);
        self.push(offset, path, message);
    }

    fn push(&mut self, offset: usize, path: &str, message: String) {
        self.error_paths.insert(path.to_owned());
        let line = self.line_of(offset);
        let error = ConfigError {
            file: self.file.clone(),
            line,
            path: path.to_owned(),
            message,
        };
        self.errors.push((offset, error));
    }

    /// Remembers where a key path was seen.
    pub(crate) fn remember(&mut self, path: &str, span: &Range<usize>, text: String) {
        self.locs.insert(
            path.to_owned(),
            Loc {
                offset: span.start,
                text,
            },
        );
    }

    /// Whether a key path was written in the file.
    pub(crate) fn seen(&self, path: &str) -> bool {
        self.locs.contains_key(path)
    }

    /// Whether an error was recorded at this key path (its value in the `Config` is then a
    /// stand-in default, which later checks must not judge).
    pub(crate) fn has_error(&self, path: &str) -> bool {
        self.error_paths.contains(path)
    }

    /// The source text of a key path's value, if it was written in the file.
    pub(crate) fn text(&self, path: &str) -> Option<&str> {
        self.locs.get(path).map(|l| l.text.as_str())
    }

    fn offset_at(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(loc) = self.locs.get(p) {
                return loc.offset;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return 0,
            }
        }
    }

    /// `Ok(value)` when nothing was recorded, else every error in file order.
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        let mut errors = self.errors;
        errors.sort_by_key(|(offset, _)| *offset);
        Err(ConfigErrors(errors.into_iter().map(|(_, e)| e).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: usize, path: &str) -> ConfigError {
        ConfigError {
            file: "weir.toml".into(),
            line,
            path: path.into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn display_names_file_line_and_path() {
        assert_eq!(
            error(42, "routes[2].timeout").to_string(),
            "weir.toml:42: routes[2].timeout: bad"
        );
        assert_eq!(error(3, "").to_string(), "weir.toml:3: bad");
        assert_eq!(error(0, "").to_string(), "weir.toml: bad");
        let all = ConfigErrors(vec![error(1, "a"), error(2, "b")]);
        assert_eq!(all.to_string(), "weir.toml:1: a: bad\nweir.toml:2: b: bad");
    }

    #[test]
    fn lines_are_one_based() {
        let c = Collector::new("f", "a\nbc\n\nd");
        assert_eq!(c.line_of(0), 1);
        assert_eq!(c.line_of(1), 1);
        assert_eq!(c.line_of(2), 2);
        assert_eq!(c.line_of(5), 3);
        assert_eq!(c.line_of(6), 4);
    }

    #[test]
    fn path_falls_back_to_the_nearest_written_key() {
        let src = "x\n[upstreams.a]\n";
        let mut c = Collector::new("f", src);
        c.remember("upstreams.a", &(2..16), String::new());
        c.at_path("upstreams.a.retry.budget_ratio", "m".into());
        c.at_path("routes[3].name", "m".into());
        let errs = c.into_result(()).unwrap_err().0;
        assert_eq!(errs[0].line, 1);
        assert_eq!(errs[1].line, 2);
        assert_eq!(errs[1].path, "upstreams.a.retry.budget_ratio");
    }
}
