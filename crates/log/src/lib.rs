//! How Spindle's host and worker log: one JSON object per line on stderr by
//! default, for log shippers, or text for people (`--log-format text`).
//!
//! A JSON line holds `ts` (RFC 3339, UTC), `level`, `target`, `msg`, the
//! event's fields and the fields of every span it happened in, flattened:
//! the worker runs each job in a span carrying `job_id`, `run_id` and
//! `request_id`, so every line about a job carries them without each call
//! naming them. Lines are written straight into tracing-subscriber's
//! per-thread buffer: no intermediate JSON value per event.
//!
//! This crate formats and installs; it decides nothing about what is
//! logged.
#![deny(missing_docs)]

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of lines the host forwards from a component's stdout or
/// stderr. On events of this target, a field named [`RECORD_FIELD`] holds
/// one JSON value on one line (an audit line the component printed) and is
/// embedded as it is instead of as a string.
pub const FORWARDED_TARGET: &str = "spindle::component";

/// See [`FORWARDED_TARGET`].
pub const RECORD_FIELD: &str = "record";

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// tracing-subscriber's text lines, for a terminal.
    Text,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("{other:?} is not a log format: json or text")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Text => "text",
        })
    }
}

/// Installs the process's logger on stderr: levels from `SPINDLE_LOG`
/// (e.g. `debug`, `spindle=debug,wasmtime=warn`), else `default_filter`.
pub fn init(format: Format, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPINDLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .init(),
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Formats an event as one JSON object on one line.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"ts\":\"")?;
        SystemTime.format_time(&mut w)?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(level(meta.level()))?;
        w.write_str("\",\"target\":")?;
        string(&mut w, meta.target())?;
        let mut fields = JsonVisitor {
            w: &mut w,
            raw_record: meta.target() == FORWARDED_TARGET,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                    // Fragments of `,"name":value` pairs (see JsonFields).
                    w.write_str(&f.fields)?;
                }
            }
        }
        w.write_str("}\n")
    }
}

/// Formats span fields as `,"name":value` fragments, which [`JsonLines`]
/// appends to each line inside the span.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut v = JsonVisitor {
            w: &mut writer,
            raw_record: false,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        self.format_fields(current.as_writer(), fields)
    }
}

fn level(l: &Level) -> &'static str {
    match *l {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// Writes each field as `,"name":value`.
struct JsonVisitor<'a, W: fmt::Write> {
    w: &'a mut W,
    /// Whether [`RECORD_FIELD`] is raw JSON (see [`FORWARDED_TARGET`]).
    raw_record: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> JsonVisitor<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        let name = match field.name() {
            "message" => "msg",
            n => n,
        };
        self.w.write_str(",")?;
        string(self.w, name)?;
        self.w.write_str(":")
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.w));
        }
    }
}

impl<W: fmt::Write> Visit for JsonVisitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.raw_record && field.name() == RECORD_FIELD {
            self.put(field, |w| w.write_str(value));
        } else {
            self.put(field, |w| string(w, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity.
        if value.is_finite() {
            self.put(field, |w| write!(w, "{value}"));
        } else {
            self.put(field, |w| w.write_str("null"));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, |w| quoted(w, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.raw_record && field.name() == RECORD_FIELD {
            self.put(field, |w| write!(w, "{value:?}"));
        } else {
            self.put(field, |w| quoted(w, format_args!("{value:?}")));
        }
    }
}

/// Writes `s` as a JSON string.
fn string<W: fmt::Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escape(w).write_str(s)?;
    w.write_char('"')
}

/// Writes formatted text as a JSON string, escaping as it goes.
fn quoted<W: fmt::Write + ?Sized>(w: &mut W, args: fmt::Arguments<'_>) -> fmt::Result {
    w.write_char('"')?;
    Escape(w).write_fmt(args)?;
    w.write_char('"')
}

/// Escapes what JSON strings may not hold as it is: quotes, backslashes and
/// control characters (a line break in a message must not end the line).
struct Escape<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escaped = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// The lines `body` logs, each parsed.
    fn lines(body: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_max_level(Level::TRACE)
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, body);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn every_line_is_an_object_with_time_level_message_and_fields() {
        let got = lines(|| {
            tracing::info!(status = 200u16, ok = true, ms = 1.5, path = %"/a", "request");
            tracing::warn!(
                error = ?"bad \"thing\"",
                detail = %"line 1\n\tline 2\r\u{1b}[31m\\",
                n = -3i64,
                "it\u{7f} broke"
            );
            tracing::error!(ratio = f64::NAN, "not a number");
        });
        assert_eq!(got.len(), 3);
        let ts = got[0]["ts"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        assert_eq!(got[0]["level"], "info");
        assert_eq!(got[0]["msg"], "request");
        assert_eq!(got[0]["status"], 200);
        assert_eq!(got[0]["ok"], true);
        assert_eq!(got[0]["ms"], 1.5);
        assert_eq!(got[0]["path"], "/a");
        assert_eq!(got[1]["level"], "warn");
        assert_eq!(got[1]["error"], "\"bad \\\"thing\\\"\"");
        assert_eq!(got[1]["detail"], "line 1\n\tline 2\r\u{1b}[31m\\");
        assert_eq!(got[1]["n"], -3);
        assert_eq!(got[1]["msg"], "it\u{7f} broke");
        assert_eq!(got[2]["ratio"], Value::Null);
    }

    #[test]
    fn span_fields_are_on_every_line_inside_the_span() {
        let got = lines(|| {
            let span = tracing::info_span!(
                "job",
                job_id = "r1.a.1",
                run_id = "r1",
                request_id = tracing::field::Empty
            );
            span.in_scope(|| tracing::info!("offered"));
            span.record("request_id", "trace-1");
            span.in_scope(|| {
                tracing::info_span!("inner", attempt = 2).in_scope(|| tracing::info!("ran"));
            });
            tracing::info!("outside");
        });
        assert_eq!(got[0]["job_id"], "r1.a.1");
        assert_eq!(got[0]["run_id"], "r1");
        assert!(got[0].get("request_id").is_none(), "not known yet");
        assert_eq!(got[1]["request_id"], "trace-1");
        assert_eq!(got[1]["attempt"], 2);
        assert_eq!(got[1]["msg"], "ran");
        assert!(got[2].get("job_id").is_none());
    }

    #[test]
    fn forwarded_records_are_embedded_not_encoded_again() {
        let got = lines(|| {
            let line = r#"{"audit":{"kind":"run_created"},"request_id":"x"}"#;
            tracing::info!(target: FORWARDED_TARGET, component = "api", record = line, "audit");
            tracing::info!(target: FORWARDED_TARGET, component = "api", record = %line, "audit");
            // Anywhere else it is only a string.
            tracing::info!(record = line, "elsewhere");
        });
        assert_eq!(got[0]["record"]["audit"]["kind"], "run_created");
        assert_eq!(got[1]["record"]["request_id"], "x");
        assert_eq!(got[0]["target"], FORWARDED_TARGET);
        assert!(got[2]["record"].is_string());
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("json".parse(), Ok(Format::Json));
        assert_eq!("TEXT".parse(), Ok(Format::Text));
        assert!("yaml".parse::<Format>().is_err());
        assert_eq!(Format::default(), Format::Json);
    }
}
