//! The human-readable log format: tracing-subscriber's default (which already prints the
//! spans an event is in, with their fields), plus ` request_id=…` at the end of each line
//! written while a request is served.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct WithRequestId {
    plain: Format,
    // A `Writer` made here has colours off; this one puts them back when the line's had them.
    coloured: Format,
}

impl Default for WithRequestId {
    fn default() -> WithRequestId {
        WithRequestId {
            plain: Format::default(),
            coloured: Format::default().with_ansi(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for WithRequestId
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let has_own = event.metadata().fields().field("request_id").is_some();
        let id = super::with_current_request_id(str::to_owned).filter(|_| !has_own);
        let Some(id) = id else {
            return self.plain.format_event(ctx, writer, event);
        };
        // The default format ends the line itself; the id goes just before that newline.
        let mut line = String::new();
        let format = if writer.has_ansi_escapes() {
            &self.coloured
        } else {
            &self.plain
        };
        format.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        writer.write_str(body)?;
        writeln!(writer, " request_id={id}")
    }
}
