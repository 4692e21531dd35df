//! JSON with unique member names, for JOSE headers and claims sets.
//!
//! `serde_json` keeps the last of two members with one name; another parser (a backend's, a
//! library's) may keep the first. A token whose `sub` or `groups` means one thing to us and
//! another to the next reader is refused instead (RFC 7515 §5.2 and RFC 7519 §4 allow it),
//! at every depth.

use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` as JSON, refusing any object that names a member twice.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The message of the error for a repeated member (the rest names the member).
const REPEATED: &str = "repeated JSON member";

/// Whether `from_slice` failed because an object named a member twice.
pub fn is_repeated_member(e: &serde_json::Error) -> bool {
    e.to_string().starts_with(REPEATED)
}

/// A seed that builds a [`Value`] and fails on a repeated member name.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(Strict)?;
            if members.contains_key(&name) {
                return Err(A::Error::custom(format_args!("{REPEATED} {name:?}")));
            }
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_members_parse_like_serde_json() {
        let text = r#"{"sub":"a","groups":["x","y"],"n":1,"f":1.5,"t":true,"z":null,"o":{"k":-2}}"#;
        assert_eq!(
            from_slice(text.as_bytes()).expect("parses"),
            serde_json::from_str::<Value>(text).expect("parses")
        );
    }

    #[test]
    fn a_repeated_member_at_any_depth_is_refused() {
        for text in [
            r#"{"sub":"alice","sub":"admin"}"#,
            r#"{"groups":["user"],"x":1,"groups":["admin"]}"#,
            r#"{"address":{"country":"a","country":"b"}}"#,
            r#"{"list":[{"k":1,"k":2}]}"#,
            r#"{"s\u0075b":"a","sub":"b"}"#,
        ] {
            let e = from_slice(text.as_bytes()).expect_err(text);
            assert!(is_repeated_member(&e), "{text}: {e}");
        }
        let e = from_slice(br#"{"a":1} {"a":2}"#).expect_err("trailing data");
        assert!(!is_repeated_member(&e));
    }
}
