//! Input rules. Each rule is one type: it parses a JSON value into a value that is valid by
//! construction (parse, don't validate), says what is wrong in the 422's message, and describes
//! itself in the OpenAPI schema, so the three cannot drift apart. A body is read field by field
//! ([`FromJson`]), so one 422 names every bad field at once: missing, mistyped, repeated or out
//! of range. A PATCH body is read the same way, each field as a [`Change`].

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

use crate::error::{ApiError, FieldError};

/// One field's type and rule.
pub trait Field: Sized {
    /// The value, or what is wrong with it ("must be 1 to 200 characters").
    fn parse(value: Value) -> Result<Self, String>;
}

/// Declares a field type: a newtype whose `parse` is the rule and whose schema describes it.
/// `input_field!(Currency(String), |value| ..., ObjectBuilder::new()...)`.
#[macro_export]
macro_rules! input_field {
    ($name:ident($inner:ty), $parse:expr, $schema:expr) => {
        pub struct $name(pub $inner);

        impl $crate::input::Field for $name {
            fn parse(value: ::serde_json::Value) -> Result<$name, String> {
                let parse: fn(::serde_json::Value) -> Result<$inner, String> = $parse;
                parse(value).map($name)
            }
        }

        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                let schema: ::utoipa::openapi::schema::ObjectBuilder = $schema;
                schema.into()
            }
        }

        impl ::utoipa::ToSchema for $name {}
    };
}

/// A request body that is read field by field: see [`Fields`].
pub trait FromJson: Sized {
    /// Reads every field (each problem is recorded in `fields`), then builds the value; `None`
    /// when a field was bad.
    fn from_json(fields: &mut Fields) -> Option<Self>;
}

/// A JSON object being read, with the problems found so far.
pub struct Fields {
    object: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    /// A required field; absent or `null` is "is required".
    pub fn required<T: Field>(&mut self, name: &str) -> Option<T> {
        match self.object.remove(name) {
            None | Some(Value::Null) => {
                self.reject(name, "is required");
                None
            }
            Some(value) => self.parse(name, value),
        }
    }

    /// An optional field: absent and `null` are both `Some(None)`; `None` when it is bad.
    pub fn optional<T: Field>(&mut self, name: &str) -> Option<Option<T>> {
        match self.object.remove(name) {
            None | Some(Value::Null) => Some(None),
            Some(value) => self.parse(name, value).map(Some),
        }
    }

    /// A required field of a PATCH body: absent leaves it as it is; `null` is refused, since
    /// the field cannot be cleared.
    pub fn change<T: Field>(&mut self, name: &str) -> Option<Change<T>> {
        match self.object.remove(name) {
            None => Some(Change::Keep),
            Some(Value::Null) => {
                self.reject(name, "must not be null");
                None
            }
            Some(value) => self.parse(name, value).map(Change::Set),
        }
    }

    /// An optional field of a PATCH body: absent leaves it as it is, `null` clears it.
    pub fn change_optional<T: Field>(&mut self, name: &str) -> Option<Change<T>> {
        match self.object.remove(name) {
            None => Some(Change::Keep),
            Some(Value::Null) => Some(Change::Clear),
            Some(value) => self.parse(name, value).map(Change::Set),
        }
    }

    // example-domain:begin
    /// Leaves the fields not read yet alone, where a sender may add fields of its own (a
    /// payment provider's events); elsewhere they are refused, so a typo is never ignored.
    pub fn ignore_others(&mut self) {
        self.object.clear();
    }
    // example-domain:end

    /// Records a problem found by a rule across fields.
    pub fn reject(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(name, message));
    }

    fn parse<T: Field>(&mut self, name: &str, value: Value) -> Option<T> {
        T::parse(value).map_err(|message| self.reject(name, message)).ok()
    }
}

/// What a PATCH body asks of one field (read by [`Fields::change`] and
/// [`Fields::change_optional`]).
pub enum Change<T> {
    /// The field was absent: left as it is.
    Keep,
    /// `null`, for an optional field: cleared.
    Clear,
    /// The new value.
    Set(T),
}

impl<T> Change<T> {
    /// Whether the field changes: with [`value`](Self::value), the two parameters of an
    /// `UPDATE`'s `col = CASE WHEN $changed THEN $value ELSE col END`.
    pub fn changed(&self) -> bool {
        !matches!(self, Change::Keep)
    }

    /// The new value; `None` when cleared (or kept).
    pub fn value(&self) -> Option<&T> {
        match self {
            Change::Set(value) => Some(value),
            Change::Keep | Change::Clear => None,
        }
    }
}

/// Reads a JSON body into `T`: 400 `invalid_json` when it is not JSON at all, else a 422
/// naming every bad field, every field that `T` does not have and every key sent twice.
pub fn read_body<T: FromJson>(bytes: &[u8]) -> Result<T, ApiError> {
    // One pass over an object: its members are raw values, so any error is one of syntax
    // (trailing bytes and depth included), and `1e400` is valid JSON here, out of range below.
    // Anything else is checked for syntax alone (400), then refused as not an object (422).
    let invalid = |e: serde_json::Error| ApiError::InvalidJson(strip_position(&e));
    if !bytes.trim_ascii_start().starts_with(b"{") {
        serde_json::from_slice::<&RawValue>(bytes).map_err(invalid)?;
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let Members(members) = serde_json::from_slice(bytes).map_err(invalid)?;
    let mut fields = Fields {
        object: Map::new(),
        errors: Vec::new(),
    };
    for (name, raw) in members {
        if fields.object.contains_key(&name) {
            fields.reject(&name, "appears more than once");
            continue;
        }
        match member_value(raw) {
            Some(value) => {
                fields.object.insert(name, value);
            }
            None => fields.reject(&name, "holds a number out of range"),
        }
    }
    let parsed = T::from_json(&mut fields);
    let unknown: Vec<String> = fields.object.keys().cloned().collect();
    for name in unknown {
        fields.reject(&name, "is not a known field");
    }
    match parsed {
        Some(parsed) if fields.errors.is_empty() => Ok(parsed),
        _ if fields.errors.is_empty() => Err(ApiError::Internal(anyhow::anyhow!(
            "a body was refused without naming a field"
        ))),
        _ => Err(ApiError::Validation(fields.errors)),
    }
}

/// serde_json appends " at line 1 column 42", which means nothing to an API client.
fn strip_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

/// A JSON object's members as sent, in order, a repeated key kept twice (a map would keep the
/// last one silently: a signup naming two emails, a login trying two passwords).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    members.push((name, map.next_value::<&RawValue>()?));
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A member's value; `None` when it holds a number too large for a float (`1e400`). A number
/// written with a fraction or an exponent that is a whole number (`3.0`, `1e2`) becomes that
/// integer; one that is not (`99.99999999999999999`, which a float would round to 100) stays
/// a float, which no integer rule accepts.
fn member_value(raw: &RawValue) -> Option<Value> {
    let text = raw.get();
    let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if is_number && let Some(integer) = whole_number(text) {
        return Some(Value::from(integer));
    }
    serde_json::from_str(text).ok()
}

/// The integer a JSON number's text stands for exactly, if it is one that fits an `i64`.
fn whole_number(text: &str) -> Option<i64> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let fraction = fraction.trim_end_matches('0');
    // The value is `digits` × 10^`shift`.
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let shift = exponent.checked_sub(i32::try_from(fraction.len()).ok()?)?;
    let scale = 10_i128.checked_pow(shift.unsigned_abs())?;
    let value = if shift >= 0 {
        digits.checked_mul(scale)?
    } else if digits % scale == 0 {
        digits / scale
    } else {
        return None;
    };
    i64::try_from(value).ok()
}

/// Any string: for fields whose only rule is their type.
impl Field for String {
    fn parse(value: Value) -> Result<String, String> {
        match value {
            Value::String(text) => Ok(text),
            _ => Err("must be a string".to_owned()),
        }
    }
}

/// `true` or `false`, nothing else (not `"true"`, not `1`).
impl Field for bool {
    fn parse(value: Value) -> Result<bool, String> {
        match value {
            Value::Bool(flag) => Ok(flag),
            _ => Err("must be true or false".to_owned()),
        }
    }
}

input_field!(
    Date(String),
    |value| {
        let date = String::parse(value)?;
        if !is_calendar_date(&date) {
            return Err("must be a date as YYYY-MM-DD".to_owned());
        }
        Ok(date)
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
        .pattern(Some(
            r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-[0-9]{2}-[0-9]{2}$"
        ))
        .description(Some("`YYYY-MM-DD`, a real date with a year from 0001 to 9999."))
        .examples(["2026-12-31"])
);

/// Exactly `YYYY-MM-DD`, a real date, year 0001 to 9999: `time` alone also takes signed,
/// longer and zero years (`+2026-01-01`, `0000-01-01`), which would be stored as sent.
fn is_calendar_date(text: &str) -> bool {
    let shape_ok = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    shape_ok
        && !text.starts_with("0000")
        && time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
}

input_field!(
    Timestamp(i64),
    |value| {
        let text = String::parse(value)?;
        let message = || "must be a date and time as RFC 3339, e.g. 2026-12-31T09:30:00Z".to_owned();
        let parsed = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| message())?;
        // Stored as microseconds since 1970 (see `db::rfc3339`); years 0001 to 9999 fit.
        i64::try_from(parsed.unix_timestamp_nanos() / 1000).map_err(|_| message())
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some("RFC 3339, with an offset; answered in UTC."))
        .examples(["2026-12-31T09:30:00Z"])
);

/// The message for a text field holding a control character (see [`has_control_chars`]).
pub const NO_CONTROL_CHARS: &str = "must not contain control characters";

/// Whether `text` holds a control character (NUL, escapes, DEL, C1) that has no place in a
/// text field; `multiline` allows tabs and line breaks. PostgreSQL refuses NUL outright, and
/// the others would reach logs and screens as terminal escapes.
pub fn has_control_chars(text: &str, multiline: bool) -> bool {
    text.chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\t' | '\n' | '\r')))
}

/// The rule of a text field: its length in characters, whether it may be only white space,
/// and whether tabs and line breaks are allowed (no other control character ever is).
pub struct Text {
    pub min: usize,
    pub max: usize,
    pub not_blank: bool,
    pub multiline: bool,
}

impl Text {
    pub fn parse(&self, value: Value) -> Result<String, String> {
        let text = String::parse(value)?;
        let length = text.chars().count();
        if length < self.min || length > self.max || (self.not_blank && text.trim().is_empty()) {
            return Err(match self.min {
                0 => format!("must be at most {} characters", self.max),
                min => format!("must be {min} to {} characters", self.max),
            });
        }
        if has_control_chars(&text, self.multiline) {
            return Err(NO_CONTROL_CHARS.to_owned());
        }
        Ok(text)
    }

    /// The same rule as JSON Schema: lengths, and a pattern for the characters.
    pub fn schema(&self) -> ObjectBuilder {
        let control = if self.multiline {
            r"\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F"
        } else {
            r"\u0000-\u001F\u007F-\u009F"
        };
        let pattern = if self.not_blank {
            format!(r"^[^{control}]*[^\s{control}][^{control}]*$")
        } else {
            format!("^[^{control}]*$")
        };
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length((self.min > 0).then_some(self.min))
            .max_length(Some(self.max))
            .pattern(Some(pattern))
    }
}

/// The rule of an integer field. A number written with a zero fraction (`12.0`) is accepted:
/// JSON Schema counts it as an integer, and [`read_body`] has already made it one.
pub struct Integer {
    pub min: i64,
    pub max: i64,
}

impl Integer {
    pub fn parse(&self, value: Value) -> Result<i64, String> {
        let message = || format!("must be an integer from {} to {}", self.min, self.max);
        let Value::Number(number) = value else {
            return Err(message());
        };
        number
            .as_i64()
            .filter(|i| (self.min..=self.max).contains(i))
            .ok_or_else(message)
    }

    pub fn schema(&self) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(self.min))
            .maximum(Some(self.max))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NAME: Text = Text {
        min: 1,
        max: 5,
        not_blank: true,
        multiline: false,
    };

    #[test]
    fn text_rules_and_their_messages() {
        assert_eq!(NAME.parse(json!("Ada")), Ok("Ada".to_owned()));
        assert_eq!(NAME.parse(json!("")), Err("must be 1 to 5 characters".to_owned()));
        assert_eq!(NAME.parse(json!("   ")), Err("must be 1 to 5 characters".to_owned()));
        assert_eq!(
            NAME.parse(json!("toolong")),
            Err("must be 1 to 5 characters".to_owned())
        );
        assert_eq!(NAME.parse(json!("a\u{1b}b")), Err(NO_CONTROL_CHARS.to_owned()));
        assert_eq!(NAME.parse(json!(5)), Err("must be a string".to_owned()));
        let notes = Text {
            min: 0,
            max: 5,
            not_blank: false,
            multiline: true,
        };
        assert_eq!(notes.parse(json!("a\nb")), Ok("a\nb".to_owned()));
        assert_eq!(
            notes.parse(json!("123456")),
            Err("must be at most 5 characters".to_owned())
        );
    }

    #[test]
    fn integers_accept_whole_floats_only() {
        let rule = Integer { min: 1, max: 10 };
        assert_eq!(rule.parse(json!(3)), Ok(3));
        for bad in [json!(3.5), json!("3"), json!(0), json!(11), json!(1e300), json!(null)] {
            assert_eq!(rule.parse(bad), Err("must be an integer from 1 to 10".to_owned()));
        }
        // In a body: the text decides, not the float it would round to.
        let count =
            |text: &str| read_body::<Pair>(format!(r#"{{"name":"a","count":{text}}}"#).as_bytes()).map(|p| p.count);
        for (text, integer) in [("3.0", 3), ("3.000e0", 3), ("1e1", 10), ("200e-2", 2), ("-0.0e3", 0)] {
            let expected = if integer >= 1 { Some(integer) } else { None };
            assert_eq!(count(text).ok(), expected, "{text}");
        }
        for not_whole in ["2.5", "9.99999999999999999", "25e-1", "1e400", "1e19", "-1e-400"] {
            assert!(count(not_whole).is_err(), "{not_whole}");
        }
        assert_eq!(whole_number("99.99999999999999999"), None);
        assert_eq!(whole_number("-12.50e1"), Some(-125));
        assert_eq!(whole_number("1e400"), None);
    }

    #[test]
    fn a_repeated_key_and_a_huge_number_are_named_and_bad_syntax_is_400() {
        let bad = read_body::<Pair>(br#"{"name":"a","count":2,"name":"b","extra":1e400}"#);
        let Err(ApiError::Validation(details)) = bad else {
            panic!("a 422 was expected");
        };
        let named: Vec<(&str, &str)> = details.iter().map(|d| (d.field.as_str(), d.message.as_str())).collect();
        assert_eq!(
            named,
            [
                ("name", "appears more than once"),
                ("extra", "holds a number out of range")
            ]
        );
        for broken in [&b"{"[..], b"[1,", b"{} x", b""] {
            assert!(matches!(read_body::<Pair>(broken), Err(ApiError::InvalidJson(_))));
        }
        for not_object in [&b"[1]"[..], b"1e400", b"\"x\"", b"null"] {
            assert!(matches!(read_body::<Pair>(not_object), Err(ApiError::Validation(_))));
        }
    }

    struct Pair {
        name: String,
        count: i64,
    }

    struct Count(i64);

    impl Field for Count {
        fn parse(value: Value) -> Result<Count, String> {
            Integer { min: 1, max: 10 }.parse(value).map(Count)
        }
    }

    impl FromJson for Pair {
        fn from_json(fields: &mut Fields) -> Option<Pair> {
            let name = fields.required("name");
            let count = fields.required::<Count>("count");
            Some(Pair {
                name: name?,
                count: count?.0,
            })
        }
    }

    #[test]
    fn dates_are_exactly_yyyy_mm_dd_and_timestamps_rfc_3339() {
        for good in ["0001-01-01", "2024-02-29", "9999-12-31"] {
            assert!(is_calendar_date(good), "{good}");
        }
        for bad in [
            "+2026-01-01",
            "-0001-01-01",
            "0000-01-01",
            "2026-1-01",
            "2025-02-29",
            "20260101",
            "٢٠٢٦-01-01",
        ] {
            assert!(!is_calendar_date(bad), "{bad}");
        }
        let at = |text: &str| Timestamp::parse(json!(text)).map(|t| t.0);
        assert_eq!(at("1970-01-01T00:00:01.5+00:00"), Ok(1_500_000));
        assert_eq!(at("1970-01-01T01:00:00+01:00"), Ok(0));
        for bad in ["1970-01-01", "2026-13-01T00:00:00Z", "1970-01-01T00:00:00", "yesterday"] {
            assert!(at(bad).is_err(), "{bad}");
        }
        assert_eq!(bool::parse(json!(true)), Ok(true));
        assert!(bool::parse(json!("true")).is_err() && bool::parse(json!(1)).is_err());
    }

    struct Patch {
        name: Change<String>,
        count: Change<Count>,
    }

    impl FromJson for Patch {
        fn from_json(fields: &mut Fields) -> Option<Patch> {
            let name = fields.change("name");
            let count = fields.change_optional("count");
            Some(Patch {
                name: name?,
                count: count?,
            })
        }
    }

    #[test]
    fn a_patch_keeps_what_is_absent_clears_what_is_null_and_refuses_null_for_a_required_field() {
        let patch = read_body::<Patch>(br#"{}"#).expect("an empty patch is valid");
        assert!(!patch.name.changed() && !patch.count.changed());
        let patch = read_body::<Patch>(br#"{"name": "b", "count": null}"#).expect("valid");
        assert_eq!(patch.name.value().map(String::as_str), Some("b"));
        assert!(patch.count.changed() && patch.count.value().is_none(), "cleared");
        let Err(ApiError::Validation(details)) = read_body::<Patch>(br#"{"name": null, "count": 99}"#) else {
            panic!("a 422 was expected");
        };
        let named: Vec<(&str, &str)> = details.iter().map(|d| (d.field.as_str(), d.message.as_str())).collect();
        assert_eq!(
            named,
            [
                ("name", "must not be null"),
                ("count", "must be an integer from 1 to 10")
            ]
        );
    }

    #[test]
    fn a_body_names_every_bad_field() {
        let bad = read_body::<Pair>(br#"{"name": 5, "extra": true}"#);
        let Err(ApiError::Validation(details)) = bad else {
            panic!("a 422 was expected");
        };
        let named: Vec<(&str, &str)> = details.iter().map(|d| (d.field.as_str(), d.message.as_str())).collect();
        assert_eq!(
            named,
            [
                ("name", "must be a string"),
                ("count", "is required"),
                ("extra", "is not a known field")
            ]
        );
        let good = read_body::<Pair>(br#"{"name": "a", "count": 2.0}"#).ok();
        assert_eq!(good.map(|p| (p.name, p.count)), Some(("a".to_owned(), 2)));
        assert!(read_body::<Pair>(b"[1]").is_err());
    }
}
