//! The types of scalar settings: how each is read from the file, from an environment variable
//! or from its default, and how `config reference` and error messages name it.
//!
//! A value in the file must have its TOML type (`max_connections = "ten"` is an error, not a
//! string to parse); an environment variable is text, so the same setting also parses from
//! text. [`Set`] tells the two apart by the span the value carries: overrides are inserted
//! into the document with spans past the end of any file (see [`ENV_SPANS`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_store::SqliteSync;
use portcullis_token::Algorithm;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// Spans from here on belong to environment overrides, not to the file.
pub(crate) const ENV_SPANS: usize = usize::MAX / 2;

/// A setting's type.
pub trait Setting: Sized {
    /// What `config reference` and error messages call it ("an integer from 1 to 1000").
    fn kind() -> String;
    /// From text: an environment variable, a default, or a TOML string.
    fn parse(text: &str) -> Result<Self, String>;
    /// From a value in the file. By default only a TOML string is accepted.
    fn from_toml(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s) => Self::parse(&s),
            other => Err(expected::<Self>(&other)),
        }
    }
}

/// "expected an integer from 1 to 1000, found a string".
pub(crate) fn expected<T: Setting>(found: &Raw) -> String {
    format!("expected {}, found {}", T::kind(), found.type_name())
}

/// A value from the file, whatever its type.
#[derive(Clone, Debug)]
pub enum Raw {
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    Array(Vec<Raw>),
    Table(BTreeMap<String, Raw>),
}

impl Raw {
    fn type_name(&self) -> &'static str {
        match self {
            Raw::Str(_) => "a string",
            Raw::Int(_) => "an integer",
            Raw::Float => "a float",
            Raw::Bool(_) => "a boolean",
            Raw::Array(_) => "an array",
            // toml hands a date-time over as a one-key table with a private key.
            Raw::Table(t) if t.keys().any(|k| k.contains("datetime")) => "a date-time",
            Raw::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                i64::try_from(v)
                    .map(Raw::Int)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Raw, E> {
                Ok(Raw::Float)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Raw::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut table = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Raw>()? {
                    table.insert(k, v);
                }
                Ok(Raw::Table(table))
            }
        }
        d.deserialize_any(RawVisitor)
    }
}

/// A setting's value and where it came from (`None`: its default).
#[derive(Clone, Debug)]
pub struct Set<T> {
    pub value: T,
    pub span: Option<Range<usize>>,
}

impl<T: Setting> Set<T> {
    /// The default, written as an environment variable would be. A test parses every one.
    pub(crate) fn default_from(text: &str) -> Self {
        match T::parse(text) {
            Ok(value) => Set { value, span: None },
            Err(e) => panic!("the default {text:?} does not parse: {e}"),
        }
    }
}

impl<'de, T: Setting> Deserialize<'de> for Set<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Raw>::deserialize(d)?;
        let span = spanned.span();
        let value = match spanned.into_inner() {
            Raw::Str(text) if span.start >= ENV_SPANS => T::parse(&text),
            raw => T::from_toml(raw),
        };
        value
            .map(|value| Set {
                value,
                span: Some(span),
            })
            .map_err(de::Error::custom)
    }
}

fn no_nul(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        Err("must not contain NUL".into())
    } else {
        Ok(())
    }
}

impl Setting for String {
    fn kind() -> String {
        "a string".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        no_nul(text)?;
        Ok(text.to_owned())
    }
}

/// A file or directory path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePath(pub PathBuf);

impl Setting for FilePath {
    fn kind() -> String {
        "a file path (string)".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        no_nul(text)?;
        Ok(FilePath(PathBuf::from(text)))
    }
}

/// An optional setting: the empty string (the default) means none.
impl<T: Setting> Setting for Option<T> {
    fn kind() -> String {
        T::kind()
    }
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            Ok(None)
        } else {
            T::parse(text).map(Some)
        }
    }
    fn from_toml(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s) if s.is_empty() => Ok(None),
            raw => T::from_toml(raw).map(Some),
        }
    }
}

impl Setting for SocketAddr {
    fn kind() -> String {
        "an IP address and port such as \"127.0.0.1:8080\"".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("{text:?} is not {}", Self::kind()))
    }
}

impl Setting for bool {
    fn kind() -> String {
        "true or false".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("{text:?} is not {}", Self::kind())),
        }
    }
    fn from_toml(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Bool(b) => Ok(b),
            other => Err(expected::<Self>(&other)),
        }
    }
}

/// An integer from `MIN` to `MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Int<const MIN: i64, const MAX: i64>(pub i64);

impl<const MIN: i64, const MAX: i64> Int<MIN, MAX> {
    fn checked(n: i64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&n) {
            Ok(Int(n))
        } else {
            Err(format!("{n} is out of range: expected {}", Self::kind()))
        }
    }

    /// The value as another integer type (always in range: `MIN..=MAX` fit the field).
    pub fn get<U: TryFrom<i64> + Default>(self) -> U {
        U::try_from(self.0).unwrap_or_default()
    }
}

impl<const MIN: i64, const MAX: i64> Setting for Int<MIN, MAX> {
    fn kind() -> String {
        format!("an integer from {MIN} to {MAX}")
    }
    fn parse(text: &str) -> Result<Self, String> {
        let n = text
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{text:?} is not {}", Self::kind()))?;
        Self::checked(n)
    }
    fn from_toml(raw: Raw) -> Result<Self, String> {
        match raw {
            Raw::Int(n) => Self::checked(n),
            other => Err(expected::<Self>(&other)),
        }
    }
}

/// A duration from `MIN_MS` to `MAX_MS` milliseconds, written as "5s", "250ms" or "1h 30m".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur<const MIN_MS: u64, const MAX_MS: u64>(pub Duration);

/// A lifetime with no bounds of its own (the provider checks client lifetimes).
pub type Lifetime = Dur<0, { u64::MAX }>;

impl<const MIN_MS: u64, const MAX_MS: u64> Dur<MIN_MS, MAX_MS> {
    /// Whole seconds, as the provider and the store count them.
    pub fn secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> Setting for Dur<MIN_MS, MAX_MS> {
    fn kind() -> String {
        "a duration such as \"5s\" or \"250ms\"".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(text)
            .map_err(|_| format!("{text:?} is not {}", Self::kind()))?;
        let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
        if d < min || d > max {
            return Err(format!(
                "{text} is out of range: expected between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(Dur(d))
    }
}

/// An http(s) URL without query or fragment; a trailing `/` is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(pub String);

impl Setting for HttpUrl {
    fn kind() -> String {
        "an http(s) URL".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        match url::Url::parse(text) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                Ok(HttpUrl(text.trim_end_matches('/').to_owned()))
            }
            _ => Err(format!(
                "{text:?} is not {} (no query or fragment)",
                Self::kind()
            )),
        }
    }
}

/// A CSS hex colour such as "#1d4ed8".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Colour(pub String);

impl Setting for Colour {
    fn kind() -> String {
        "a hex colour such as \"#1d4ed8\"".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        let hex = text.strip_prefix('#').unwrap_or("");
        if matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Colour(text.to_owned()))
        } else {
            Err(format!("{text:?} is not {}", Self::kind()))
        }
    }
}

/// Group → scopes, such as `admin = ["orders/admin"]`; from the environment, as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupScopes(pub BTreeMap<String, Vec<String>>);

impl Setting for GroupScopes {
    fn kind() -> String {
        "a table of string arrays".into()
    }
    fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text)
            .map(GroupScopes)
            .map_err(|e| format!("expected a JSON object of string arrays: {e}"))
    }
    fn from_toml(raw: Raw) -> Result<Self, String> {
        let Raw::Table(table) = raw else {
            return Err(expected::<Self>(&raw));
        };
        let mut map = BTreeMap::new();
        for (group, value) in table {
            let Raw::Array(items) = value else {
                return Err(format!("`{group}` must be an array of strings"));
            };
            let mut list = Vec::new();
            for item in items {
                match item {
                    Raw::Str(s) => list.push(s),
                    other => {
                        return Err(format!(
                            "`{group}` must hold strings, found {}",
                            other.type_name()
                        ));
                    }
                }
            }
            map.insert(group, list);
        }
        Ok(GroupScopes(map))
    }
}

/// One of a fixed set of names.
pub trait Choice: Sized + Copy + 'static {
    const CHOICES: &'static [(&'static str, Self)];
}

/// A setting that is one of a [`Choice`]'s names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OneOf<C>(pub C);

impl<C: Choice> Setting for OneOf<C> {
    fn kind() -> String {
        let names: Vec<&str> = C::CHOICES.iter().map(|(n, _)| *n).collect();
        format!("one of {}", names.join(", "))
    }
    fn parse(text: &str) -> Result<Self, String> {
        C::CHOICES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, c)| OneOf(*c))
            .ok_or_else(|| format!("{text:?} is not {}", Self::kind()))
    }
}

impl Choice for SqliteSync {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("normal", SqliteSync::Normal), ("full", SqliteSync::Full)];
}

impl Choice for crate::acme::ChallengeKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("tls-alpn-01", crate::acme::ChallengeKind::TlsAlpn01),
        ("http-01", crate::acme::ChallengeKind::Http01),
    ];
}

impl Choice for portcullis_idp::SignupMode {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("closed", portcullis_idp::SignupMode::Closed),
        ("open", portcullis_idp::SignupMode::Open),
        ("domains", portcullis_idp::SignupMode::Domains),
        ("invite", portcullis_idp::SignupMode::Invite),
    ];
}

impl Choice for crate::mail::TransportKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("none", crate::mail::TransportKind::None),
        ("smtp", crate::mail::TransportKind::Smtp),
        ("directory", crate::mail::TransportKind::Directory),
    ];
}

impl Choice for crate::mail::SmtpTls {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("starttls", crate::mail::SmtpTls::Starttls),
        ("tls", crate::mail::SmtpTls::Tls),
        ("none", crate::mail::SmtpTls::None),
    ];
}

/// The algorithms access tokens may be signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessAlg(pub Algorithm);

impl Choice for AccessAlg {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("ES256", AccessAlg(Algorithm::ES256)),
        ("RS256", AccessAlg(Algorithm::RS256)),
        ("EdDSA", AccessAlg(Algorithm::EdDSA)),
    ];
}

/// The algorithms ID tokens may be signed with (relying parties must support RS256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdAlg(pub Algorithm);

impl Choice for IdAlg {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("RS256", IdAlg(Algorithm::RS256)),
        ("ES256", IdAlg(Algorithm::ES256)),
    ];
}

/// Documentation of one key, for `config reference`.
#[derive(Debug)]
pub struct KeyDoc {
    pub path: &'static str,
    pub kind: fn() -> String,
    /// The default as the reference shows it.
    pub default: &'static str,
    /// The doc comment's lines.
    pub doc: &'static [&'static str],
}

impl KeyDoc {
    /// `PORTCULLIS_` and the path in capitals, dots as underscores.
    pub fn env(&self) -> String {
        format!(
            "PORTCULLIS_{}",
            self.path.to_ascii_uppercase().replace('.', "_")
        )
    }

    pub fn description(&self) -> String {
        self.doc
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The section the key is in (`""` at the top).
    pub fn section(&self) -> &'static str {
        self.path.rsplit_once('.').map_or("", |(s, _)| s)
    }
}
