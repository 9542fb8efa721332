//! Reading: walks spanned TOML through the key tables into a `Config`, defaults filled in, and
//! records every type, range, missing-key and unknown-key error with the key's line.
//!
//! Position: file → validated `Config` (first half, then `validate`); no I/O beyond the text.
//! Keys: those of [`crate::config::keys`]; the arrays of tables (`listeners`, `routes`,
//! `split`) and the `upstreams` map are walked here by hand. Converters are in [`values`].

use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use crate::config::error::{Collector, ConfigError, ConfigErrors};
use crate::config::keys::Keys;
use crate::config::render::quote;
use crate::config::{Config, ListenerConfig, RouteConfig, SplitTarget, UpstreamConfig};

mod values;

#[cfg(test)]
mod tests;

/// Reads config text into a `Config` (defaults filled in) and the errors found so far.
///
/// A TOML syntax error ends reading at once with that one error.
pub(crate) fn read(src: &str, file: &str) -> Result<(Config, Collector), ConfigErrors> {
    let collector = Collector::new(file, src);
    let doc = match DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map_or(1, |s| collector.line_of(s.start));
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                line,
                path: String::new(),
                message: format!("invalid TOML: {}", e.message().trim_end()),
            }]));
        }
    };
    let mut reader = Reader { c: collector, src };
    let config = reader.rows(doc.get_ref(), &(0..0), "", Config::default());
    Ok((config.unwrap_or_default(), reader.c))
}

/// A value in the document, with its span.
pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

/// Walks one document; `c` collects errors and remembers where each key was seen.
pub(crate) struct Reader<'s> {
    pub(crate) c: Collector,
    src: &'s str,
}

/// The entries of one table, in file order, and the keys the reader asked for.
struct Fields<'t, 'i> {
    path: String,
    entries: Vec<(&'t Spanned<DeString<'i>>, &'t Val<'i>)>,
    known: Vec<&'static str>,
}

// === tables through their key rows ===

impl Reader<'_> {
    /// Reads the table `v` at `path` through the rows of `S`, onto `start` (its defaults).
    ///
    /// `None` when `v` is not a table, or a required key is missing or invalid.
    pub(crate) fn table<S: Keys>(&mut self, v: &Val<'_>, path: &str, start: S) -> Option<S> {
        match v.get_ref() {
            DeValue::Table(t) => self.rows(t, &v.span(), path, start),
            _ => {
                self.type_error(v, path, "a table");
                None
            }
        }
    }

    /// Reads each row's key of `t` (at `span`, key path `path`) into `s`; then the missing
    /// required keys, the checks across keys, and every key no row names are errors.
    fn rows<S: Keys>(
        &mut self,
        t: &DeTable<'_>,
        span: &Range<usize>,
        path: &str,
        mut s: S,
    ) -> Option<S> {
        let mut f = Fields::new(path.to_owned(), t);
        let mut complete = true;
        for row in S::ROWS {
            let read = self.get(&mut f, row.key, |r, v, p| Some((row.read)(r, v, p, &mut s)));
            complete &= row.required.is_none() || read == Some(true);
        }
        for row in S::ROWS {
            if let Some(what) = row.required
                && !f.has(row.key)
            {
                let message = format!("missing key `{}` ({what})", row.key);
                self.c.at_span(span, path, message);
            }
        }
        S::check(self, &|key| f.has(key), span, path);
        self.finish(f);
        complete.then_some(s)
    }
}

// === the arrays of tables and the upstream map ===

impl Reader<'_> {
    /// `[[listeners]]`: at least one; the first is named `main`, the others `listener-N`.
    pub(crate) fn listeners(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<ListenerConfig>> {
        let empty = "expected at least one listener (leave `listeners` out for the default one \
                     on 127.0.0.1:8080)";
        let listeners = self.list(v, path, Some(empty), |r, i, item, p| {
            let d = ListenerConfig::default();
            let name = if i == 0 {
                d.name.clone()
            } else {
                format!("listener-{i}").into()
            };
            r.table(item, p, ListenerConfig { name, ..d })
        });
        listeners.filter(|l| !l.is_empty())
    }

    /// `[[routes]]`, named `route-N` unless they say otherwise.
    pub(crate) fn routes(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<RouteConfig>> {
        self.list(v, path, None, |r, i, item, p| {
            let name = format!("route-{i}").into();
            r.table(
                item,
                p,
                RouteConfig {
                    name,
                    ..RouteConfig::default()
                },
            )
        })
    }

    /// A route's `split`: at least one target, and at least one weight above 0.
    pub(crate) fn split(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<SplitTarget>> {
        let empty = "expected at least one target such as { upstream = \"v1\", weight = 90 }";
        let items = self.array(v, path)?.len();
        let split = self.list(v, path, Some(empty), |r, _, item, p| {
            let upstream = Arc::from("");
            r.table(
                item,
                p,
                SplitTarget {
                    upstream,
                    weight: 1,
                },
            )
        })?;
        if items > 0 && split.len() == items && split.iter().all(|t| t.weight == 0) {
            let message = "expected at least one weight greater than 0 (got all 0)";
            self.c.at_span(&v.span(), path, message.to_owned());
        }
        (items > 0).then_some(split)
    }

    /// `[upstreams.NAME]`, in file order; each name must be label-safe.
    pub(crate) fn upstreams(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<UpstreamConfig>> {
        let DeValue::Table(t) = v.get_ref() else {
            self.type_error(v, path, "a table");
            return None;
        };
        let mut out = Vec::new();
        for (key, value) in Fields::new(path.to_owned(), t).entries {
            let p = join(path, key.get_ref());
            self.remember(&p, key, value);
            if !valid_name(key.get_ref()) {
                let got = quote(key.get_ref());
                self.c.at_span(
                    &key.span(),
                    &p,
                    format!("expected {NAME_EXPECTED} (got {got})"),
                );
            }
            let start = UpstreamConfig {
                name: Arc::from(key.get_ref().as_ref()),
                ..UpstreamConfig::default()
            };
            out.extend(self.table(value, &p, start));
        }
        Some(out)
    }
}

// === keys, arrays, and what the reader remembers ===

impl<'s> Reader<'s> {
    /// Takes `key` from a table and converts its value; the reader notes that the key is known.
    fn get<'t, 'i, T>(
        &mut self,
        f: &mut Fields<'t, 'i>,
        key: &'static str,
        convert: impl FnOnce(&mut Self, &'t Val<'i>, &str) -> Option<T>,
    ) -> Option<T> {
        f.known.push(key);
        let (k, v) = f
            .entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .copied()?;
        let path = join(&f.path, key);
        self.remember(&path, k, v);
        convert(self, v, &path)
    }

    /// Records every key of the table that the reader did not ask for.
    fn finish(&mut self, f: Fields<'_, '_>) {
        for (k, _) in &f.entries {
            if !f.known.contains(&k.get_ref().as_ref()) {
                let expected = f.known.join(", ");
                self.c.at_span(
                    &k.span(),
                    &join(&f.path, k.get_ref()),
                    format!("unknown key (expected one of: {expected})"),
                );
            }
        }
    }

    /// An array, each item converted by `item(reader, index, value, path)`; `empty` is the
    /// error for `[]`.
    pub(crate) fn list<T>(
        &mut self,
        v: &Val<'_>,
        path: &str,
        empty: Option<&str>,
        mut item: impl FnMut(&mut Self, usize, &Val<'_>, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.array(v, path)?;
        if let Some(message) = empty.filter(|_| items.is_empty()) {
            self.c.at_span(&v.span(), path, message.to_owned());
        }
        let mut out = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let p = self.item(path, i, it);
            out.extend(item(self, i, it, &p));
        }
        Some(out)
    }

    /// The items of an array value; records a type error if it is not an array.
    pub(crate) fn array<'t, 'i>(&mut self, v: &'t Val<'i>, path: &str) -> Option<&'t DeArray<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.type_error(v, path, "an array");
                None
            }
        }
    }

    /// The path of an array item, remembered at the item's line.
    pub(crate) fn item(&mut self, path: &str, index: usize, item: &Val<'_>) -> String {
        let p = format!("{path}[{index}]");
        let text = self.got(item);
        self.c.remember(&p, &item.span(), text);
        p
    }

    fn remember(&mut self, path: &str, key: &Spanned<DeString<'_>>, v: &Val<'_>) {
        let text = self.got(v);
        self.c.remember(path, &key.span(), text);
    }

    /// Records `expected {expected} (got …)` at the value.
    pub(crate) fn type_error(&mut self, v: &Val<'_>, path: &str, expected: &str) {
        let got = self.got(v);
        self.c
            .at_span(&v.span(), path, format!("expected {expected} (got {got})"));
    }

    /// The offending value for `(got …)`: its source text, shortened, or its kind.
    fn got(&self, v: &Val<'_>) -> String {
        let text = self.src.get(v.span()).unwrap_or("").trim();
        match v.get_ref() {
            DeValue::Table(_) => "a table".into(),
            DeValue::Array(_) if text.starts_with("[[") => "an array of tables".into(),
            DeValue::Array(_) if text.contains('\n') || text.chars().count() > 60 => {
                "an array".into()
            }
            _ => shorten(text),
        }
    }

    /// The source text of a span, shortened (for a key in `(got …)`).
    fn text(&self, span: Range<usize>) -> String {
        shorten(self.src.get(span).unwrap_or(""))
    }
}

impl<'t, 'i> Fields<'t, 'i> {
    fn new(path: String, table: &'t DeTable<'i>) -> Fields<'t, 'i> {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        Fields {
            path,
            entries,
            known: Vec::new(),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.get_ref() == key)
    }
}

// === key paths ===

/// `path.key`, quoting a key that is not plain.
pub(crate) fn join(path: &str, key: &str) -> String {
    let key = if valid_name(key) {
        key.to_owned()
    } else {
        quote(key)
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Whether `s` may name a route, upstream or listener: non-empty, `[A-Za-z0-9_.-]`.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn shorten(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.chars().count() > 60 || first.len() < text.len() {
        let cut: String = first.chars().take(60).collect();
        format!("{cut}…")
    } else {
        first.to_owned()
    }
}

/// What a route, upstream or listener name may be.
const NAME_EXPECTED: &str = "a name of letters, digits, '_', '.' and '-'";
