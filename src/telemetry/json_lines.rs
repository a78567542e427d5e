//! The JSON log format: one object per event, written straight into tracing-subscriber's
//! reused line buffer. tracing-subscriber's own `.json()` formats every `%value` field into a
//! temporary `String`, runs it through serde_json and formats the timestamp from scratch; on a
//! logged request that was a third of all the work (see bench/RESULTS.md). The output is the
//! same shape: `timestamp`, `level`, `target`, then the event's fields, `message` included.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::macros::format_description;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\",\"target\":", metadata.level())?;
        write_string(&mut writer, metadata.target())?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("}\n")
    }
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

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; those become strings.
        if value.is_finite() {
            self.field(field, |w| write!(w, "{value}"));
        } else {
            self.field(field, |w| write!(w, "\"{value}\""));
        }
    }

    /// Everything else, `%display` and `?debug` fields and the message included: formatted
    /// once, escaped on the way into the line.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

fn write_string(writer: &mut impl Write, value: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(&mut *writer).write_str(value)?;
    writer.write_char('"')
}

/// Escapes what JSON requires inside a string: quotes, backslashes and control characters.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
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

    /// Formats one event through a real subscriber and returns the line.
    fn line(emit: impl FnOnce()) -> String {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
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
}
