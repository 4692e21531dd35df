//! From text to [`File`]: the TOML document is parsed into a tree that keeps every span, the
//! environment overrides are inserted into it, and it is deserialized. Serde stops at the first
//! error, so each error is recorded, the entry it is about removed from the tree, and the rest
//! deserialized again: every problem in the file is reported in one run, each with its line.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::ConfigError;
use super::Env;
use super::schema::{self, File};
use super::setting::ENV_SPANS;

/// Where the text came from, to turn spans into `file:line:column` or a variable's name.
#[derive(Debug)]
pub(super) struct Origin<'a> {
    pub file: String,
    pub text: &'a str,
    /// The environment variables inserted, in span order.
    pub overrides: Vec<String>,
}

impl Origin<'_> {
    /// `file:line:column` for a span in the file, `environment variable X` for an override.
    pub fn at(&self, span: &Range<usize>) -> String {
        if span.start >= ENV_SPANS {
            return match self.overrides.get(span.start - ENV_SPANS) {
                Some(name) => format!("environment variable {name}"),
                None => "environment".into(),
            };
        }
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{line}:{column}", self.file)
    }
}

/// An error with the offset it sorts by (file order; environment errors after the file's).
pub(super) struct Found {
    pub order: usize,
    pub error: ConfigError,
}

/// One step of a path into the document.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Reads the file (if any) and the environment overrides into a [`File`], recording every
/// problem. Returns `None` when the document cannot be read at all.
pub(super) fn read(
    text: Option<&str>,
    env: &Env,
    origin: &mut Origin<'_>,
    found: &mut Vec<Found>,
) -> Option<File> {
    let (mut root, syntax) = DeTable::parse_recoverable(text.unwrap_or(""));
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        found.push(Found {
            order: span.start,
            error: ConfigError {
                location: origin.at(&span),
                key: String::new(),
                message: first_line(e.message()),
            },
        });
    }
    for key in schema::keys() {
        let name = key.env();
        if let Some(value) = env.get(&name) {
            let span = ENV_SPANS + origin.overrides.len()..ENV_SPANS + origin.overrides.len() + 1;
            origin.overrides.push(name);
            insert(root.get_mut(), key.path, value, span);
        }
    }
    let original = root.get_ref().clone();
    let mut removed: Vec<Vec<Step>> = Vec::new();
    // Each round removes one entry, so this ends; the bound is a backstop.
    for _ in 0..10_000 {
        let error = match File::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(file) => return Some(file),
            Err(e) => e,
        };
        let span = error.span().unwrap_or(0..0);
        let path = locate(root.get_ref(), &span);
        let message = first_line(error.message());
        // A required field reported missing because an earlier round removed it.
        let consequence = message.starts_with("missing field")
            && removed
                .iter()
                .any(|r| r.starts_with(&path) && r.len() > path.len());
        if !consequence {
            found.push(Found {
                order: span.start,
                error: ConfigError {
                    location: origin.at(&span),
                    key: label(&original, &path),
                    message: explain(&path, &message),
                },
            });
        }
        if path.is_empty() || !remove(root.get_mut(), &path) {
            return None;
        }
        removed.push(path);
    }
    None
}

/// Inserts an override at `section.key` (or a top-level key, or `section.sub.key`), creating
/// the sections the file lacks. A section that is not a table is left alone: deserializing
/// reports it.
fn insert(root: &mut DeTable<'_>, path: &str, value: &str, span: Range<usize>) {
    match path.split_once('.') {
        None => {
            let value = Spanned::new(span.clone(), DeValue::String(Cow::Owned(value.to_owned())));
            root.insert(Spanned::new(span, Cow::Owned(path.to_owned())), value);
        }
        Some((section, rest)) => {
            if root.get(section).is_none() {
                root.insert(
                    Spanned::new(span.clone(), Cow::Owned(section.to_owned())),
                    Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
                );
            }
            if let Some(DeValue::Table(t)) = root.get_mut(section).map(Spanned::get_mut) {
                insert(t, rest, value, span);
            }
        }
    }
}

fn contains(span: &Range<usize>, at: usize) -> bool {
    span.start <= at && (at < span.end || span.is_empty() && at == span.start)
}

/// The path of the innermost entry whose key or value holds the start of `span` (children
/// first: the span of a `[section]` or `[[array]]` table need not cover its entries).
fn locate(table: &DeTable<'_>, span: &Range<usize>) -> Vec<Step> {
    for (key, value) in table.iter() {
        let inner = locate_in(value.get_ref(), span);
        if !inner.is_empty()
            || contains(&key.span(), span.start)
            || contains(&value.span(), span.start)
        {
            let mut path = vec![Step::Key(key.get_ref().to_string())];
            path.extend(inner);
            return path;
        }
    }
    Vec::new()
}

fn locate_in(value: &DeValue<'_>, span: &Range<usize>) -> Vec<Step> {
    match value {
        DeValue::Table(t) => locate(t, span),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let inner = locate_in(item.get_ref(), span);
                if !inner.is_empty() || contains(&item.span(), span.start) {
                    let mut path = vec![Step::Index(i)];
                    path.extend(inner);
                    return path;
                }
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// Removes the entry at `path`; false if there is none.
fn remove(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    let Some((Step::Key(key), rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(key.as_str()).is_some();
    }
    match table.get_mut(key.as_str()).map(Spanned::get_mut) {
        Some(value) => remove_in(value, rest),
        None => false,
    }
}

fn remove_in(value: &mut DeValue<'_>, path: &[Step]) -> bool {
    match (value, path.split_first()) {
        (DeValue::Table(t), _) => remove(t, path),
        (DeValue::Array(items), Some((Step::Index(i), rest))) => {
            if rest.is_empty() {
                if *i >= items.len() {
                    return false;
                }
                let mut kept = DeArray::new();
                for (n, item) in std::mem::replace(items, DeArray::new()).iter().enumerate() {
                    if n != *i {
                        kept.push(item.clone());
                    }
                }
                *items = kept;
                true
            } else {
                items
                    .get_mut(*i)
                    .is_some_and(|item| remove_in(item.get_mut(), rest))
            }
        }
        _ => false,
    }
}

/// `store.max_connections`, `clients[1] (billing).secret_env`: array elements are named by their
/// identifying field, looked up in the document as written (indices stay those of the file).
fn label(original: &DeTable<'_>, path: &[Step]) -> String {
    let mut out = String::new();
    let mut node: Option<&DeValue<'_>> = None;
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
                let table = match node {
                    None => Some(original),
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                };
                node = table.and_then(|t| t.get(k.as_str())).map(Spanned::get_ref);
            }
            Step::Index(i) => {
                out.push_str(&format!("[{i}]"));
                node = match node {
                    Some(DeValue::Array(items)) => items.get(*i).map(Spanned::get_ref),
                    _ => None,
                };
                if let Some(DeValue::Table(t)) = node
                    && let Some(name) = ["id", "identifier", "path", "issuer", "principal"]
                        .iter()
                        .find_map(|f| t.get(*f).and_then(|v| v.get_ref().as_str()))
                {
                    out.push_str(&format!(" ({name})"));
                }
            }
        }
    }
    out
}

/// Serde's message, or a clearer one for the file's own structure.
fn explain(path: &[Step], message: &str) -> String {
    let in_array = path.iter().any(|s| matches!(s, Step::Index(_)));
    let dotted = path
        .iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        })
        .collect::<Vec<_>>()
        .join(".");
    if in_array {
        return message.to_owned();
    }
    if message.starts_with("unknown field") {
        let section = dotted.rsplit_once('.').map_or("", |(s, _)| s);
        let keys: Vec<&str> = schema::keys()
            .filter(|k| k.section() == section)
            .map(|k| k.path)
            .chain(
                schema::SECTIONS
                    .iter()
                    .chain(schema::TABLE_ARRAYS)
                    .filter(|p| p.rsplit_once('.').map_or("", |(s, _)| s) == section)
                    .copied(),
            )
            .collect();
        return format!("unknown key; the keys here are: {}", keys.join(", "));
    }
    if message.starts_with("invalid type") {
        if schema::TABLE_ARRAYS.contains(&dotted.as_str()) {
            return "must be an array of tables ([[...]])".into();
        }
        if schema::SECTIONS.contains(&dotted.as_str()) {
            return "must be a table (a [section])".into();
        }
    }
    message.to_owned()
}

pub(super) fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}
