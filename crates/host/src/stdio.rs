//! Component stdout and stderr: appended to
//! `<state-dir>/logs/<component>_<stream>.txt`, as Spin keeps them, and each
//! line forwarded to the host's own log (as `spin up` prints component output
//! too), so one stream holds everything about a request.
//!
//! A forwarded line names its component and stream, and its request id
//! when the component wrote one: `request_id=<id> ...` text (what
//! `spindle_spin::context::log` writes to stderr), or a JSON object with a
//! `request_id` member (the audit lines on stdout), which is embedded in the
//! host's JSON line as an object rather than as an escaped string.
//! `SPINDLE_LOG=info,spindle::component=off` keeps component output out of
//! the host's log (the files still get it).

use std::borrow::Cow;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use spindle_log::FORWARDED_TARGET;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Longest line forwarded whole; a longer one is forwarded in pieces of
/// this size (the file gets it whole).
const MAX_LINE: usize = 64 << 10;

/// Which of a component's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout: audit lines.
    Stdout,
    /// stderr: faults and notes about a request.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One component's stdout or stderr, shared by its instances.
#[derive(Clone)]
pub struct ComponentOutput {
    file: Arc<std::fs::File>,
    component: Arc<str>,
    stream: Stream,
}

impl ComponentOutput {
    /// Output of `component` appended to `file`.
    pub fn new(file: std::fs::File, component: &str, stream: Stream) -> Self {
        Self {
            file: Arc::new(file),
            component: component.into(),
            stream,
        }
    }

    /// The stream one instance writes to. Lines are put together per
    /// instance: a guest may write a line in pieces (Rust's unbuffered
    /// stderr writes each formatted argument apart), through a new WASI
    /// stream each time, and an instance runs one guest write at a time.
    pub fn for_instance(&self) -> InstanceOutput {
        let forward = tracing::enabled!(target: FORWARDED_TARGET, tracing::Level::WARN);
        InstanceOutput {
            file: self.file.clone(),
            line: forward.then(|| {
                Arc::new(Mutex::new(Partial {
                    component: self.component.clone(),
                    stream: self.stream,
                    bytes: Vec::new(),
                }))
            }),
        }
    }
}

/// What one instance writes to one stream.
#[derive(Clone)]
pub struct InstanceOutput {
    file: Arc<std::fs::File>,
    /// The line being written, when lines are forwarded.
    line: Option<Arc<Mutex<Partial>>>,
}

/// The start of a line not ended yet; forwarded as it is when the instance
/// goes away.
struct Partial {
    component: Arc<str>,
    stream: Stream,
    bytes: Vec<u8>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.bytes.is_empty() {
            forward(&self.component, self.stream, &self.bytes);
        }
    }
}

impl InstanceOutput {
    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        (&*self.file).write_all(bytes)?;
        let Some(line) = &self.line else {
            return Ok(());
        };
        let mut partial = line.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if partial.bytes.is_empty() {
                forward(&partial.component, partial.stream, &rest[..end]);
            } else {
                partial.bytes.extend_from_slice(&rest[..end]);
                let whole = std::mem::take(&mut partial.bytes);
                forward(&partial.component, partial.stream, &whole);
            }
            rest = &rest[end + 1..];
        }
        partial.bytes.extend_from_slice(rest);
        if partial.bytes.len() >= MAX_LINE {
            let piece = std::mem::take(&mut partial.bytes);
            forward(&partial.component, partial.stream, &piece);
        }
        Ok(())
    }
}

/// Logs one line of component output.
fn forward(component: &str, stream: Stream, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() {
        return;
    }
    let stream_name = stream.as_str();
    if line.starts_with('{')
        && let Ok(head) = serde_json::from_str::<Head<'_>>(line)
    {
        let msg = if head.audit.is_some() {
            "audit"
        } else {
            "component record"
        };
        let request_id = head.request_id.as_deref();
        match stream {
            Stream::Stdout => tracing::info!(
                target: FORWARDED_TARGET, component, stream = stream_name, request_id,
                record = %line, "{msg}"
            ),
            Stream::Stderr => tracing::warn!(
                target: FORWARDED_TARGET, component, stream = stream_name, request_id,
                record = %line, "{msg}"
            ),
        }
        return;
    }
    let (request_id, text) = match line
        .strip_prefix("request_id=")
        .and_then(|r| r.split_once(' '))
    {
        Some((id, rest)) if spindle_core::ids::valid_request_id(id) => (Some(id), rest),
        _ => (None, line),
    };
    match stream {
        Stream::Stdout => tracing::info!(
            target: FORWARDED_TARGET, component, stream = stream_name, request_id, "{text}"
        ),
        Stream::Stderr => tracing::warn!(
            target: FORWARDED_TARGET, component, stream = stream_name, request_id, "{text}"
        ),
    }
}

/// What a JSON line says about itself (the rest is embedded as it is).
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(default)]
    audit: Option<serde::de::IgnoredAny>,
}

impl IsTerminal for InstanceOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for InstanceOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

// Writes go straight to the file, as wasmtime-wasi's `OutputFile` does:
// always ready, never pending.
impl Pollable for InstanceOutput {
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}

impl OutputStream for InstanceOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::format_err!(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl AsyncWrite for InstanceOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_bytes(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
