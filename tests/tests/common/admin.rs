//! The admin HTTP listener of test nodes: the argument that turns it on (on an ephemeral
//! loopback port, so that clusters of other tests are unaffected and no port is guessed),
//! finding the address a node bound from its log, a minimal HTTP/1.0 client, and a parser
//! of the Prometheus text exposition.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tests::cluster::{wait_for, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{OrFail, POLL};

/// Bound on one HTTP request to an admin listener.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest admin answer read.
const BODY_BYTES_MAX: usize = 4 << 20;

/// Server arguments that turn the admin listener on, on an ephemeral loopback port.
pub fn admin_args() -> Vec<String> {
    vec!["--admin-addr".into(), "127.0.0.1:0".into()]
}

/// Arguments for a cluster whose pages and metrics are checked against one leader: the
/// admin listener, and elections slow enough that a loaded machine does not change the
/// leader between two reads.
pub fn stable_admin_args() -> Vec<String> {
    let mut args = admin_args();
    args.extend(["--election-timeout-ms".into(), "2000..4000".into()]);
    args
}

/// The admin address node `id` logged last (`admin=HOST:PORT`), if it has logged one.
pub fn logged_admin_addr(cluster: &Cluster, id: u64) -> anyhow::Result<Option<SocketAddr>> {
    let log = std::fs::read_to_string(cluster.log_path(id))
        .with_context(|| format!("reading the log of node {id}"))?;
    let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("admin HTTP listener"))
    else {
        return Ok(None);
    };
    let Some(at) = line.find("admin=") else {
        bail!("no admin= field in {line:?}");
    };
    let addr = line[at + "admin=".len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default();
    Ok(Some(
        addr.parse()
            .with_context(|| format!("admin address in {line:?}"))?,
    ))
}

/// Waits (bounded) for node `id` to log its admin address.
pub async fn admin_addr(cluster: &Cluster, id: u64) -> SocketAddr {
    wait_for(
        &format!("node {id} to log its admin address"),
        Duration::from_secs(20),
        POLL,
        || async move { logged_admin_addr(cluster, id).ok().flatten() },
    )
    .await
    .or_fail(cluster, "admin address")
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: String,
}

/// `GET path` from `addr` with HTTP/1.0 (the server closes the connection after the
/// answer), bounded by [`HTTP_TIMEOUT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpAnswer> {
    tokio::time::timeout(HTTP_TIMEOUT, get(addr, path))
        .await
        .with_context(|| format!("GET {path} from {addr} took over {HTTP_TIMEOUT:?}"))?
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpAnswer> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(BODY_BYTES_MAX as u64)
        .read_to_end(&mut raw)
        .await?;
    let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of headers in {text:?}");
    };
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let content_type = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_string())
    });
    Ok(HttpAnswer {
        status,
        content_type,
        body: body.to_string(),
    })
}

/// Parses the Prometheus text exposition (and OpenMetrics' `# EOF`): every line must be a
/// comment (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or a sample `name{labels} value`.
/// Returns each series (`name{labels}` as written) with its value.
pub fn parse_prometheus(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut series = BTreeMap::new();
    let mut typed = 0;
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let word = comment.split_whitespace().next().unwrap_or_default();
            if !["HELP", "TYPE", "UNIT", "EOF"].contains(&word) {
                bail!("line {}: unknown comment {line:?}", n + 1);
            }
            typed += usize::from(word == "TYPE");
            continue;
        }
        let (name, value) = match line.rfind('}') {
            Some(end) => (&line[..=end], line[end + 1..].trim()),
            None => line
                .split_once(' ')
                .with_context(|| format!("line {}: no value in {line:?}", n + 1))?,
        };
        let metric = name.split('{').next().unwrap_or_default();
        let valid_name = !metric.is_empty()
            && metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !metric.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            bail!("line {}: bad metric name in {line:?}", n + 1);
        }
        let value = value.split_whitespace().next().unwrap_or_default();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("line {}: bad value in {line:?}", n + 1))?,
        };
        series.insert(name.to_string(), value);
    }
    if typed == 0 {
        bail!("no # TYPE line: not an exposition");
    }
    Ok(series)
}

/// The value of `series` (`name` or `name{labels}` as written) in `metrics`.
pub fn value(metrics: &BTreeMap<String, f64>, series: &str) -> Option<f64> {
    metrics.get(series).copied()
}

/// The sum of the values of every series of metric `name` (any labels).
pub fn sum_of(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    metrics
        .iter()
        .filter(|(s, _)| s.as_str() == name || s.starts_with(&format!("{name}{{")))
        .map(|(_, v)| *v)
        .sum()
}

/// The JSON body of an answer.
pub fn json(answer: &HttpAnswer) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(&answer.body).with_context(|| format!("not JSON: {:?}", answer.body))
}
