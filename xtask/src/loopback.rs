//! What the xtask's loopback servers (the benchmark's OTLP sink, the Phoenix check's mock
//! LLM) share: reading one HTTP request.

use std::io::Read;

/// Reads one HTTP request from `stream`: its head (lower-cased) and the body its
/// `content-length` announces; `None` when the connection ends or fails first.
pub(crate) fn read_request(stream: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if raw.len() >= end + 4 + len {
            return Some((head, raw[end + 4..end + 4 + len].to_vec()));
        }
    }
}
