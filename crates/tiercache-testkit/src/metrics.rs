//! Scraping a server's admin port (`GET /metrics`), as Prometheus does, for tests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer of `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The HTTP status code.
    pub status: u16,
    /// The `content-type` header (empty without one).
    pub content_type: String,
    /// The body: Prometheus text on 200.
    pub body: String,
}

impl Scrape {
    /// The sum of every sample of `name`, whatever its labels (0 without one).
    pub fn sum(&self, name: &str) -> f64 {
        self.body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// Sends `GET /metrics` over HTTP/1.1 (connection closed after) to the admin port at `addr`,
/// with `Authorization: Bearer <token>` when given.
///
/// # Errors
///
/// Connecting, writing or reading fails, or the answer is not an HTTP response.
pub async fn scrape_metrics(addr: SocketAddr, token: Option<&str>) -> std::io::Result<Scrape> {
    let mut stream = TcpStream::connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: tiercache\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    Ok(Scrape {
        status,
        content_type,
        body: body.to_string(),
    })
}
