//! A JSON body parsed flat, for validation without building a tree.
//!
//! `serde_json::Value` costs an allocation per object, string and map node, and a B-tree insert
//! per member; for a 1 KB body that was most of what validation cost. Here `serde_json`'s parser
//! (the same one, with the same grammar and the same number handling) drives a visitor that
//! appends **entries** to one vector in document order: a container records how many children
//! it has and where its descendants end, a member is its name followed by its value, and strings
//! are borrowed from the body unless they held escapes. `jsonschema` validates this
//! representation directly through its [`Json`] trait (`jsonschema::options_for`).
//!
//! The parse also enforces two rules the tree did not:
//! - **Nesting depth**: the visitor refuses a container past `max_depth` before reading into
//!   it, so nothing deeper is parsed or stored.
//! - **Unique member names** (I-JSON, RFC 7493 §2.3): parsers disagree on `{"a": 1, "a": 2}` —
//!   some keep the first, most the last — so a body with a duplicated name could be validated
//!   as one document and acted on by the upstream as another. It is refused instead.
//!
//! An error names where it happened as a JSON pointer, assembled only on the error path: each
//! level of the parse adds its own step while it unwinds.

use std::borrow::Cow;
use std::fmt;

use jsonschema::JsonType;
use jsonschema::json::{Array, Json, Node, NodeIdentity, Object, cmp};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// One value, or the head of a container, on the tape.
#[derive(Debug)]
pub enum Entry<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    /// `len` elements; its descendants are the entries before index `end`.
    Array {
        len: usize,
        end: usize,
    },
    /// `len` members, each a `Str` name and then its value.
    Object {
        len: usize,
        end: usize,
    },
}

/// A parsed document.
#[derive(Debug)]
pub struct Tape<'a> {
    entries: Vec<Entry<'a>>,
}

/// Why a body is not a document we validate.
#[derive(Debug, PartialEq, Eq)]
pub enum TapeError {
    /// Not JSON: `serde_json`'s message, with line and column.
    Syntax(String),
    /// A container at `pointer` nests past the limit.
    TooDeep { pointer: String, max: usize },
    /// The object at `pointer` has the member `name` more than once.
    Duplicate { pointer: String, name: String },
}

impl<'a> Tape<'a> {
    /// Parses `text` (one JSON value, whitespace around it) nesting at most `max_depth` arrays
    /// and objects deep. `serde_json` refuses past 127 levels on its own.
    pub fn parse(text: &'a [u8], max_depth: usize) -> Result<Tape<'a>, TapeError> {
        // UTF-8 is checked once for the whole body (std's check runs a word at a time over
        // ASCII), so the parser need not check each string again.
        let text = std::str::from_utf8(text)
            .map_err(|e| TapeError::Syntax(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
        let mut builder = Builder {
            // About one entry per 8 bytes of typical JSON: one allocation for most bodies. Capped:
            // a large body that is mostly one string must not reserve four times its size.
            entries: Vec::with_capacity((text.len() / 8 + 1).min(4096)),
            max_depth,
            failure: None,
            names: Vec::new(),
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = Seed {
            b: &mut builder,
            depth: 0,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        match (parsed, builder.failure) {
            (Ok(()), _) => Ok(Tape {
                entries: builder.entries,
            }),
            (Err(_), Some(failure)) => Err(failure.into_error()),
            (Err(e), None) => Err(TapeError::Syntax(e.to_string())),
        }
    }

    /// The document's root value.
    pub fn root(&self) -> TapeNode<'_> {
        TapeNode {
            doc: &self.entries,
            at: 0,
        }
    }
}

/// What stopped the parse, and the path to it, innermost step first.
struct Failure {
    kind: FailureKind,
    path: Vec<Step>,
}

enum FailureKind {
    TooDeep(usize),
    Duplicate(String),
}

enum Step {
    Name(String),
    Index(usize),
}

impl Failure {
    fn into_error(self) -> TapeError {
        let mut pointer = String::new();
        for step in self.path.iter().rev() {
            pointer.push('/');
            match step {
                Step::Name(n) => pointer.push_str(&n.replace('~', "~0").replace('/', "~1")),
                Step::Index(i) => pointer.push_str(&i.to_string()),
            }
        }
        match self.kind {
            FailureKind::TooDeep(max) => TapeError::TooDeep { pointer, max },
            FailureKind::Duplicate(name) => TapeError::Duplicate { pointer, name },
        }
    }
}

struct Builder<'de> {
    entries: Vec<Entry<'de>>,
    max_depth: usize,
    failure: Option<Failure>,
    /// Scratch: the name entries of the object being checked for duplicates.
    names: Vec<usize>,
}

impl<'de> Builder<'de> {
    fn fail<E: de::Error>(&mut self, kind: FailureKind) -> E {
        self.failure = Some(Failure {
            kind,
            path: Vec::new(),
        });
        E::custom("refused")
    }

    /// Adds a step to the path of a failure unwinding through this level.
    fn step(&mut self, step: impl FnOnce(&Self) -> Step) {
        if self.failure.is_some() {
            let s = step(self);
            if let Some(f) = &mut self.failure {
                f.path.push(s);
            }
        }
    }

    fn name_at(&self, at: usize) -> &str {
        match self.entries.get(at) {
            Some(Entry::Str(s)) => s,
            _ => "",
        }
    }

    /// The first member name the object at `start` (with `len` members) repeats.
    fn duplicate(&mut self, start: usize, len: usize) -> Option<String> {
        if len < 2 {
            return None;
        }
        let mut names = std::mem::take(&mut self.names);
        names.clear();
        let mut at = start + 1;
        for _ in 0..len {
            names.push(at);
            at = after(&self.entries, at + 1);
        }
        let found = if len <= 16 {
            // Small objects, the usual case: compare each pair, no sort.
            (1..names.len()).find_map(|i| {
                let n = self.name_at(names[i]);
                names[..i]
                    .iter()
                    .any(|&j| self.name_at(j) == n)
                    .then(|| n.to_owned())
            })
        } else {
            // Sorting keeps a large object's check O(n log n) whatever its names are.
            names.sort_unstable_by(|&a, &b| self.name_at(a).cmp(self.name_at(b)));
            names
                .windows(2)
                .find(|w| self.name_at(w[0]) == self.name_at(w[1]))
                .map(|w| self.name_at(w[0]).to_owned())
        };
        self.names = names;
        found
    }
}

/// The index after the value at `at` and its descendants.
fn after(doc: &[Entry<'_>], at: usize) -> usize {
    match doc.get(at) {
        Some(Entry::Array { end, .. } | Entry::Object { end, .. }) => *end,
        _ => at + 1,
    }
}

/// Parses one value onto the tape; `depth` is the nesting of the container it is in.
struct Seed<'b, 'de> {
    b: &'b mut Builder<'de>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Seed<'_, 'de> {
    fn push(self, e: Entry<'de>) {
        self.b.entries.push(e);
    }

    /// The depth of a container that opens here, or the refusal past the limit.
    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > self.b.max_depth {
            return Err(self.b.fail(FailureKind::TooDeep(self.b.max_depth)));
        }
        Ok(depth)
    }
}

impl<'de> Visitor<'de> for Seed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(Entry::Null);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Entry::Bool(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Entry::Number(v.into()));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Entry::Number(v.into()));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let n = Number::from_f64(v).ok_or_else(|| E::custom("a number out of range"))?;
        self.push(Entry::Number(n));
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.push(Entry::Str(Cow::Borrowed(v)));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Entry::Str(Cow::Owned(v.to_owned())));
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.push(Entry::Str(Cow::Owned(v)));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let b = self.b;
        let start = b.entries.len();
        b.entries.push(Entry::Array { len: 0, end: 0 });
        let mut len = 0;
        loop {
            match seq.next_element_seed(Seed { b: &mut *b, depth }) {
                Ok(Some(())) => len += 1,
                Ok(None) => break,
                Err(e) => {
                    b.step(|_| Step::Index(len));
                    return Err(e);
                }
            }
        }
        let end = b.entries.len();
        b.entries[start] = Entry::Array { len, end };
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let b = self.b;
        let start = b.entries.len();
        b.entries.push(Entry::Object { len: 0, end: 0 });
        let mut len = 0;
        // The usual object — a few names, none escaped — is checked for repeats as its names
        // are read, against the earlier ones borrowed from the body; any other afterwards.
        let mut names: [&'de str; 8] = [""; 8];
        let mut inline = true;
        loop {
            let name_at = b.entries.len();
            let Some(name) = map.next_key_seed(NameSeed { b: &mut *b })? else {
                break;
            };
            if inline {
                match name {
                    Some(name) if len < names.len() => {
                        if names[..len].contains(&name) {
                            return Err(b.fail(FailureKind::Duplicate(name.to_owned())));
                        }
                        names[len] = name;
                    }
                    _ => inline = false,
                }
            }
            if let Err(e) = map.next_value_seed(Seed { b: &mut *b, depth }) {
                b.step(|b| Step::Name(b.name_at(name_at).to_owned()));
                return Err(e);
            }
            len += 1;
        }
        if !inline && let Some(name) = b.duplicate(start, len) {
            return Err(b.fail(FailureKind::Duplicate(name)));
        }
        let end = b.entries.len();
        b.entries[start] = Entry::Object { len, end };
        Ok(())
    }
}

/// Parses a member name onto the tape; the name when it is borrowed from the body.
struct NameSeed<'b, 'de> {
    b: &'b mut Builder<'de>,
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_, 'de> {
    type Value = Option<&'de str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<&'de str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_, 'de> {
    type Value = Option<&'de str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Option<&'de str>, E> {
        self.b.entries.push(Entry::Str(Cow::Borrowed(v)));
        Ok(Some(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<&'de str>, E> {
        self.b.entries.push(Entry::Str(Cow::Owned(v.to_owned())));
        Ok(None)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Option<&'de str>, E> {
        self.b.entries.push(Entry::Str(Cow::Owned(v)));
        Ok(None)
    }
}

/// The tape as `jsonschema` reads instances.
pub struct TapeJson;

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = Vec<Entry<'static>>;

    // A lookup scans the members, so one pass over them never costs more than lookups do.
    const KEYS_PER_LOOKUP: usize = 1 << 16;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>(
        buffer: &mut Vec<Entry<'static>>,
        string: &str,
        f: impl FnOnce(TapeNode<'_>) -> T,
    ) -> T {
        buffer.clear();
        buffer.push(Entry::Str(Cow::Owned(string.to_owned())));
        f(TapeNode { doc: buffer, at: 0 })
    }
}

/// A value on a tape.
#[derive(Clone, Copy, Debug)]
pub struct TapeNode<'a> {
    doc: &'a [Entry<'a>],
    at: usize,
}

impl<'a> TapeNode<'a> {
    /// A document of one scalar entry (`doc` holds exactly that entry).
    pub(super) fn scalar(doc: &'a [Entry<'a>]) -> TapeNode<'a> {
        TapeNode { doc, at: 0 }
    }

    fn entry(&self) -> Option<&'a Entry<'a>> {
        self.doc.get(self.at)
    }

    fn str(&self) -> Option<&'a str> {
        match self.entry() {
            Some(Entry::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The value as a tree (for error messages and the rare keywords that compare whole values).
    fn tree(&self) -> Value {
        match self.entry() {
            None | Some(Entry::Null) => Value::Null,
            Some(Entry::Bool(b)) => Value::Bool(*b),
            Some(Entry::Number(n)) => Value::Number(n.clone()),
            Some(Entry::Str(s)) => Value::String(s.to_string()),
            Some(Entry::Array { len, .. }) => Value::Array(
                Elements {
                    doc: self.doc,
                    next: self.at + 1,
                    left: *len,
                }
                .map(|e| e.tree())
                .collect(),
            ),
            Some(Entry::Object { len, .. }) => Value::Object(
                Members {
                    doc: self.doc,
                    next: self.at + 1,
                    left: *len,
                }
                .map(|(k, v)| (k.to_owned(), v.tree()))
                .collect::<Map<String, Value>>(),
            ),
        }
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<TapeObject<'a>> {
        match self.entry() {
            Some(Entry::Object { len, .. }) => Some(TapeObject {
                doc: self.doc,
                at: self.at,
                len: *len,
            }),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<TapeArray<'a>> {
        match self.entry() {
            Some(Entry::Array { len, .. }) => Some(TapeArray {
                doc: self.doc,
                at: self.at,
                len: *len,
            }),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        self.str().map(Cow::Borrowed)
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.entry() {
            Some(Entry::Number(n)) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.entry() {
            Some(Entry::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.entry(), Some(Entry::Null))
    }

    fn json_type(&self) -> JsonType {
        match self.entry() {
            None | Some(Entry::Null) => JsonType::Null,
            Some(Entry::Bool(_)) => JsonType::Boolean,
            Some(Entry::Number(_)) => JsonType::Number,
            Some(Entry::Str(_)) => JsonType::String,
            Some(Entry::Array { .. }) => JsonType::Array,
            Some(Entry::Object { .. }) => JsonType::Object,
        }
    }

    fn string_length(&self) -> Option<u64> {
        self.str().map(|s| s.chars().count() as u64)
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let s = self.str()?;
        // A code point takes one to four bytes: the byte length often decides without counting.
        let bytes = s.len() as u64;
        let fewest = bytes.div_ceil(4);
        if bytes < min || fewest > max {
            return Some(false);
        }
        if min <= fewest && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(s.chars().count() as u64)))
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // Scalars compare in place (`enum` and `const` over strings are common); containers
        // through a tree.
        match (self.entry(), expected) {
            (Some(Entry::Str(s)), Value::String(e)) => s == e,
            (Some(Entry::Number(n)), Value::Number(e)) => cmp::equal_numbers(&n, e),
            (Some(Entry::Bool(b)), Value::Bool(e)) => b == e,
            (Some(Entry::Null), Value::Null) => true,
            (Some(Entry::Array { .. } | Entry::Object { .. }), _) => {
                cmp::equal(&self.tree(), expected)
            }
            _ => false,
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(self.tree())
    }

    fn identity(&self) -> Option<NodeIdentity> {
        // Each entry has its own address for as long as the tape lives.
        self.entry()
            .map(|e| NodeIdentity::new(std::ptr::from_ref(e) as usize))
    }
}

/// An object on a tape.
#[derive(Clone, Copy, Debug)]
pub struct TapeObject<'a> {
    doc: &'a [Entry<'a>],
    at: usize,
    len: usize,
}

impl<'a> Object<'a, TapeJson> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        // Names are unique (the parse refuses repeats): the first match is the only one.
        self.members()
            .find(|(name, _)| *name == &**key)
            .map(|(_, v)| v)
    }

    fn members(&self) -> Members<'a> {
        Members {
            doc: self.doc,
            next: self.at + 1,
            left: self.len,
        }
    }
}

/// An object's members in document order.
pub struct Members<'a> {
    doc: &'a [Entry<'a>],
    next: usize,
    left: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (name, value) = (self.next, self.next + 1);
        let Some(Entry::Str(name)) = self.doc.get(name) else {
            self.left = 0;
            return None;
        };
        self.next = after(self.doc, value);
        Some((
            name,
            TapeNode {
                doc: self.doc,
                at: value,
            },
        ))
    }
}

/// An array on a tape.
#[derive(Clone, Copy, Debug)]
pub struct TapeArray<'a> {
    doc: &'a [Entry<'a>],
    at: usize,
    len: usize,
}

impl<'a> Array<'a, TapeJson> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn elements(&self) -> Elements<'a> {
        Elements {
            doc: self.doc,
            next: self.at + 1,
            left: self.len,
        }
    }
}

/// An array's elements in order.
pub struct Elements<'a> {
    doc: &'a [Entry<'a>],
    next: usize,
    left: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<TapeNode<'a>> {
        if self.left == 0 || self.next >= self.doc.len() {
            return None;
        }
        self.left -= 1;
        let at = self.next;
        self.next = after(self.doc, at);
        Some(TapeNode { doc: self.doc, at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tape(text: &str) -> Result<Value, TapeError> {
        Tape::parse(text.as_bytes(), 32).map(|t| t.root().tree())
    }

    #[test]
    fn a_document_reads_back_as_the_tree_serde_json_builds() {
        for text in [
            r#"{"a":[1,-2,3.5,"x\u00e9\n",true,false,null,{}],"b":{"c":[[],[{}]]},"":""}"#,
            "[]",
            "0",
            r#""\"quoted\"""#,
            " [1, [2, [3]]] ",
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"f":1e300}"#,
        ] {
            let ours = tape(text).expect(text);
            let theirs: Value = serde_json::from_str(text).expect(text);
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn not_json_is_a_syntax_error() {
        for text in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "1 2",
            "nul",
            "{\"a\":1}}",
            "1e400",
        ] {
            assert!(matches!(tape(text), Err(TapeError::Syntax(_))), "{text:?}");
        }
        assert_eq!(
            Tape::parse(b"{\"a\":\"\xff\"}", 32).map(|_| ()),
            Err(TapeError::Syntax("invalid UTF-8 at byte 6".into()))
        );
    }

    #[test]
    fn depth_is_refused_at_the_first_level_past_the_limit() {
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(tape(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(
            tape(&deep),
            Err(TapeError::TooDeep {
                pointer: format!("/{}", vec!["0"; 32].join("/")),
                max: 32
            })
        );
        // Never read to the end: a body of a million brackets stops at the limit.
        let flood = "[".repeat(1_000_000);
        assert!(matches!(tape(&flood), Err(TapeError::TooDeep { .. })));
        let named = r#"{"a/b":{"c~d":[{"e":[[]]}]}}"#;
        assert_eq!(
            Tape::parse(named.as_bytes(), 5).map(|_| ()),
            Err(TapeError::TooDeep {
                pointer: "/a~1b/c~0d/0/e/0".into(),
                max: 5
            })
        );
        // serde_json's own limit holds above ours.
        let very = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Tape::parse(very.as_bytes(), 500).is_err());
    }

    #[test]
    fn repeated_member_names_are_refused_wherever_they_are() {
        assert_eq!(
            tape(r#"{"a":1,"b":2,"a":3}"#),
            Err(TapeError::Duplicate {
                pointer: String::new(),
                name: "a".into()
            })
        );
        // Escapes are compared decoded.
        assert_eq!(
            tape(r#"{"x":[{"k":1,"\u006b":2}]}"#),
            Err(TapeError::Duplicate {
                pointer: "/x/0".into(),
                name: "k".into()
            })
        );
        // Past eight names, or with an escaped one, the object is checked once it is read.
        let nine: Vec<String> = (0..9).map(|i| format!("\"n{i}\":{i}")).collect();
        assert!(tape(&format!("{{{}}}", nine.join(","))).is_ok());
        assert_eq!(
            tape(&format!("{{{},\"n3\":0}}", nine.join(","))),
            Err(TapeError::Duplicate {
                pointer: String::new(),
                name: "n3".into()
            })
        );
        assert!(matches!(
            tape(r#"{"a\n":1,"b":2,"b":3}"#),
            Err(TapeError::Duplicate { .. })
        ));
        assert!(tape(r#"{"a\n":1,"a":2}"#).is_ok());
        // A large object is checked by sorting.
        let mut many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        assert!(tape(&format!("{{{}}}", many.join(","))).is_ok());
        many.push("\"k57\":0".into());
        assert_eq!(
            tape(&format!("{{{}}}", many.join(","))),
            Err(TapeError::Duplicate {
                pointer: String::new(),
                name: "k57".into()
            })
        );
        // The same name in different objects is fine.
        assert!(tape(r#"{"a":{"a":{"a":1}},"b":{"a":2}}"#).is_ok());
    }

    #[test]
    fn the_representation_keeps_jsonschemas_contract() {
        let text = serde_json::to_vec(&jsonschema::json::conformance::document()).expect("json");
        let tape = Tape::parse(&text, 32).expect("parses");
        jsonschema::json::conformance::assert_conformance::<TapeJson>(&tape.root());
    }

    #[test]
    fn validation_over_the_tape_agrees_with_validation_over_the_tree() {
        let schema = serde_json::json!({
            "type": "object", "required": ["orders"], "additionalProperties": false,
            "properties": {
                "orders": { "type": "array", "maxItems": 3, "uniqueItems": true, "items": {
                    "type": "object", "required": ["id", "status"],
                    "properties": {
                        "id": { "type": "integer", "minimum": 0 },
                        "item": { "type": "string", "maxLength": 4, "pattern": "^[a-z]+$" },
                        "status": { "enum": ["pending", "shipped", 1.0, {"x": [1]}] },
                        "tags": { "type": "object", "propertyNames": { "maxLength": 2 } }
                    } } },
                "note": { "const": {"a": [1, 2]} }
            }
        });
        let tree = jsonschema::draft202012::options()
            .build(&schema)
            .expect("schema");
        let flat = jsonschema::options_for::<TapeJson>()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .expect("schema");
        for body in [
            r#"{"orders":[]}"#,
            r#"{"orders":[{"id":1,"status":"pending"}]}"#,
            r#"{"orders":[{"id":1.0,"status":1}]}"#,
            r#"{"orders":[{"id":1,"status":{"x":[1.0]}}]}"#,
            r#"{"orders":[{"id":-1,"status":"pending"}]}"#,
            r#"{"orders":[{"id":1,"status":"lost"}]}"#,
            r#"{"orders":[{"id":1,"status":"pending","item":"abcde"}]}"#,
            r#"{"orders":[{"id":1,"status":"pending","item":"ab1"}]}"#,
            r#"{"orders":[{"id":1,"status":"pending"},{"id":1,"status":"pending"}]}"#,
            r#"{"orders":[{"id":1,"status":"pending","tags":{"ab":1,"abc":2}}]}"#,
            r#"{"orders":[{"id":1}],"extra":1}"#,
            r#"{"orders":[],"note":{"a":[1.0,2]}}"#,
            r#"{"orders":[],"note":{"a":[2,1]}}"#,
            r#"{"orders":[{},{},{},{}]}"#,
            r#"[]"#,
        ] {
            let value: Value = serde_json::from_str(body).expect(body);
            let tape = Tape::parse(body.as_bytes(), 32).expect(body);
            assert_eq!(flat.is_valid(tape.root()), tree.is_valid(&value), "{body}");
            let errors = |it: jsonschema::ErrorIterator<'_>| {
                it.map(|e| (e.instance_path().to_string(), e.to_string()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                errors(flat.iter_errors(tape.root())),
                errors(tree.iter_errors(&value)),
                "{body}"
            );
        }
    }
}
