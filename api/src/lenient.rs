//! Vault's lenient input typing for serde: `vault write` and `gatepass write`
//! send every `key=value` as a JSON string, and Vault's API takes a string
//! wherever a number, a boolean, a duration or a list is expected. These
//! `deserialize_with` helpers accept both forms and reject anything else
//! with a message that names the value and what was expected. The server's
//! generic field reader uses the same spellings ([`parse_bool`],
//! [`split_list`]), so every endpoint reads input the same way.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Spec {
//!     #[serde(default, deserialize_with = "gatepass_api::lenient::opt_int")]
//!     num_uses: Option<i64>,
//!     #[serde(default, deserialize_with = "gatepass_api::lenient::list")]
//!     principals: Vec<String>,
//! }
//! let s: Spec = serde_json::from_str(r#"{"num_uses":"10","principals":"a, b"}"#).unwrap();
//! assert_eq!((s.num_uses, s.principals), (Some(10), vec!["a".into(), "b".into()]));
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};

/// A boolean as Vault reads it from text (Go's `strconv.ParseBool`).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Some(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A list given as comma-separated text: items trimmed, empty items dropped
/// (so `""` is the empty list).
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// A whole number, or a string holding one (`10`, `"10"`).
pub fn int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64> + FromStr,
{
    d.deserialize_any(IntVisitor(PhantomData))
}

/// [`int`] for an optional field; null is absent.
pub fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64> + FromStr,
{
    d.deserialize_option(OptVisitor(IntVisitor(PhantomData)))
}

/// A boolean, a string Vault reads as one (`"true"`, `"1"`, `"f"`, …), or
/// the number 0 or 1.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(BoolVisitor)
}

/// [`bool`] for an optional field; null is absent.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    d.deserialize_option(OptVisitor(BoolVisitor))
}

/// A list of strings, or comma-separated text (`["a","b"]`, `"a,b"`).
/// Null is the empty list.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(ListVisitor)
}

/// Text that may come as a number, such as a duration (`"1h"`, `"3600"`,
/// `3600`): the number is kept as its decimal text. Null is absent.
pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_option(OptVisitor(TextVisitor))
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: TryFrom<i64> + TryFrom<u64> + FromStr> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number in range")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(E::invalid_value(Unexpected::Float(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.trim()
            .parse()
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

struct BoolVisitor;

impl Visitor<'_> for BoolVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean (true or false)")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        parse_bool(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
    }
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of strings or comma-separated text")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(split_list(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(item) = seq.next_element::<String>()? {
            let item = item.trim();
            if !item.is_empty() {
                out.push(item.to_string());
            }
        }
        Ok(out)
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// Null (or a missing value in formats that have one) is `None`; anything
/// else goes to the inner visitor.
struct OptVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for OptVisitor<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self.0).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    struct All {
        #[serde(default, deserialize_with = "super::opt_int")]
        n: Option<i64>,
        #[serde(default, deserialize_with = "super::opt_int")]
        u: Option<u64>,
        #[serde(default, deserialize_with = "super::opt_bool")]
        b: Option<bool>,
        #[serde(default, deserialize_with = "super::list")]
        l: Vec<String>,
        #[serde(default, deserialize_with = "super::opt_text")]
        t: Option<String>,
    }

    fn parse(v: serde_json::Value) -> Result<All, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn string_forms_are_read_as_their_types() {
        let a =
            parse(json!({"n": "-3", "u": " 10 ", "b": "t", "l": "a, b,,c", "t": "1h"})).unwrap();
        assert_eq!(a.n, Some(-3));
        assert_eq!(a.u, Some(10));
        assert_eq!(a.b, Some(true));
        assert_eq!(a.l, ["a", "b", "c"]);
        assert_eq!(a.t.as_deref(), Some("1h"));
        let a = parse(json!({"n": 7, "u": 0, "b": false, "l": ["x", " y "], "t": 3600})).unwrap();
        assert_eq!((a.n, a.u, a.b), (Some(7), Some(0), Some(false)));
        assert_eq!(a.l, ["x", "y"]);
        assert_eq!(a.t.as_deref(), Some("3600"));
        let a = parse(json!({"n": null, "b": null, "l": null, "t": null})).unwrap();
        assert_eq!((a.n, a.b, a.l.len(), a.t), (None, None, 0, None));
        let a = parse(json!({})).unwrap();
        assert_eq!((a.n, a.b, a.l.len(), a.t), (None, None, 0, None));
    }

    #[test]
    fn wrong_values_are_refused_clearly() {
        let e = parse(json!({"n": "ten"})).unwrap_err();
        assert!(e.contains("\"ten\"") && e.contains("whole number"), "{e}");
        assert!(parse(json!({"u": -1})).is_err());
        assert!(parse(json!({"n": 1.5})).is_err());
        assert!(parse(json!({"n": [1]})).is_err());
        let e = parse(json!({"b": "yes"})).unwrap_err();
        assert!(e.contains("\"yes\"") && e.contains("boolean"), "{e}");
        assert!(parse(json!({"b": 2})).is_err());
        assert!(parse(json!({"l": 5})).is_err());
        assert!(parse(json!({"l": [1]})).is_err());
        assert!(parse(json!({"t": true})).is_err());
    }
}
