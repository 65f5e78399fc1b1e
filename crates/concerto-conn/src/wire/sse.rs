//! An incremental Server-Sent Events parser (the framing both providers stream in).
//!
//! Bytes may arrive split anywhere — inside a line, between `\r` and `\n`, inside a UTF-8
//! character — so lines are collected as bytes and decoded only when complete. Events end
//! at a blank line; `data:` lines of one event are joined with `\n`; lines starting with
//! `:` are comments; `id:` and `retry:` are ignored (nothing here reconnects).

use super::WireError;

/// Largest line or event this parser buffers; a stream that exceeds it is refused rather
/// than allowed to grow without bound.
pub(crate) const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, empty when the event named none.
    pub(crate) event: String,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// The parser state between chunks.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// The bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`, so a leading `\n` of the next one belongs to it.
    after_cr: bool,
    /// Whether the first line has been seen (a UTF-8 byte order mark may precede it).
    started: bool,
    /// The current event's name.
    event: String,
    /// The current event's data, `None` until a `data` line arrives.
    data: Option<String>,
    /// How many `data` lines the current event has (they are joined with `\n`).
    data_lines: usize,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub(crate) fn new() -> SseParser {
        SseParser::default()
    }

    /// Consumes `bytes`, appending every event they complete to `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), WireError> {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some((&b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = rest.split_at(pos);
            self.push_bytes(head)?;
            self.end_line(out)?;
            let (terminator, tail) = match tail.split_first() {
                Some((&t, tail)) => (t, tail),
                None => break,
            };
            rest = tail;
            if terminator == b'\r' {
                match rest.split_first() {
                    Some((&b'\n', tail)) => rest = tail,
                    Some(_) => {}
                    None => {
                        self.after_cr = true;
                        return Ok(());
                    }
                }
            }
        }
        self.push_bytes(rest)
    }

    /// The stream ended: completes an unterminated last line and dispatches an event that
    /// lacked its closing blank line (some servers end that way).
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), WireError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.line.len().saturating_add(bytes.len()) > MAX_EVENT_BYTES {
            return Err(WireError::Malformed(format!(
                "stream line longer than {} MiB",
                MAX_EVENT_BYTES / (1024 * 1024)
            )));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), WireError> {
        let raw = std::mem::take(&mut self.line);
        let text = String::from_utf8(raw)
            .map_err(|_| WireError::Malformed("stream line is not valid UTF-8".to_string()))?;
        let mut line = text.as_str();
        if !self.started {
            self.started = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if data.len().saturating_add(value.len()) > MAX_EVENT_BYTES {
                    return Err(WireError::Malformed(format!(
                        "stream event larger than {} MiB",
                        MAX_EVENT_BYTES / (1024 * 1024)
                    )));
                }
                if self.data_lines > 0 {
                    data.push('\n');
                }
                data.push_str(value);
                self.data_lines += 1;
            }
            "event" => self.event = value.to_string(),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        self.data_lines = 0;
        if let Some(data) = self.data.take() {
            out.push(SseEvent { event, data });
        }
    }
}
