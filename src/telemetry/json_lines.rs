//! The JSON log format: one object per event, written straight into tracing-subscriber's
//! reused line buffer. tracing-subscriber's own `.json()` formats every `%value` field into a
//! temporary `String`, runs it through serde_json and formats the timestamp from scratch; on a
//! logged request that was a third of all the work (measured with the load benchmark). The
//! output is the same shape: `timestamp`, `level`, `target`, then the event's fields,
//! `message` included, then `request_id` when the line is written while a request is served,
//! then the fields of the spans the event is in (root first), e.g. what a
//! `#[tracing::instrument]` span recorded.
//!
//! A span's fields are formatted once, by [`JsonFields`], when the span is made or recorded
//! into; each line then copies that text.
//!
//! Every text value is cut at [`MAX_VALUE_BYTES`] and marked [`CUT_MARK`], so no line grows
//! with what a client sent (a 400 kB HTTP method, a header) and the log queue stays bounded.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::macros::format_description;
use tracing::field::{Field, FieldSet, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// Longest text value written, in bytes (before escaping); longer ones are cut.
pub const MAX_VALUE_BYTES: usize = 2048;
/// Ends a value that was cut.
pub const CUT_MARK: &str = "…[cut]";

pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\",\"target\":", metadata.level())?;
        write_string(&mut writer, metadata.target())?;
        write_fields(&mut writer, event)?;
        // The request being served, unless the event names one itself (the request line).
        let named = super::with_current_request_id(|id| {
            if metadata.fields().field("request_id").is_some() {
                return Ok(false);
            }
            writer.write_str(",\"request_id\":")?;
            write_string(&mut writer, id).map(|()| true)
        });
        let request_id_written = named.unwrap_or(Ok(false))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write_span_fields(&mut writer, ctx, event, request_id_written, &span)?;
            }
        }
        writer.write_str("}\n")
    }
}

/// Formats span fields the way [`JsonLines`] writes event fields: `,"name":value` each, so a
/// line only has to copy them. Install it with `.fmt_fields(JsonFields)` next to
/// `.event_format(JsonLines)`; with any other field formatter, lines carry no span fields
/// (their text would not be JSON).
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        write_fields(&mut writer, fields)
    }

    /// `span.record(...)`: a field recorded again replaces its old value, so no key is
    /// written twice (the default would append a second copy).
    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> fmt::Result {
        let mut added = String::new();
        write_fields(&mut added, fields)?;
        let old = std::mem::take(&mut current.fields);
        for (key, segment) in segments(&old) {
            if !segments(&added).any(|(new_key, _)| new_key == key) {
                current.fields.push_str(segment);
            }
        }
        current.fields.push_str(&added);
        Ok(())
    }
}

/// Copies one span's pre-formatted fields into the line. A key the line already has (the
/// event's own fields, the request's id), or an inner span has too, is left out: the event's
/// value wins, then the request's id, then the innermost span's.
fn write_span_fields<S, N>(
    writer: &mut Writer<'_>,
    ctx: &FmtContext<'_, S, N>,
    event: &Event<'_>,
    request_id_written: bool,
    span: &SpanRef<'_, S>,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let extensions = span.extensions();
    let Some(formatted) = extensions.get::<FormattedFields<JsonFields>>() else {
        return Ok(());
    };
    let names = span.metadata().fields();
    // The spans between this one and the event, innermost first.
    let inner = || {
        let id = span.id();
        ctx.event_scope()
            .into_iter()
            .flatten()
            .take_while(move |other| other.id() != id)
    };
    // The usual case, decided from the declared names alone: nothing repeats, copy it whole.
    let may_repeat = overlaps(names, event.metadata().fields())
        || (request_id_written && names.field("request_id").is_some())
        || inner().any(|other| overlaps(names, other.metadata().fields()));
    if !may_repeat {
        return writer.write_str(&formatted.fields);
    }
    for (key, segment) in segments(&formatted.fields) {
        let in_event = event.metadata().fields().iter().any(|f| key_is(key, f.name()))
            || (request_id_written && key == "request_id");
        let in_inner = || {
            inner().any(|other| {
                other
                    .extensions()
                    .get::<FormattedFields<JsonFields>>()
                    .is_some_and(|f| segments(&f.fields).any(|(other_key, _)| other_key == key))
            })
        };
        if !in_event && !in_inner() {
            writer.write_str(segment)?;
        }
    }
    Ok(())
}

fn overlaps(a: &FieldSet, b: &FieldSet) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.name() == y.name()))
}

/// Whether an escaped key, as [`segments`] returns it, names the field `name`.
fn key_is(escaped: &str, name: &str) -> bool {
    if name.bytes().any(needs_escape) {
        let mut text = String::new();
        Escaped(&mut text).write_str(name).is_ok() && text == escaped
    } else {
        escaped == name
    }
}

/// Splits text written by [`Fields`] (`,"name":value` repeated) into (escaped name, whole
/// segment) pairs. Values are JSON strings (escaped) or numbers and booleans (no `,` or `"`).
fn segments(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let key_start = start + 2; // past `,"`
        let key_end = closing_quote(bytes, key_start)?;
        let mut end = key_end + 2; // past `":`
        if bytes.get(end) == Some(&b'"') {
            end = closing_quote(bytes, end + 1)? + 1;
        } else {
            end += bytes.get(end..)?.iter().take_while(|&&b| b != b',').count();
        }
        at = end;
        Some((text.get(key_start..key_end)?, text.get(start..end)?))
    })
}

/// The index of the `"` that ends a JSON string whose text starts at `from`.
fn closing_quote(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Writes an event's or a span's fields as `,"name":value` each.
fn write_fields(writer: &mut impl Write, fields: impl RecordFields) -> fmt::Result {
    let mut visitor = Fields { writer, result: Ok(()) };
    fields.record(&mut visitor);
    visitor.result
}

/// Writes each field as `,"name":value`, remembering the first error (`Visit` returns none).
struct Fields<'a, W: Write> {
    writer: &'a mut W,
    result: fmt::Result,
}

impl<W: Write> Fields<'_, W> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .writer
                .write_char(',')
                .and_then(|()| write_string(self.writer, field.name()))
                .and_then(|()| self.writer.write_char(':'))
                .and_then(|()| value(self.writer));
        }
    }
}

impl<W: Write> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| write_string(w, value));
    }

    // Integers through `itoa`: `write!` costs several times more for one number.
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // `ryu` writes the shortest text that reads back as `value`, several times faster than
        // `Display`. JSON has no NaN or infinity; those become strings.
        if value.is_finite() {
            self.field(field, |w| w.write_str(ryu::Buffer::new().format_finite(value)));
        } else {
            self.field(field, |w| write!(w, "\"{value}\""));
        }
    }

    /// Everything else, `%display` and `?debug` fields and the message included: formatted
    /// once, escaped on the way into the line.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| {
            w.write_char('"')?;
            let mut value_writer = Cut::new(Escaped(w));
            write!(value_writer, "{value:?}")?;
            value_writer.finish()?;
            w.write_char('"')
        });
    }
}

fn write_string(writer: &mut impl Write, value: &str) -> fmt::Result {
    writer.write_char('"')?;
    let mut value_writer = Cut::new(Escaped(&mut *writer));
    value_writer.write_str(value)?;
    value_writer.finish()?;
    writer.write_char('"')
}

/// Passes on the first [`MAX_VALUE_BYTES`] of a value (at a character boundary) and drops the
/// rest; [`Cut::finish`] then marks a value that was cut.
struct Cut<W: Write> {
    inner: W,
    left: usize,
    cut: bool,
}

impl<W: Write> Cut<W> {
    fn new(inner: W) -> Cut<W> {
        Cut {
            inner,
            left: MAX_VALUE_BYTES,
            cut: false,
        }
    }

    fn finish(mut self) -> fmt::Result {
        if self.cut {
            self.inner.write_str(CUT_MARK)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for Cut<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.len() <= self.left {
            self.left -= s.len();
            return self.inner.write_str(s);
        }
        self.cut = true;
        let end = s.floor_char_boundary(self.left);
        self.left = 0;
        self.inner.write_str(&s[..end])
    }
}

/// Escapes what JSON requires inside a string: quotes, backslashes and control characters.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Writes a string with what [`needs_escape`] escaped.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Almost every value is plain text: one scan, then one copy.
        let Some(first) = s.bytes().position(needs_escape) else {
            return self.0.write_str(s);
        };
        self.0.write_str(&s[..first])?;
        let mut plain = first;
        for (i, byte) in s.bytes().enumerate().skip(first) {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

/// RFC 3339 in UTC with microseconds. The part up to the seconds is formatted once per second
/// per thread; the rest is two integers.
fn write_timestamp(writer: &mut impl Write) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.as_secs() {
            *second = now.as_secs();
            let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            *text = i64::try_from(now.as_secs())
                .ok()
                .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
                .and_then(|time| time.format(format).ok())
                .unwrap_or_default();
        }
        write!(writer, "{text}.{:06}Z", now.subsec_micros())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats events through the production JSON subscriber and returns the lines.
    fn line(emit: impl FnOnce()) -> String {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let dispatch = crate::telemetry::subscriber(
            crate::config::LogFormat::Json,
            "trace",
            move || Capture(sink.clone()),
            false,
        );
        tracing::dispatcher::with_default(&dispatch, emit);
        let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    fn parse(text: &str) -> serde_json::Value {
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text:?}");
        serde_json::from_str(text).expect("valid JSON")
    }

    /// The line's keys, sorted.
    fn keys(json: &serde_json::Value) -> Vec<&str> {
        let mut keys: Vec<&str> = json
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        keys.sort_unstable();
        keys
    }

    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut buffer) = self.0.lock() {
                buffer.extend_from_slice(data);
            }
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_kind_of_field_makes_valid_json_with_the_same_values() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} snowman ☃";
        let text = line(|| {
            tracing::info!(target: "http", text = nasty, shown = %nasty, debugged = ?nasty, count = 42u64,
                delta = -7i64, ratio = 0.413, bad = f64::NAN, yes = true, "message with \"quotes\"");
        });
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text:?}");
        let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(json["level"], "INFO");
        assert_eq!(json["target"], "http");
        assert_eq!(json["message"], "message with \"quotes\"");
        assert_eq!(json["text"], nasty);
        assert_eq!(json["shown"], nasty);
        assert_eq!(json["debugged"], format!("{nasty:?}"));
        assert_eq!(json["count"], 42);
        assert_eq!(json["delta"], -7);
        assert_eq!(json["ratio"], 0.413);
        assert_eq!(json["bad"], "NaN");
        assert_eq!(json["yes"], true);
        let timestamp = json["timestamp"].as_str().unwrap_or_default();
        let parsed = OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339);
        assert!(parsed.is_ok(), "{timestamp}");
        assert_eq!(timestamp.len(), "2026-11-22T03:25:28.206935Z".len(), "{timestamp}");
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary_and_marked() {
        let long = "é".repeat(MAX_VALUE_BYTES);
        let text = line(|| tracing::info!(method = long.as_str(), detail = ?long, "{long}"));
        let json = parse(&text);
        for key in ["method", "detail", "message"] {
            let value = json[key].as_str().unwrap_or_default();
            assert!(value.ends_with(CUT_MARK), "{key}: {value}");
            assert!(
                value.len() <= MAX_VALUE_BYTES + CUT_MARK.len() + 2,
                "{key}: {} bytes",
                value.len()
            );
        }
        let short = line(|| tracing::info!(method = "GET", "fine"));
        assert_eq!(parse(&short)["method"], "GET");
        assert!(!short.contains(CUT_MARK));
    }

    #[test]
    fn floats_are_json_numbers_and_the_others_strings() {
        let text = line(|| tracing::info!(latency_ms = 0.413, whole = 12.0, tiny = 1e-7, nan = f64::NAN, "m"));
        let json: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(json["latency_ms"], 0.413);
        assert_eq!(json["whole"], 12.0);
        assert_eq!(json["tiny"], 1e-7);
        assert_eq!(json["nan"], "NaN");
    }

    #[test]
    fn span_fields_are_top_level_keys_root_first_after_the_events_own() {
        let text = line(|| {
            let request = tracing::error_span!("request", request_id = "req-1");
            let _request = request.enter();
            let work = tracing::info_span!("work", account = "acme", attempt = 2u64);
            let _work = work.enter();
            tracing::info!(detail = "x", "inside");
        });
        let json = parse(&text);
        assert_eq!(
            keys(&json),
            [
                "account",
                "attempt",
                "detail",
                "level",
                "message",
                "request_id",
                "target",
                "timestamp"
            ],
            "{text}"
        );
        assert_eq!(json["request_id"], "req-1");
        assert_eq!(json["account"], "acme");
        assert_eq!(json["attempt"], 2);
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
        assert!(
            at("detail") < at("request_id") && at("request_id") < at("account"),
            "{text}"
        );
    }

    #[test]
    fn the_event_wins_then_the_innermost_span_and_no_key_is_written_twice() {
        let tricky = "a,\"shared\":1 \\\" ,";
        let text = line(|| {
            let outer = tracing::info_span!("outer", request_id = "outer", shared = "outer", tricky, kept = 1u64);
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", shared = "inner", late = tracing::field::Empty);
            let _inner = inner.enter();
            inner.record("late", 1u64);
            inner.record("late", 2u64);
            tracing::info!(request_id = "event", "inside");
        });
        let json = parse(&text);
        assert_eq!(json["request_id"], "event");
        assert_eq!(json["shared"], "inner");
        assert_eq!(json["late"], 2);
        assert_eq!(json["tricky"], tricky);
        assert_eq!(json["kept"], 1);
        for key in ["request_id", "shared", "late", "tricky", "kept", "message"] {
            assert_eq!(text.matches(&format!(",\"{key}\":")).count(), 1, "{key} once in {text}");
        }
    }

    #[test]
    fn a_line_outside_any_span_has_only_its_own_fields() {
        let text = line(|| {
            drop(tracing::info_span!("finished", request_id = "gone").entered());
            tracing::info!(target: "http", status = 404u64, "request");
        });
        let json = parse(&text);
        assert_eq!(
            keys(&json),
            ["level", "message", "status", "target", "timestamp"],
            "{text}"
        );
    }

    #[test]
    fn segments_split_what_fields_wrote() {
        let text = ",\"a\":1,\"b\":\"x,\\\"y\\\\\",\"c\":true";
        let parts: Vec<_> = segments(text).collect();
        assert_eq!(
            parts,
            [("a", ",\"a\":1"), ("b", ",\"b\":\"x,\\\"y\\\\\""), ("c", ",\"c\":true")]
        );
        assert_eq!(segments("").count(), 0);
    }

    #[test]
    fn inside_a_request_a_line_names_it_once_and_outside_not_at_all() {
        use crate::telemetry::{CURRENT_REQUEST, RequestContext, RequestId};
        let text = line(|| {
            let context = RequestContext {
                id: RequestId(axum::http::HeaderValue::from_static("req-9")),
                expose_internal_errors: false,
            };
            CURRENT_REQUEST.sync_scope(context, || {
                let job = tracing::info_span!("job", request_id = "from-span", account = "acme");
                let _job = job.enter();
                tracing::warn!("inside");
                tracing::info!(request_id = "own", "names its own");
            });
            tracing::info!("outside");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let json: Vec<serde_json::Value> = lines.iter().map(|l| parse(&format!("{l}\n"))).collect();
        assert_eq!(json[0]["request_id"], "req-9");
        assert_eq!(json[0]["account"], "acme");
        assert_eq!(json[1]["request_id"], "own");
        assert!(json[2].get("request_id").is_none(), "{}", lines[2]);
        for line in &lines[..2] {
            assert_eq!(line.matches("\"request_id\":").count(), 1, "{line}");
        }
    }
}
