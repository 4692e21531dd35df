//! Validation while parsing, for the schemas most request bodies are described with.
//!
//! The full path ([`super::tape`]) parses a body flat and lets `jsonschema` walk it: two passes
//! and a vector of entries. Most request schemas use a handful of keywords — `type`,
//! `properties`, `required`, `additionalProperties`, `items`, bounds on lengths, sizes and
//! numbers, `enum` and `const` of strings — that can be checked as the parser reads each value.
//! Such a schema is compiled here into a [`Plan`], and a body is checked in one pass with
//! nothing stored, by a reader of JSON written for the purpose ([`Scan`]; `serde_json`'s
//! parser driven through visitors cost twice as much, and the gateway benchmark's validated
//! route pays this on every request). Whatever that reader accepts, `serde_json` reads too
//! (a property test feeds it near-JSON); a number it does not read with certainty it hands
//! to `serde_json`.
//!
//! **A plan only ever says yes.** A body it accepts is one the full path accepts too: JSON in
//! UTF-8, nested at most `max_depth` deep, no object repeating a member name, and valid against
//! the schema (the differential tests below hold it to that). Anything else — a body that fails,
//! that is not JSON, or a value the plan is not sure of (a fraction where an integer is asked
//! for, a number too large to compare exactly) — goes to the full path, which decides and names
//! each failure. A plan may be incomplete; it must never be wrong.
//!
//! A subschema using other keywords (`pattern`, `format`, `allOf`, …) is handed to `jsonschema`
//! whole when it can only match a scalar (its `type`, `enum` or `const` says so): the value is
//! checked by a validator compiled for that subschema alone, over the same representation the
//! full path uses. A schema with references, or with such a subschema that could match an
//! array or an object, has no plan.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::tape::{Entry, TapeJson, TapeNode};

/// A schema compiled for validation while parsing.
pub struct Plan {
    root: Rule,
}

enum Rule {
    /// Any value (the schema `true`, or `{}`).
    Any,
    /// No value (the schema `false`).
    Never,
    Checks(Box<Checks>),
    /// A subschema that can only match a scalar, checked by `jsonschema`.
    Scalar(Box<jsonschema::Validator<TapeJson>>),
}

/// The JSON types, as bits.
const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const INTEGER: u8 = 4;
/// Every number, integers included.
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const ARRAY: u8 = 32;
const OBJECT: u8 = 64;
const ALL: u8 = 127;

/// A schema object's keywords, each as the parser can check it.
struct Checks {
    types: u8,
    min_length: u64,
    max_length: u64,
    /// `enum` / `const` of strings: the value must be one of these.
    strings: Option<Box<[Box<str>]>>,
    bounds: Vec<(Bound, Num)>,
    items: Rule,
    min_items: u64,
    max_items: u64,
    /// Declared members: a name and its rule (`None`: a name only `required` lists, which
    /// `additionalProperties` governs). At most 64, each a bit of `required` and of the set
    /// seen while an object is read.
    properties: Vec<(Box<str>, Option<Rule>)>,
    /// The properties whose names a body writes without escapes (no quote, backslash or
    /// control character): such a name can be compared in place with the body's bytes.
    plain: u64,
    required: u64,
    additional: Rule,
    min_properties: u64,
    max_properties: u64,
}

#[derive(Clone, Copy)]
enum Bound {
    Minimum,
    Maximum,
    ExclusiveMinimum,
    ExclusiveMaximum,
}

/// Keywords that only annotate: they never make a value invalid.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords that name or reach other schemas: a schema using any of them has no plan.
const REFERENCES: &[&str] = &[
    "$ref",
    "$dynamicRef",
    "$recursiveRef",
    "$id",
    "$anchor",
    "$dynamicAnchor",
    "$recursiveAnchor",
    "$defs",
    "definitions",
    "$vocabulary",
    "$schema",
];

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// At most this many names an object's schema does not declare are remembered while reading
/// one object (to refuse a repeated one); an object with more goes to the full path.
const MAX_UNDECLARED: usize = 32;

impl Plan {
    /// The plan for `schema` — a draft 2020-12 schema `jsonschema` has already accepted — or
    /// `None` when it uses what a plan does not read (its bodies then take the full path).
    pub fn new(schema: &Value) -> Option<Plan> {
        let mut schema = schema.clone();
        // `$schema` is allowed at the root, naming the draft every validator here uses.
        if let Value::Object(map) = &mut schema
            && let Some(draft) = map.remove("$schema")
            && draft.as_str().map(|d| d.trim_end_matches('#')) != Some(DRAFT_2020_12)
        {
            return None;
        }
        if mentions_reference(&schema) {
            return None;
        }
        Some(Plan {
            root: rule(&schema)?,
        })
    }

    /// Whether `body` is certainly valid: `false` means the full path decides.
    pub fn accepts(&self, body: &[u8], max_depth: usize) -> bool {
        // UTF-8 checked once for the whole body, as the full path does.
        let Ok(text) = std::str::from_utf8(body) else {
            return false;
        };
        let mut scan = Scan {
            text,
            at: 0,
            max_depth,
        };
        scan.value(&self.root, 0, None).is_ok() && scan.at_end()
    }
}

/// Whether any object in `v` has a key that names or reaches another schema (a property
/// called `$ref` counts too: the plan stays on the safe side).
fn mentions_reference(v: &Value) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| REFERENCES.contains(&k.as_str()) || mentions_reference(v)),
        Value::Array(items) => items.iter().any(mentions_reference),
        _ => false,
    }
}

fn rule(schema: &Value) -> Option<Rule> {
    let map = match schema {
        Value::Bool(true) => return Some(Rule::Any),
        Value::Bool(false) => return Some(Rule::Never),
        Value::Object(map) => map,
        _ => return None,
    };
    let mut c = Checks {
        types: ALL,
        min_length: 0,
        max_length: u64::MAX,
        strings: None,
        bounds: Vec::new(),
        items: Rule::Any,
        min_items: 0,
        max_items: u64::MAX,
        properties: Vec::new(),
        plain: 0,
        required: 0,
        additional: Rule::Any,
        min_properties: 0,
        max_properties: u64::MAX,
    };
    let mut opaque = false;
    let mut required: Vec<&str> = Vec::new();
    // What `enum` / `const` allow, when every value they list is a scalar.
    let mut listed: Option<u8> = None;
    let mut narrow = |types: u8| listed = Some(listed.unwrap_or(ALL) & types);
    for (key, v) in map {
        match key.as_str() {
            "type" => c.types = types(v)?,
            "properties" => {
                for (name, s) in v.as_object()? {
                    c.properties.push((name.as_str().into(), Some(rule(s)?)));
                }
            }
            "required" => {
                for name in v.as_array()? {
                    required.push(name.as_str()?);
                }
            }
            "additionalProperties" => c.additional = rule(v)?,
            "items" => c.items = rule(v)?,
            "minLength" => c.min_length = v.as_u64()?,
            "maxLength" => c.max_length = v.as_u64()?,
            "minItems" => c.min_items = v.as_u64()?,
            "maxItems" => c.max_items = v.as_u64()?,
            "minProperties" => c.min_properties = v.as_u64()?,
            "maxProperties" => c.max_properties = v.as_u64()?,
            "minimum" => c.bounds.push((Bound::Minimum, number(v)?)),
            "maximum" => c.bounds.push((Bound::Maximum, number(v)?)),
            "exclusiveMinimum" => c.bounds.push((Bound::ExclusiveMinimum, number(v)?)),
            "exclusiveMaximum" => c.bounds.push((Bound::ExclusiveMaximum, number(v)?)),
            "enum" | "const" => {
                let values = if key == "enum" {
                    v.as_array()?.as_slice()
                } else {
                    std::slice::from_ref(v)
                };
                narrow(values.iter().map(type_of).fold(0, |a, t| a | t));
                let strings: Option<Vec<Box<str>>> =
                    values.iter().map(|v| v.as_str().map(Into::into)).collect();
                match (strings, &c.strings) {
                    (Some(s), None) => c.strings = Some(s.into()),
                    _ => opaque = true,
                }
            }
            k if ANNOTATIONS.contains(&k) => {}
            _ => opaque = true,
        }
    }
    if opaque {
        // Handed to `jsonschema` whole, for scalars only.
        let types = c.types & listed.unwrap_or(ALL);
        if types & (ARRAY | OBJECT) != 0 {
            return None;
        }
        let validator = jsonschema::options_for::<TapeJson>()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .ok()?;
        return Some(Rule::Scalar(Box::new(validator)));
    }
    if c.strings.is_some() {
        c.types &= STRING;
    }
    for name in &required {
        if !c.properties.iter().any(|(n, _)| **n == **name) {
            c.properties.push(((*name).into(), None));
        }
    }
    if c.properties.len() > 64 {
        return None;
    }
    for name in required {
        if let Some(at) = c.properties.iter().position(|(n, _)| **n == *name) {
            c.required |= 1 << at;
        }
    }
    for (at, (name, _)) in c.properties.iter().enumerate() {
        if !name.bytes().any(|b| STOPS[usize::from(b)]) {
            c.plain |= 1 << at;
        }
    }
    Some(Rule::Checks(Box::new(c)))
}

fn types(v: &Value) -> Option<u8> {
    let one = |name: &Value| match name.as_str()? {
        "null" => Some(NULL),
        "boolean" => Some(BOOLEAN),
        "integer" => Some(INTEGER),
        "number" => Some(NUMBER),
        "string" => Some(STRING),
        "array" => Some(ARRAY),
        "object" => Some(OBJECT),
        _ => None,
    };
    match v {
        Value::Array(names) => names.iter().try_fold(0, |a, n| Some(a | one(n)?)),
        name => one(name),
    }
}

fn type_of(v: &Value) -> u8 {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Number(_) => NUMBER,
        Value::String(_) => STRING,
        Value::Array(_) => ARRAY,
        Value::Object(_) => OBJECT,
    }
}

fn number(v: &Value) -> Option<Num> {
    Num::of(v.as_number()?)
}

/// A number as the parser gives it.
#[derive(Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn of(n: &Number) -> Option<Num> {
        if let Some(u) = n.as_u64() {
            Some(Num::U(u))
        } else if let Some(i) = n.as_i64() {
            Some(Num::I(i))
        } else {
            n.as_f64().map(Num::F)
        }
    }

    /// `self` against `limit`, exactly (an integer past 2^53 is not rounded to a float); `None`
    /// only for a value no JSON number has.
    fn cmp(self, limit: Num) -> Option<Ordering> {
        match (self.integer(), limit.integer()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => self.cmp_fraction(limit),
        }
    }

    /// [`Num::cmp`] when either side is a fraction: out of line, so that the usual integer
    /// comparison does not pay for float conversions the compiler would otherwise speculate.
    #[inline(never)]
    fn cmp_fraction(self, limit: Num) -> Option<Ordering> {
        match (self, limit) {
            (Num::F(a), Num::F(b)) => a.partial_cmp(&b),
            (Num::F(a), b) => against_float(b.integer(), a).map(Ordering::reverse),
            (a, Num::F(b)) => against_float(a.integer(), b),
            (a, b) => Some(a.integer()?.cmp(&b.integer()?)),
        }
    }

    fn integer(self) -> Option<i128> {
        match self {
            Num::U(u) => Some(i128::from(u)),
            Num::I(i) => Some(i128::from(i)),
            Num::F(_) => None,
        }
    }
}

/// An integer against a finite float, exactly.
fn against_float(i: Option<i128>, f: f64) -> Option<Ordering> {
    let i = i?;
    if !f.is_finite() {
        return None;
    }
    // Every integer here is within ±2^64; a float past ±2^100 is beyond all of them, and an
    // integral float within that range converts to `i128` exactly.
    const FAR: f64 = 1.267_650_600_228_229_4e30; // 2^100
    if f >= FAR {
        return Some(Ordering::Less);
    }
    if f <= -FAR {
        return Some(Ordering::Greater);
    }
    let floor = f.floor();
    Some(match i.cmp(&(floor as i128)) {
        Ordering::Equal if f > floor => Ordering::Less,
        o => o,
    })
}

/// String equality for the short names and values schemas list, compared in place (a call to
/// `memcmp` per member name cost more than the comparison).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    while let (Some((x, rest_a)), Some((y, rest_b))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if u64::from_ne_bytes(*x) != u64::from_ne_bytes(*y) {
            return false;
        }
        (a, b) = (rest_a, rest_b);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// The body is not certainly valid: the full path decides.
struct Unsure;

type Checked<T = ()> = Result<T, Unsure>;

/// The bytes that end a string's plain run: the quote, the backslash, and the control
/// characters JSON does not allow unescaped.
static STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        stops[b] = true;
        b += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// Reads one JSON text (RFC 8259, as `serde_json` reads it) by recursive descent, checking
/// each value against its rule as it is read. Written here rather than driven through
/// `serde`'s visitors: a visitor per value cost as much as the parse itself, and this reader is
/// allowed to give up — anything it does not read with certainty (a number with a fraction or
/// out of range is handed to `serde_json`; an unknown byte, a lone surrogate, a control
/// character in a string) makes it [`Unsure`].
struct Scan<'a> {
    text: &'a str,
    at: usize,
    max_depth: usize,
}

impl<'a> Scan<'a> {
    /// The next byte past white space, not consumed.
    #[inline]
    fn peek(&mut self) -> Checked<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Ok(b);
            }
            self.at += 1;
        }
        Err(Unsure)
    }

    /// Whether only white space is left.
    fn at_end(&mut self) -> bool {
        self.peek().is_err()
    }

    /// One value, checked against `rule`; `depth` is the nesting of the container it is in.
    fn value(&mut self, rule: &Rule, depth: usize, order: Option<&mut Order>) -> Checked {
        let c = match rule {
            Rule::Never => return Err(Unsure),
            Rule::Any => None,
            Rule::Checks(c) => Some(&**c),
            Rule::Scalar(v) => return self.scalar(v),
        };
        match self.peek()? {
            b'{' => match order {
                Some(order) => self.object(c, depth + 1, order),
                None => self.object(c, depth + 1, &mut Order::default()),
            },
            b'[' => self.array(c, depth + 1),
            b'"' => check_string(c, &self.string()?),
            b'-' | b'0'..=b'9' => check_number(c, self.number()?),
            b't' => self
                .literal(b"true")
                .and_then(|()| typed(c, BOOLEAN).map(drop)),
            b'f' => self
                .literal(b"false")
                .and_then(|()| typed(c, BOOLEAN).map(drop)),
            b'n' => self
                .literal(b"null")
                .and_then(|()| typed(c, NULL).map(drop)),
            _ => Err(Unsure),
        }
    }

    /// A scalar, checked by the subschema's own `jsonschema` validator (an array or an object
    /// cannot match it).
    fn scalar(&mut self, validator: &jsonschema::Validator<TapeJson>) -> Checked {
        let entry = match self.peek()? {
            b'"' => Entry::Str(match self.string()? {
                Cow::Borrowed(s) => Cow::Borrowed(std::str::from_utf8(s).map_err(|_| Unsure)?),
                Cow::Owned(s) => Cow::Owned(String::from_utf8(s).map_err(|_| Unsure)?),
            }),
            b'-' | b'0'..=b'9' => Entry::Number(match self.number()? {
                Num::U(u) => Number::from(u),
                Num::I(i) => Number::from(i),
                Num::F(f) => Number::from_f64(f).ok_or(Unsure)?,
            }),
            b't' => self.literal(b"true").map(|()| Entry::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Entry::Bool(false))?,
            b'n' => self.literal(b"null").map(|()| Entry::Null)?,
            _ => return Err(Unsure),
        };
        let doc = [entry];
        if validator.is_valid(TapeNode::scalar(&doc)) {
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Checked {
        if self.text.as_bytes()[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// An object at its `{`: each member name read decoded, no name twice, each value checked
    /// against the rule its name selects. `order` holds the names of the array's previous
    /// object, if any, and is left holding this one's.
    fn object(&mut self, c: Option<&Checks>, depth: usize, order: &mut Order) -> Checked {
        if depth > self.max_depth {
            return Err(Unsure);
        }
        let c = typed(c, OBJECT)?;
        let (properties, additional, plain) = match c {
            None => (&[][..], &Rule::Any, 0),
            Some(c) => (&c.properties[..], &c.additional, c.plain),
        };
        self.at += 1;
        let mut seen = 0u64;
        let mut undeclared: Vec<Cow<'a, [u8]>> = Vec::new();
        let mut len = 0u64;
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                if self.peek()? != b'"' {
                    return Err(Unsure);
                }
                // The name the previous object had here is compared in place; any other is
                // read and looked up.
                let expected = order
                    .expected(len)
                    .filter(|&at| plain.checked_shr(at as u32).is_some_and(|p| p & 1 != 0))
                    .and_then(|at| Some((at, properties.get(at)?)));
                let declared = match expected {
                    Some((at, (name, _))) if self.name_is(name.as_bytes()) => Some(at),
                    _ => {
                        let name = self.string()?;
                        let at = properties
                            .iter()
                            .position(|(n, _)| same(n.as_bytes(), &name));
                        if at.is_none() {
                            if matches!(additional, Rule::Never)
                                || undeclared.len() >= MAX_UNDECLARED
                                || undeclared.contains(&name)
                            {
                                return Err(Unsure);
                            }
                            undeclared.push(name);
                        }
                        at
                    }
                };
                if self.peek()? != b':' {
                    return Err(Unsure);
                }
                self.at += 1;
                order.learn(len, declared);
                len += 1;
                let rule = match declared {
                    Some(at) => {
                        let bit = 1 << at;
                        if seen & bit != 0 {
                            return Err(Unsure);
                        }
                        seen |= bit;
                        properties[at].1.as_ref().unwrap_or(additional)
                    }
                    None => additional,
                };
                self.value(rule, depth, None)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Unsure),
                }
            }
        }
        order.finish(len);
        if let Some(c) = c
            && (seen & c.required != c.required || len < c.min_properties || len > c.max_properties)
        {
            return Err(Unsure);
        }
        Ok(())
    }

    /// An array at its `[`.
    fn array(&mut self, c: Option<&Checks>, depth: usize) -> Checked {
        if depth > self.max_depth {
            return Err(Unsure);
        }
        let (items, min, max) = match typed(c, ARRAY)? {
            None => (&Rule::Any, 0, u64::MAX),
            Some(c) => (&c.items, c.min_items, c.max_items),
        };
        self.at += 1;
        let mut len = 0u64;
        let mut order = Order::default();
        if self.peek()? == b']' {
            self.at += 1;
        } else {
            loop {
                self.value(items, depth, Some(&mut order))?;
                len += 1;
                if len > max {
                    return Err(Unsure);
                }
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Unsure),
                }
            }
        }
        if len < min {
            return Err(Unsure);
        }
        Ok(())
    }

    /// Whether the string at the opening quote is `name` written without escapes (a name with
    /// none to write): if it is, it is consumed.
    #[inline(always)]
    fn name_is(&mut self, name: &[u8]) -> bool {
        let start = self.at + 1;
        let end = start + name.len();
        let bytes = self.text.as_bytes();
        if bytes.get(end) == Some(&b'"') && same(&bytes[start..end], name) {
            self.at = end + 1;
            true
        } else {
            false
        }
    }

    /// A string at its opening quote, decoded (UTF-8: the whole body is): borrowed from the
    /// body unless it held escapes.
    #[inline(always)]
    fn string(&mut self) -> Checked<Cow<'a, [u8]>> {
        let bytes = self.text.as_bytes();
        let start = self.at + 1;
        let i = plain_run(bytes, start);
        match bytes.get(i) {
            Some(b'"') => {
                self.at = i + 1;
                Ok(Cow::Borrowed(&bytes[start..i]))
            }
            Some(b'\\') => self.escaped(start, i),
            // A control character, or the end of the body.
            _ => Err(Unsure),
        }
    }

    /// The rest of a string from its first escape at `i`.
    #[cold]
    fn escaped(&mut self, start: usize, mut i: usize) -> Checked<Cow<'a, [u8]>> {
        let bytes = self.text.as_bytes();
        let mut out = String::from(self.text.get(start..i).ok_or(Unsure)?);
        loop {
            match *bytes.get(i).ok_or(Unsure)? {
                b'"' => {
                    self.at = i + 1;
                    return Ok(Cow::Owned(out.into_bytes()));
                }
                b'\\' => {
                    let escape = *bytes.get(i + 1).ok_or(Unsure)?;
                    i += 2;
                    out.push(match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let unit = hex4(bytes, i)?;
                            i += 4;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate: an escaped low one must follow.
                                if bytes.get(i..i + 2) != Some(b"\\u") {
                                    return Err(Unsure);
                                }
                                let low = hex4(bytes, i + 2)?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(Unsure);
                                }
                                i += 6;
                                char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                                    .ok_or(Unsure)?
                            } else {
                                // A lone low surrogate is no character: unsure.
                                char::from_u32(unit).ok_or(Unsure)?
                            }
                        }
                        _ => return Err(Unsure),
                    });
                }
                b if b < 0x20 => return Err(Unsure),
                _ => {
                    let run = i;
                    i = plain_run(bytes, i);
                    out.push_str(self.text.get(run..i).ok_or(Unsure)?);
                }
            }
        }
    }

    /// A number as `serde_json` reads it: an integer that fits `u64` (or, negative, `i64`)
    /// read here; anything else — a fraction, an exponent, `-0`, an integer past those — by
    /// `serde_json` itself from the number's text, so the two paths cannot differ.
    #[inline(always)]
    fn number(&mut self) -> Checked<Num> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut i = start;
        let negative = bytes.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let mut n = 0u64;
        let mut exact = true;
        match bytes.get(i) {
            Some(b'0') => {
                i += 1;
                if bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    return Err(Unsure);
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(&d) = bytes.get(i)
                    && d.is_ascii_digit()
                {
                    match n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d - b'0')))
                    {
                        Some(next) => n = next,
                        None => exact = false,
                    }
                    i += 1;
                }
            }
            _ => return Err(Unsure),
        }
        if bytes.get(i) == Some(&b'.') {
            exact = false;
            i = digits(bytes, i + 1)?;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            exact = false;
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = digits(bytes, i)?;
        }
        self.at = i;
        if exact {
            if !negative {
                return Ok(Num::U(n));
            }
            // As `serde_json`: `-0` and integers below `i64::MIN` are floats.
            let negated = (n as i64).wrapping_neg();
            if negated < 0 {
                return Ok(Num::I(negated));
            }
        }
        other_number(self.text.get(start..i).ok_or(Unsure)?)
    }
}

/// The declared members of the last object read in an array, as indices into its rule's
/// properties: the likeliest names, in order, of the next object's (an array's objects are
/// mostly written alike). The first sixteen are kept.
#[derive(Default)]
struct Order {
    names: [u8; 16],
    len: u8,
}

impl Order {
    /// The property the last object had as its member `at`, if it was a declared one.
    #[inline]
    fn expected(&self, at: u64) -> Option<usize> {
        if at < u64::from(self.len) {
            // Within 16 (`len` is at most 16); `u8::MAX` stands for an undeclared name.
            let index = self.names[at as usize];
            (index != u8::MAX).then_some(usize::from(index))
        } else {
            None
        }
    }

    /// This object's member `at` is the property `declared` (or an undeclared name).
    #[inline]
    fn learn(&mut self, at: u64, declared: Option<usize>) {
        if let Some(slot) = self.names.get_mut(at as usize) {
            // Properties are at most 64, so an index fits a `u8` below `u8::MAX`.
            *slot = declared.map_or(u8::MAX, |d| d as u8);
        }
    }

    /// This object had `members` members.
    #[inline]
    fn finish(&mut self, members: u64) {
        self.len = members.min(16) as u8;
    }
}

/// Where the plain run of a string that starts at `i` ends: its first quote, backslash or
/// control character, or the end of `bytes`. Eight bytes at a time (a string's end is then
/// found in one step for most member names and values, rather than costing a mispredicted
/// branch at the end of a byte loop), the rest byte by byte.
#[inline(always)]
fn plain_run(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set where it is zero (`quote`, `backslash`) or below 0x20 (`x`);
        // the lowest one set is exact (a borrow only reaches the bytes above it).
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | x.wrapping_sub(ONES * 0x20) & !x)
            & HIGH;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while bytes.get(i).is_some_and(|&b| !STOPS[usize::from(b)]) {
        i += 1;
    }
    i
}

/// A number other than a plain integer, read by `serde_json` (out of line: rare in bodies).
#[cold]
fn other_number(text: &str) -> Checked<Num> {
    let n: Number = serde_json::from_str(text).map_err(|_| Unsure)?;
    Num::of(&n).ok_or(Unsure)
}

/// Past one or more digits from `i`.
fn digits(bytes: &[u8], mut i: usize) -> Checked<usize> {
    let first = i;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == first { Err(Unsure) } else { Ok(i) }
}

/// Four hex digits from `i`, as a UTF-16 code unit.
fn hex4(bytes: &[u8], i: usize) -> Checked<u32> {
    let hex = bytes.get(i..i + 4).ok_or(Unsure)?;
    hex.iter().try_fold(0u32, |unit, &h| {
        let d = char::from(h).to_digit(16).ok_or(Unsure)?;
        Ok(unit << 4 | d)
    })
}

/// The rule's checks when a value of `kind` may match it; `None` for a rule that takes any value.
#[inline]
fn typed(c: Option<&Checks>, kind: u8) -> Checked<Option<&Checks>> {
    match c {
        Some(c) if c.types & kind == 0 => Err(Unsure),
        c => Ok(c),
    }
}

fn check_number(c: Option<&Checks>, n: Num) -> Checked {
    // A fraction where only integers are allowed may still be one (`1.0`): unsure.
    let kind = if matches!(n, Num::F(_)) {
        NUMBER
    } else {
        INTEGER | NUMBER
    };
    let Some(c) = typed(c, kind)? else {
        return Ok(());
    };
    for (bound, limit) in &c.bounds {
        let ord = n.cmp(*limit).ok_or(Unsure)?;
        let within = match bound {
            Bound::Minimum => ord != Ordering::Less,
            Bound::Maximum => ord != Ordering::Greater,
            Bound::ExclusiveMinimum => ord == Ordering::Greater,
            Bound::ExclusiveMaximum => ord == Ordering::Less,
        };
        if !within {
            return Err(Unsure);
        }
    }
    Ok(())
}

fn check_string(c: Option<&Checks>, s: &[u8]) -> Checked {
    let Some(c) = typed(c, STRING)? else {
        return Ok(());
    };
    if let Some(allowed) = &c.strings
        && !allowed.iter().any(|a| same(a.as_bytes(), s))
    {
        return Err(Unsure);
    }
    if c.min_length > 0 || c.max_length < u64::MAX {
        // Code points, not bytes; a string no longer in bytes than the maximum is short
        // enough without counting.
        let bytes = s.len() as u64;
        let length = if c.min_length == 0 && bytes <= c.max_length {
            0
        } else {
            // Every byte that does not continue a character starts one.
            s.iter().filter(|&&b| (b as i8) >= -0x40).count() as u64
        };
        if length < c.min_length || length > c.max_length {
            return Err(Unsure);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::tape::Tape;
    use super::*;

    /// The benchmark's order schema (bench/order.schema.json).
    fn orders() -> Value {
        serde_json::from_str(include_str!("../../../../bench/order.schema.json"))
            .expect("bench/order.schema.json")
    }

    /// Every keyword a plan reads, several at once, and subschemas it hands to `jsonschema`.
    fn zoo() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "every keyword", "description": "annotations change nothing",
            "type": ["object", "array", "string", "number", "null"],
            "properties": {
                "a": { "type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10 },
                "b": { "type": "string", "minLength": 2, "maxLength": 3 },
                "c": { "const": "x" },
                "d": { "type": "array", "items": { "type": "boolean" }, "minItems": 1, "maxItems": 2 },
                "e": false,
                "f": { "enum": [1, "x", null] },
                "g": { "type": "string", "pattern": "^[a-z]+$" },
                "h": { "type": "object", "properties": { "a": { "type": "null" } }, "required": ["a"] }
            },
            "required": ["a", "z"],
            "additionalProperties": { "type": "number", "maximum": 1.5 },
            "minProperties": 2, "maxProperties": 4,
            "items": { "type": ["string", "integer"], "minimum": -2, "maxLength": 1 },
            "minLength": 1,
            "minimum": 0.5
        })
    }

    /// A subschema with keywords a plan hands over (`anyOf`, `format`) that may match an array
    /// (`prefixItems`): no plan.
    fn wide() -> Value {
        json!({ "type": "array", "items": { "anyOf": [{ "type": "string", "format": "date" }, { "type": "boolean" }] },
          "prefixItems": [] })
    }

    /// Bounds at the edges of what a number can hold.
    fn limits() -> Value {
        json!({ "type": "array", "items": { "type": "integer",
          "maximum": 18446744073709551615u64, "minimum": -9223372036854775808i64,
          "exclusiveMaximum": 1e19 } })
    }

    /// The full path's verdict: a tape, then `jsonschema` over it.
    fn full(schema: &Value, body: &str, max_depth: usize) -> bool {
        let v = jsonschema::options_for::<TapeJson>()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .expect("schema");
        Tape::parse(body.as_bytes(), max_depth).is_ok_and(|t| v.is_valid(t.root()))
    }

    #[test]
    fn plans_are_made_for_the_keywords_they_read_and_only_those() {
        assert!(Plan::new(&orders()).is_some());
        assert!(Plan::new(&zoo()).is_some());
        assert!(Plan::new(&limits()).is_some());
        let demo: Value = serde_json::from_str(include_str!(
            "../../../../examples/demo/gateway/order.schema.json"
        ))
        .expect("demo schema");
        assert!(Plan::new(&demo).is_some(), "the demo's schema has a plan");
        assert!(Plan::new(&json!({ "type": "string", "format": "date" })).is_some());
        assert!(Plan::new(&json!({ "enum": [1, 2] })).is_some());
        assert!(Plan::new(&json!(true)).is_some());
        for none in [
            json!({ "$ref": "#/$defs/a", "$defs": { "a": true } }),
            json!({ "properties": { "a": { "$ref": "#" } } }),
            json!({ "properties": { "$ref": { "type": "string" } } }),
            json!({ "$schema": "http://json-schema.org/draft-07/schema#" }),
            json!({ "type": "object", "patternProperties": { "^a": true } }),
            json!({ "anyOf": [{ "type": "string" }, { "type": "array" }] }),
            json!({ "items": { "uniqueItems": true } }),
            json!({ "type": "array", "prefixItems": [true] }),
            json!({ "enum": [[1], "a"] }),
            json!({ "minLength": 1.5 }),
            wide(),
        ] {
            assert!(Plan::new(&none).is_none(), "{none}");
        }
        let many: serde_json::Map<String, Value> =
            (0..65).map(|i| (format!("p{i}"), json!(true))).collect();
        assert!(Plan::new(&json!({ "properties": many })).is_none());
    }

    #[test]
    fn what_a_plan_reads_it_accepts_and_the_full_path_agrees() {
        let body = |orders: &str| format!(r#"{{"orders":[{orders}]}}"#);
        let order = r#"{"id":0,"item":"widget-000","quantity":10,"status":"shipped"}"#;
        let plan = Plan::new(&orders()).expect("plan");
        for text in [
            body(""),
            body(order),
            body(&[order; 100].join(",")),
            // At the bounds: 40 code points of two bytes each, quantity 1 and 10.
            body(&format!(
                r#"{{"status":"pending","quantity":1,"item":"{}","id":18446744073709551615}}"#,
                "é".repeat(40)
            )),
            // Escaped names and values are compared decoded.
            body(r#"{"\u0069d":1,"item":"\"w\"","quantity":2,"status":"p\u0065nding"}"#),
            format!(" \n{}\t", body(order)),
        ] {
            assert!(plan.accepts(text.as_bytes(), 32), "{text}");
            assert!(full(&orders(), &text, 32), "{text}");
        }
        let zoo_plan = Plan::new(&zoo()).expect("plan");
        for text in [
            r#"{"a":9,"z":1.5}"#,
            r#"{"a":1,"b":"éé","z":-3,"f":null}"#,
            r#"{"a":5,"g":"abc","z":0,"c":"x"}"#,
            r#"{"a":5,"d":[true,false],"z":1,"h":{"a":null,"b":[]}}"#,
            r#"["a",-2,"",7]"#,
            r#"1"#,
            r#"0.5"#,
            r#"null"#,
            r#""é""#,
        ] {
            assert!(zoo_plan.accepts(text.as_bytes(), 32), "{text}");
            assert!(full(&zoo(), text, 32), "{text}");
        }
        // Integers compare exactly with bounds of either kind, whatever their size.
        let limits_plan = Plan::new(&limits()).expect("plan");
        let text = "[9007199254740992,-9223372036854775808,0]";
        assert!(limits_plan.accepts(text.as_bytes(), 32));
        assert!(full(&limits(), text, 32));
        let text = "[9999999999999999999]";
        assert!(limits_plan.accepts(text.as_bytes(), 32));
        assert!(full(&limits(), text, 32));
        assert!(!limits_plan.accepts(b"[10000000000000000000]", 32));
        assert!(!full(&limits(), "[10000000000000000000]", 32));
        assert!(!full(&limits(), "[18446744073709551615]", 32));
    }

    #[test]
    fn a_plan_refuses_what_the_full_path_refuses_and_leaves_doubts_to_it() {
        let plan = Plan::new(&orders()).expect("plan");
        let order = r#"{"id":0,"item":"w","quantity":10,"status":"shipped"}"#;
        for (text, valid) in [
            // Invalid: the full path names why.
            (
                r#"{"orders":[{"id":0,"item":"w","quantity":11,"status":"shipped"}]}"#,
                false,
            ),
            (
                r#"{"orders":[{"id":0,"item":"w","quantity":1,"status":"lost"}]}"#,
                false,
            ),
            (
                r#"{"orders":[{"id":0,"item":"w","status":"shipped"}]}"#,
                false,
            ),
            (
                r#"{"orders":[{"id":0,"item":"w","quantity":1,"status":"shipped","x":1}]}"#,
                false,
            ),
            (
                &format!(
                    r#"{{"orders":[{{"id":0,"item":"{}","quantity":1,"status":"shipped"}}]}}"#,
                    "é".repeat(41)
                ),
                false,
            ),
            (
                &format!(r#"{{"orders":[{}]}}"#, [order; 101].join(",")),
                false,
            ),
            (r#"{"orders":[],"orders":[]}"#, false),
            (
                r#"{"orders":[{"id":0,"item":"w","quantity":1,"status":"shipped","\u0069d":1}]}"#,
                false,
            ),
            (r#"{"orders":[]} x"#, false),
            (r#"{"orders":[]"#, false),
            ("{\"orders\":[\"\u{0}\"]}", false),
            // Valid, but not certain here: an integer written as a fraction.
            (
                r#"{"orders":[{"id":0,"item":"w","quantity":1.0,"status":"shipped"}]}"#,
                true,
            ),
        ] {
            assert!(!plan.accepts(text.as_bytes(), 32), "{text}");
            assert_eq!(full(&orders(), text, 32), valid, "{text}");
        }
        assert!(!plan.accepts(b"{\"orders\":[\"\xff\"]}", 32));
        // Depth, as the full path counts it: the order objects are at depth 3.
        let text = body_of(order);
        assert!(plan.accepts(text.as_bytes(), 3));
        assert!(!plan.accepts(text.as_bytes(), 2));
        assert!(!full(&orders(), &text, 2));
        // A schema that allows anything still refuses repeated names and depth.
        let any = Plan::new(&json!({})).expect("plan");
        assert!(any.accepts(br#"{"a":{"b":[1,{"c":2}]},"d":"e"}"#, 32));
        assert!(!any.accepts(br#"{"a":{"b":1,"b":2}}"#, 32));
        assert!(!any.accepts(b"[[[[1]]]]", 3));
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!("{{{}}}", many.join(","));
        assert!(
            !any.accepts(text.as_bytes(), 32),
            "past {MAX_UNDECLARED} names: the full path"
        );
        assert!(full(&json!({}), &text, 32));
    }

    #[test]
    fn numbers_compare_exactly_whatever_their_kinds() {
        use Ordering::{Equal, Greater, Less};
        let two53 = 9_007_199_254_740_992u64;
        for (a, b, want) in [
            (Num::U(two53 + 1), Num::F(two53 as f64), Greater),
            (Num::U(two53), Num::F(two53 as f64), Equal),
            (Num::U(u64::MAX), Num::F(1.8446744073709552e19), Less),
            (Num::I(i64::MIN), Num::F(-(2f64.powi(63))), Equal),
            (Num::I(-1), Num::F(-0.5), Less),
            (Num::U(0), Num::F(-0.0), Equal),
            (Num::U(1), Num::F(0.999_999_999_999_999_9), Greater),
            (Num::U(1), Num::F(1.0), Equal),
            (Num::U(1), Num::F(1e300), Less),
            (Num::I(-1), Num::F(-1e300), Greater),
            (Num::F(1.5), Num::U(1), Greater),
            (Num::F(0.5), Num::F(0.5), Equal),
            (Num::I(-2), Num::U(1), Less),
        ] {
            assert_eq!(a.cmp(b), Some(want), "{:?} {:?}", a.integer(), b.integer());
        }
        assert!(same(b"quantity", b"quantity"));
        assert!(!same(b"quantity", b"quantitx"));
        assert!(!same(b"a-long-member-name", b"a-long-member-namf"));
        assert!(!same("é".as_bytes(), b"e"));
        assert!(same(b"", b""));
    }

    /// An array's objects are read expecting the names of the one before, in its order: what
    /// differs — another order, a longer or shorter name, an escaped spelling, a name twice,
    /// a name that needs escapes, the body's end — is read as before.
    #[test]
    fn names_expected_from_the_previous_object_are_only_a_guess() {
        let plan = Plan::new(&orders()).expect("plan");
        let first = r#"{"id":0,"item":"w","quantity":1,"status":"shipped"}"#;
        for (second, valid) in [
            (
                r#"{"status":"shipped","quantity":1,"item":"w","id":0}"#,
                true,
            ),
            (
                r#"{"\u0069d":0,"item":"w","quantity":1,"status":"shipped"}"#,
                true,
            ),
            (
                r#"{"idx":0,"item":"w","quantity":1,"status":"shipped"}"#,
                false,
            ),
            (
                r#"{"i":0,"item":"w","quantity":1,"status":"shipped"}"#,
                false,
            ),
            (r#"{"id":0,"id":0,"quantity":1,"status":"shipped"}"#, false),
            (
                r#"{"id":0,"item":"w","quantity":1,"status":"shipped","id":1}"#,
                false,
            ),
            (r#"{"id":0,"item":"w","quantity":1}"#, false),
            (
                r#"{"id":0,"item":"w","quantity":1,"status":"shipped","x":1}"#,
                false,
            ),
        ] {
            let text = format!(r#"{{"orders":[{first},{second},{first}]}}"#);
            assert_eq!(plan.accepts(text.as_bytes(), 32), valid, "{text}");
            assert_eq!(full(&orders(), &text, 32), valid, "{text}");
        }
        for cut in [r#"{"orders":[{first},{"id"#, r#"{"orders":[{first},{"id""#] {
            let text = cut.replace("{first}", first);
            assert!(!plan.accepts(text.as_bytes(), 32), "{text}");
        }
        // Names a body must escape are never compared in place.
        let odd = json!({ "type": "array", "items": { "type": "object",
            "properties": { "a\"b": { "type": "integer" }, "c\\d": { "type": "integer" } },
            "additionalProperties": false } });
        let plan = Plan::new(&odd).expect("plan");
        for (text, valid) in [
            (r#"[{"a\"b":1,"c\\d":2},{"a\"b":3,"c\\d":4}]"#, true),
            (r#"[{"a\"b":1},{"a"b":1}]"#, false),
            (r#"[{"a\"b":"x"},{"a\"b":1}]"#, false),
        ] {
            assert_eq!(plan.accepts(text.as_bytes(), 32), valid, "{text}");
            assert_eq!(full(&odd, text, 32), valid, "{text}");
        }
    }

    fn body_of(order: &str) -> String {
        format!(r#"{{"orders":[{order}]}}"#)
    }

    /// A JSON document as text is written: names may repeat, strings may be escaped.
    #[derive(Clone, Debug)]
    enum Doc {
        Null,
        Bool(bool),
        Int(i64),
        Big(u64),
        Float(f64),
        Str(String, bool),
        Arr(Vec<Doc>),
        Obj(Vec<((String, bool), Doc)>),
    }

    fn write_str(s: &str, escape: bool, out: &mut String) {
        out.push('"');
        for (i, ch) in s.chars().enumerate() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 || (escape && i == 0) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn write(d: &Doc, out: &mut String) {
        match d {
            Doc::Null => out.push_str("null"),
            Doc::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Doc::Int(i) => out.push_str(&i.to_string()),
            Doc::Big(u) => out.push_str(&u.to_string()),
            Doc::Float(f) => out.push_str(&format!("{f:?}")),
            Doc::Str(s, e) => write_str(s, *e, out),
            Doc::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            Doc::Obj(members) => {
                out.push('{');
                for (i, ((name, e), value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(name, *e, out);
                    out.push(':');
                    write(value, out);
                }
                out.push('}');
            }
        }
    }

    /// Names and strings that schemas here care about, and others.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "a", "b", "c", "d", "e", "f", "g", "h", "z", "x", "orders", "id", "item",
                "quantity", "status", "pending", "shipped", "approved", "", "éé", "2026-12-07",
            ])
            .prop_map(str::to_owned),
            1 => "[a-zé😀\"\\\\\n]{0,5}",
        ]
    }

    fn doc() -> impl Strategy<Value = Doc> {
        let leaf = prop_oneof![
            Just(Doc::Null),
            any::<bool>().prop_map(Doc::Bool),
            (-3i64..12).prop_map(Doc::Int),
            any::<i64>().prop_map(Doc::Int),
            prop::sample::select(vec![
                u64::MAX,
                1 << 53,
                (1 << 53) + 1,
                10_000_000_000_000_000_000
            ])
            .prop_map(Doc::Big),
            prop::sample::select(vec![0.5, 1.0, 1.5, 10.0, -0.0, 9.999, 1e19, 1e300, -2.0])
                .prop_map(Doc::Float),
            (text(), any::<bool>()).prop_map(|(s, e)| Doc::Str(s, e)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Doc::Arr),
                prop::collection::vec(((text(), any::<bool>()), inner), 0..6).prop_map(Doc::Obj),
            ]
        })
    }

    /// Order bodies near the schema's edges: mostly the right names, values on either side.
    fn order_doc() -> impl Strategy<Value = Doc> {
        let value = prop_oneof![
            prop::sample::select(vec![0i64, 1, 5, 10, 11, -1]).prop_map(Doc::Int),
            Just(Doc::Big(u64::MAX)),
            prop::sample::select(vec![1.0, 1.5, 10.0]).prop_map(Doc::Float),
            prop::sample::select(vec![
                "pending",
                "lost",
                "w",
                "éééééééééééééééééééééééééééééééééééééééé",
                "ééééééééééééééééééééééééééééééééééééééééé"
            ])
            .prop_map(|s| Doc::Str(s.to_owned(), false)),
            Just(Doc::Null),
        ];
        let name = prop_oneof![
            8 => prop::sample::select(vec!["id", "item", "quantity", "status"]).prop_map(str::to_owned),
            1 => text(),
        ];
        let order = prop::collection::vec(((name, any::<bool>()), value), 2..6).prop_map(Doc::Obj);
        prop::collection::vec(order, 0..4)
            .prop_map(|orders| Doc::Obj(vec![(("orders".to_owned(), false), Doc::Arr(orders))]))
    }

    /// A generated document's text with a few edits — a fragment inserted or put in place of
    /// a character, or a character removed — so that most results are not JSON, or only just.
    fn near_json() -> impl Strategy<Value = String> {
        let fragment = prop::sample::select(vec![
            "\"",
            "\\",
            "\\u",
            "\\ud800",
            "\\udc00",
            "\\ud800\\u0041",
            "\\u00E9",
            "\\x",
            ",",
            ":",
            "{",
            "}",
            "[",
            "]",
            "-",
            "0",
            "01",
            "-0",
            ".",
            "e",
            "E+",
            "1e400",
            "1.",
            ".5",
            "+1",
            "NaN",
            "tru",
            "nul",
            "falsey",
            " ",
            "\u{1}",
            "\u{7f}",
            "\t",
            "\u{c}",
            "\u{a0}",
            "\u{feff}",
            "é",
            "😀",
            "//",
            "/*",
        ]);
        let edit = (any::<prop::sample::Index>(), 0u8..3, fragment);
        (doc(), prop::collection::vec(edit, 1..4)).prop_map(|(d, edits)| {
            let mut text = String::new();
            write(&d, &mut text);
            for (at, kind, fragment) in edits {
                let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
                let i = if bounds.is_empty() {
                    0
                } else {
                    bounds[at.index(bounds.len())]
                };
                let next = text[i..].chars().next().map_or(i, |c| i + c.len_utf8());
                match kind {
                    0 => text.insert_str(i, fragment),
                    1 => text.replace_range(i..next, fragment),
                    _ => text.replace_range(i..next, ""),
                }
            }
            text
        })
    }

    fn agree(schema: &Value, d: &Doc, max_depth: usize) -> Result<(), TestCaseError> {
        let plan = Plan::new(schema).expect("plan");
        let mut text = String::new();
        write(d, &mut text);
        if plan.accepts(text.as_bytes(), max_depth) {
            prop_assert!(
                full(schema, &text, max_depth),
                "the plan accepted what the full path refuses: {text}"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_plan_never_accepts_what_the_full_path_refuses(d in doc(), deep in any::<bool>()) {
            let depth = if deep { 32 } else { 2 };
            for schema in [zoo(), limits(), json!({}), json!({ "type": "string", "format": "date" })] {
                agree(&schema, &d, depth)?;
            }
        }

        /// The reader is written here, not `serde_json`: whatever it accepts must be JSON
        /// `serde_json` reads, and valid where the full path decides.
        #[test]
        fn a_plan_accepts_only_json(text in near_json()) {
            let any = Plan::new(&json!({})).expect("plan");
            if any.accepts(text.as_bytes(), 32) {
                prop_assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok(),
                    "the plan read as JSON what serde_json does not: {text:?}"
                );
            }
            for schema in [zoo(), limits(), orders()] {
                let plan = Plan::new(&schema).expect("plan");
                if plan.accepts(text.as_bytes(), 32) {
                    prop_assert!(full(&schema, &text, 32), "the plan accepted what the full path refuses: {text:?}");
                }
            }
        }

        #[test]
        fn order_bodies_near_the_edges_agree(d in order_doc()) {
            agree(&orders(), &d, 32)?;
        }
    }
}
