//! Just enough HTTP for the agents that reach the network (`notifier`,
//! `http-check`): one request per connection, plain HTTP/1.1 over
//! `std::net`, one deadline for the whole exchange and a bounded read of the
//! answer. TLS is not spoken here; `https://` goes through `curl`, which the
//! host may have and the agent image does not.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv6Addr, TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most body bytes read; the rest of a longer body is left unread.
pub const MAX_BODY: usize = 1 << 20;
/// Most bytes of status line and headers, over all interim answers.
const MAX_HEAD: usize = 64 << 10;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// Whether a URL is spoken directly or handed to `curl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// The host to connect to, an IPv6 literal without its brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the URL writes it, for the `Host` header.
    pub authority: String,
    /// Path and query, starting with `/`; the fragment is dropped.
    pub path: String,
}

impl Target {
    /// Parses `url`, or says what is wrong with it. Only what goes on the
    /// request line and in `Host` unescaped is accepted: ASCII without
    /// spaces or control characters, so a URL cannot smuggle in a header.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        if !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{url:?} must be ASCII without spaces or control characters (percent-encode them)"
            ));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        if authority.contains('@') {
            return Err(format!("{url:?}: credentials in URLs are not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (ip, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
            ip.parse::<Ipv6Addr>()
                .map_err(|_| format!("{url:?}: {ip:?} is not an IPv6 address"))?;
            match after {
                "" => (ip, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (ip, Some(port)),
                    None => return Err(format!("{url:?}: unexpected {after:?} after the host")),
                },
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if !authority.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(format!("{url:?}: {host:?} is not a host name"));
        }
        let port = match port {
            None => match scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
            },
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?}: {p:?} is not a port"))?,
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// One request: method, extra headers and body. `Host`, `User-Agent` and
/// `Connection: close` are always sent.
pub struct Request<'a> {
    pub method: &'a str,
    pub user_agent: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// What came back. A transport failure is data here, not an `Err`: a
/// checker reports it, a notifier decides to retry.
#[derive(Debug, Default)]
pub struct Answer {
    /// The final status, if a status line arrived.
    pub status: Option<u16>,
    /// Up to [`MAX_BODY`] bytes of the body, decoded from chunks.
    pub body: Vec<u8>,
    /// Whether the body went on past [`MAX_BODY`].
    pub truncated: bool,
    /// Why the exchange did not complete, if it did not.
    pub error: Option<String>,
}

impl Answer {
    fn failed(status: Option<u16>, error: String) -> Self {
        Self {
            status,
            error: Some(error),
            ..Self::default()
        }
    }
}

/// Sends `req` to a plain `http://` target and reads the answer, all within
/// `timeout`.
pub fn exchange(target: &Target, req: &Request<'_>, timeout: Duration) -> Answer {
    let deadline = Deadline {
        at: Instant::now() + timeout,
        timeout,
    };
    let mut stream = match connect(target, &deadline) {
        Ok(s) => s,
        Err(e) => return Answer::failed(None, e),
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nConnection: close\r\n",
        req.method, target.path, target.authority, req.user_agent
    );
    for (name, value) in req.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let sent = deadline
        .remaining()
        .and_then(|left| stream.set_write_timeout(Some(left)))
        .and_then(|()| stream.write_all(head.as_bytes()))
        .and_then(|()| stream.write_all(req.body))
        .map_err(|e| deadline.explain(e));
    if let Err(e) = sent {
        return Answer::failed(None, format!("sending the request: {e}"));
    }
    let mut reader = BufReader::new(DeadlineReader {
        stream,
        deadline: &deadline,
    });
    let (status, headers) = match read_head(&mut reader) {
        Ok(h) => h,
        Err(e) => return Answer::failed(None, format!("reading the answer: {e}")),
    };
    // RFC 9112 §6.3: these answers end at their headers whatever they say.
    let bodiless = req.method == "HEAD" || status == 204 || status == 304;
    let body = if bodiless {
        Ok((Vec::new(), false))
    } else {
        read_body(&mut reader, &headers)
    };
    match body {
        Ok((body, truncated)) => Answer {
            status: Some(status),
            body,
            truncated,
            error: None,
        },
        Err(e) => Answer::failed(Some(status), format!("reading the body: {e}")),
    }
}

struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }

    /// The error, or for a timeout (which the OS reports as `WouldBlock` on
    /// Unix) how long the exchange was given.
    fn explain(&self, e: io::Error) -> String {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                format!("timed out after {} ms", self.timeout.as_millis())
            }
            _ => e.to_string(),
        }
    }
}

fn connect(target: &Target, deadline: &Deadline) -> Result<TcpStream, String> {
    // Name resolution has no timeout in std: it runs on a thread of its
    // own, and a resolver that hangs is given up on at the deadline (the
    // thread is left to finish; the process ends soon after).
    let (tx, rx) = std::sync::mpsc::channel();
    let (host, port) = (target.host.clone(), target.port);
    std::thread::spawn(move || {
        let _ = tx.send((host.as_str(), port).to_socket_addrs().map(Vec::from_iter));
    });
    let left = deadline.remaining().map_err(|e| deadline.explain(e))?;
    let addrs = match rx.recv_timeout(left) {
        Ok(found) => found.map_err(|e| format!("resolving {}: {e}", target.host))?,
        Err(_) => {
            return Err(format!(
                "resolving {}: timed out after {} ms",
                target.host,
                deadline.timeout.as_millis()
            ));
        }
    };
    let mut last = format!("{} resolves to no address", target.host);
    for addr in addrs {
        let attempt = deadline
            .remaining()
            .and_then(|left| TcpStream::connect_timeout(&addr, left));
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {addr}: {}", deadline.explain(e)),
        }
    }
    Err(last)
}

/// A socket whose every read waits only as long as the deadline leaves.
struct DeadlineReader<'a> {
    stream: TcpStream,
    deadline: &'a Deadline,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.remaining().map_err(|e| self.timed_out(e))?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf).map_err(|e| self.timed_out(e))
    }
}

impl DeadlineReader<'_> {
    fn timed_out(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                io::Error::new(io::ErrorKind::TimedOut, self.deadline.explain(e))
            }
            _ => e,
        }
    }
}

/// One line without its line ending, `None` at the end of the stream.
/// `budget` is what may still be read and shrinks by what this line takes.
fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let n = r
        .take(*budget as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    *budget -= n;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if *budget == 0 {
            "a line of the answer is too long".to_owned()
        } else {
            "the connection closed in the middle of a line".to_owned()
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// The final status and its headers (names lowercased), past any interim
/// `1xx` answers.
fn read_head(r: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>), String> {
    let mut budget = MAX_HEAD;
    loop {
        let line = read_line(r, &mut budget)?
            .ok_or("the server closed the connection without answering")?;
        let status = parse_status_line(&line)?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(r, &mut budget)?
                .ok_or("the connection closed in the middle of the headers")?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        if !(100..200).contains(&status) || status == 101 {
            return Ok((status, headers));
        }
    }
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut words = line.split_whitespace();
    let version = words.next().unwrap_or_default();
    words
        .next()
        .filter(|_| version.starts_with("HTTP/"))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..1000).contains(code))
        .ok_or_else(|| {
            let shown: String = line.chars().take(80).collect();
            format!("not an HTTP answer: {shown:?}")
        })
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> impl Iterator<Item = &'h str> {
    headers
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The body and whether it was cut at [`MAX_BODY`]: chunked, sized by
/// `Content-Length`, or up to the end of the stream (`Connection: close`
/// makes that the end of the answer).
fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
) -> Result<(Vec<u8>, bool), String> {
    let chunked = header(headers, "transfer-encoding")
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
    if chunked {
        return read_chunked(r);
    }
    let has_encoding = header(headers, "transfer-encoding").next().is_some();
    let mut lengths = header(headers, "content-length").flat_map(|v| v.split(','));
    let length = match lengths.next() {
        // A transfer coding other than chunked overrides the length
        // (RFC 9112 §6.3): the body runs to the end of the stream.
        Some(_) if has_encoding => None,
        Some(first) => {
            let first = first.trim();
            if lengths.any(|other| other.trim() != first) {
                return Err("conflicting Content-Length headers".to_owned());
            }
            Some(
                first
                    .parse::<u64>()
                    .map_err(|_| format!("malformed Content-Length {first:?}"))?,
            )
        }
        None => None,
    };
    let mut body = Vec::new();
    match length {
        Some(len) => {
            let want = len.min(MAX_BODY as u64);
            r.take(want)
                .read_to_end(&mut body)
                .map_err(|e| e.to_string())?;
            if (body.len() as u64) < want {
                return Err(format!(
                    "the connection closed after {} of {len} bytes",
                    body.len()
                ));
            }
            Ok((body, len > MAX_BODY as u64))
        }
        None => {
            r.take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map_err(|e| e.to_string())?;
            let truncated = body.len() > MAX_BODY;
            body.truncate(MAX_BODY);
            Ok((body, truncated))
        }
    }
}

fn read_chunked(r: &mut impl BufRead) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    loop {
        let mut budget = MAX_CHUNK_LINE;
        let line = read_line(r, &mut budget)?.ok_or("the connection closed inside the body")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| format!("malformed chunk size {size_text:?}"))?;
        if size == 0 {
            // Trailers carry nothing a check looks at, and the connection
            // closes after them: read no further.
            return Ok((body, false));
        }
        let room = (MAX_BODY - body.len()) as u64;
        let want = size.min(room);
        let before = body.len();
        r.take(want)
            .read_to_end(&mut body)
            .map_err(|e| e.to_string())?;
        if ((body.len() - before) as u64) < want {
            return Err("the connection closed inside a chunk".to_owned());
        }
        if size > room {
            return Ok((body, true));
        }
        let mut budget = 2;
        if read_line(r, &mut budget)?.as_deref() != Some("") {
            return Err("a chunk does not end where its size says".to_owned());
        }
    }
}

/// Like [`exchange`] for an `https://` URL, through the `curl` found as
/// `program` on the `PATH`. `Err` only when that program cannot be run.
pub fn curl(
    program: &str,
    url: &str,
    method: &str,
    user_agent: &str,
    timeout: Duration,
) -> Result<Answer, io::Error> {
    let ms = timeout.as_millis();
    let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
    let mut cmd = Command::new(program);
    // `-q` (first, or curl ignores it) skips ~/.curlrc, which could add
    // options this reading of the output does not expect; `--globoff`
    // keeps `[` and `{` in a URL literal; `--proto` forbids anything but
    // TLS, whatever the URL turns into.
    cmd.args(["-q", "-sS", "--globoff", "--proto", "=https"])
        .args(["--suppress-connect-headers", "-A", user_agent, "-m"])
        .arg(&seconds)
        .arg(if method == "HEAD" {
            "--head"
        } else {
            "--include"
        })
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut out = Vec::new();
    let limit = (MAX_HEAD + MAX_BODY + 1) as u64;
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(limit).read_to_end(&mut out);
    }
    let cut_short = out.len() as u64 == limit;
    if cut_short {
        // Enough read; curl would otherwise block writing the rest.
        let _ = child.kill();
    }
    let mut err = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(MAX_HEAD as u64).read_to_end(&mut err);
    }
    let status = child.wait()?;
    if !cut_short && !status.success() {
        // curl's first line says what failed; the rest is advice on
        // certificates a report does not need.
        let why = String::from_utf8_lossy(&err)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let why = if why.is_empty() {
            format!("curl failed ({status})")
        } else {
            why
        };
        // Exit 3: curl found the URL malformed, which retrying cannot fix.
        if status.code() == Some(3) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        return Ok(Answer::failed(None, why));
    }
    Ok(parse_curl_output(&out))
}

/// Splits what `curl --include` printed into the final status and body:
/// headers as received (interim `1xx` blocks too), then the decoded body.
fn parse_curl_output(mut out: &[u8]) -> Answer {
    loop {
        let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Answer::failed(None, "curl printed no HTTP answer".to_owned());
        };
        let first_line = out[..end].split(|b| *b == b'\n').next().unwrap_or_default();
        let status = match parse_status_line(String::from_utf8_lossy(first_line).trim_end()) {
            Ok(s) => s,
            Err(e) => return Answer::failed(None, e),
        };
        out = &out[end + 4..];
        if !(100..200).contains(&status) || status == 101 {
            let truncated = out.len() > MAX_BODY;
            return Answer {
                status: Some(status),
                body: out[..out.len().min(MAX_BODY)].to_vec(),
                truncated,
                error: None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_what_goes_on_the_wire() {
        let t = Target::parse("http://example.org:8080/a/b?x=1#frag").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("example.org", 8080, "example.org:8080", "/a/b?x=1")
        );
        let t = Target::parse("https://example.org").unwrap();
        assert_eq!(
            (t.scheme, t.port, t.path.as_str()),
            (Scheme::Https, 443, "/")
        );
        let t = Target::parse("http://h?q").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/?q"));
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        for bad in [
            "ftp://h/",
            "HTTP//h",
            "http://",
            "http:///path",
            "http://h:0/",
            "http://h:70000/",
            "http://h:x/",
            "http://user:pw@h/",
            "http://h/a b",
            "http://h/\r\nX-Evil: 1",
            "http://hé/",
            "http://[::1/",
            "http://[nope]/",
            "http://[::1]x/",
            "http://h:1:2/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn curl_output_skips_interim_answers() {
        let a = parse_curl_output(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2 200 \r\ncontent-type: text/plain\r\n\r\nhello",
        );
        assert_eq!((a.status, a.body.as_slice()), (Some(200), &b"hello"[..]));
        assert!(a.error.is_none());
        assert!(parse_curl_output(b"garbage").error.is_some());
    }
}
