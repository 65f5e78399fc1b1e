//! A live status line for a run (`concerto run` on a terminal, or with `--progress`): the
//! agent calls in flight and done, retries and fallbacks, tokens and cost so far, and the
//! time since the run started, drawn with `indicatif`.
//!
//! [`StatusLine`] is a `tracing_subscriber` layer that counts from the spans of
//! [`vm::SPAN_TARGET`](crate::vm::SPAN_TARGET): an `agent_call` span that opens is a call
//! in flight and one that closes is a call done (failed when it carries `error.type`); its
//! `gen_ai.usage.*` and `concerto.cost_usd` fields give the tokens and the cost, and
//! `concerto.usage.estimated` marks its tokens as an estimate. An `llm_attempt` span with
//! `concerto.attempt` above 1 is a retry, and the first attempt on a fallback connection
//! (`concerto.fallback` above 0) is a fallback. Fields count whether they are given when the
//! span opens or recorded later.
//!
//! The line looks like this (`~` before the tokens when any count is an estimate, `cost ?`
//! instead of the dollars when any call's cost is unknown, the failed calls and the
//! fallbacks only when there are some):
//!
//! ```text
//! ⠙ 1m05s · calls 1 in flight, 4 done (1 failed) · retries 2 · fallbacks 1 · tokens ~5230 · $0.0123
//! ```

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};
use parking_lot::Mutex;
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, field::Field, field::Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::TextOut;

/// How often the line is redrawn: the spinner turns and the elapsed time moves while the
/// run waits on a slow server.
const TICK: Duration = Duration::from_millis(100);

/// The widest line a plain (non-terminal) target is asked to fill.
const PLAIN_WIDTH: u16 = 500;

/// The live status line of a run: a `tracing_subscriber` layer that counts what the run's
/// spans report, and the handle that starts, shows and finishes the line. Clones share one
/// line and one count.
///
/// Install it (behind a filter passing [`vm::SPAN_TARGET`](crate::vm::SPAN_TARGET)) before
/// the run, call [`StatusLine::start`] when the run starts and [`StatusLine::finish`] when
/// it ends. Output written while the line is shown goes through [`StatusLine::writer`] or
/// [`StatusLine::text_out`], so that the line and that output do not overwrite each other.
#[derive(Clone)]
pub struct StatusLine {
    shared: Arc<Shared>,
}

struct Shared {
    bar: ProgressBar,
    counts: Arc<Mutex<Counts>>,
    /// Where the line is drawn, until [`StatusLine::start`] hands it to the bar.
    target: Mutex<Option<ProgressDrawTarget>>,
    /// Drawn over itself (cleared at the end), or written as plain lines (the last one left).
    terminal: bool,
}

/// What the line counts.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts {
    in_flight: u64,
    done: u64,
    failed: u64,
    retries: u64,
    fallbacks: u64,
    tokens: i64,
    /// Calls whose token counts include an estimate.
    estimated: u64,
    /// The sum of the known costs, in US dollars.
    cost_usd: f64,
    /// Calls whose cost is unknown.
    unknown_cost: u64,
}

impl Counts {
    /// The line's text after `elapsed` (without the spinner).
    fn render(&self, elapsed: Duration) -> String {
        let mut s = format!(
            "{} · calls {} in flight, {} done",
            clock(elapsed),
            self.in_flight,
            self.done
        );
        if self.failed > 0 {
            let _ = write!(s, " ({} failed)", self.failed);
        }
        let _ = write!(s, " · retries {}", self.retries);
        if self.fallbacks > 0 {
            let _ = write!(s, " · fallbacks {}", self.fallbacks);
        }
        let approx = if self.estimated > 0 { "~" } else { "" };
        let _ = write!(s, " · tokens {approx}{}", self.tokens);
        if self.unknown_cost > 0 {
            s.push_str(" · cost ?");
        } else {
            s.push_str(" · ");
            // Never below zero (the sum is kept by adding and taking away each call's cost).
            s.push_str(&dollars(self.cost_usd.max(0.0)));
        }
        s
    }
}

/// `12s`, `3m05s`, `1h02m`.
fn clock(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// `$0.0123`: four decimals, six below a hundredth of a cent (so a small cost is not shown
/// as zero).
fn dollars(usd: f64) -> String {
    if usd > 0.0 && usd < 0.0001 {
        format!("${usd:.6}")
    } else {
        format!("${usd:.4}")
    }
}

impl StatusLine {
    /// A line drawn over itself on stderr, for a terminal: [`StatusLine::finish`] clears it.
    pub fn stderr() -> StatusLine {
        StatusLine::with_target(ProgressDrawTarget::stderr_with_hz(20), true)
    }

    /// A line written to `out` as plain text, for a pipe or a log: a new line each time what
    /// it shows changes (the elapsed time is in whole seconds, so about once a second while
    /// nothing else happens); [`StatusLine::finish`] writes the final state.
    pub fn lines(out: impl Write + Send + 'static) -> StatusLine {
        let plain = PlainLines(Mutex::new(Plain {
            out: Box::new(out),
            pending: String::new(),
            last: String::new(),
        }));
        StatusLine::with_target(
            ProgressDrawTarget::term_like_with_hz(Box::new(plain), 20),
            false,
        )
    }

    fn with_target(target: ProgressDrawTarget, terminal: bool) -> StatusLine {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let shown = counts.clone();
        let template = if terminal {
            "{spinner} {status}"
        } else {
            "{status}"
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key(
                "status",
                move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&shown.lock().render(state.elapsed()));
                },
            );
        let bar = ProgressBar::hidden();
        bar.set_style(style);
        StatusLine {
            shared: Arc::new(Shared {
                bar,
                counts,
                target: Mutex::new(Some(target)),
                terminal,
            }),
        }
    }

    /// Shows the line and starts its clock; before this it draws nothing. From then on it is
    /// redrawn at a steady tick, so the elapsed time moves while nothing else happens.
    pub fn start(&self) {
        let bar = &self.shared.bar;
        if let Some(target) = self.shared.target.lock().take() {
            bar.set_draw_target(target);
        }
        bar.reset_elapsed();
        bar.enable_steady_tick(TICK);
    }

    /// Stops the line: on a terminal it is cleared, leaving nothing behind; as plain lines,
    /// the final state is written (when it differs from the last line written).
    pub fn finish(&self) {
        let bar = &self.shared.bar;
        bar.disable_steady_tick();
        if self.shared.terminal {
            bar.finish_and_clear();
        } else {
            bar.finish();
        }
    }

    /// What the line shows now, without the spinner.
    pub fn text(&self) -> String {
        self.shared.counts.lock().render(self.shared.bar.elapsed())
    }

    /// Whether the line is on screen now (started and not finished).
    fn shown(&self) -> bool {
        let bar = &self.shared.bar;
        !bar.is_hidden() && !bar.is_finished()
    }

    /// A writer to `out` that leaves the line intact: while the line is shown, each complete
    /// line of text is written with the status line taken away (indicatif's `suspend`) and
    /// the status line is drawn again below it; text after the last newline is held while
    /// the line is shown, and written with its newline, or once the line is no longer shown
    /// (with the next write, on flush, or when the writer is dropped). While the line is not
    /// shown, text goes straight to `out`.
    pub fn writer<W: Write>(&self, out: W) -> Interleaved<W> {
        Interleaved {
            status: self.clone(),
            out,
            partial: Vec::new(),
        }
    }

    /// [`StatusLine::writer`] for a [`TextOut`] (the program's `print` and `std::log`
    /// output, see [`crate::ProcessSystem::with_output`]).
    pub fn text_out(&self, out: TextOut) -> TextOut {
        struct Sink(TextOut);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                (self.0)(&String::from_utf8_lossy(buf));
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = Mutex::new(self.writer(Sink(out)));
        Arc::new(move |text: &str| {
            let _ = writer.lock().write_all(text.as_bytes());
        })
    }

    /// Applies what a span says (as it opens, or recorded later) to the counts.
    fn apply(&self, state: &mut SpanState, seen: &Seen) {
        let mut c = self.shared.counts.lock();
        match state {
            SpanState::Call(call) => {
                if let Some(n) = seen.input_tokens {
                    c.tokens += n - call.input_tokens;
                    call.input_tokens = n;
                }
                if let Some(n) = seen.output_tokens {
                    c.tokens += n - call.output_tokens;
                    call.output_tokens = n;
                }
                if let Some(estimated) = seen.estimated
                    && estimated != call.estimated
                {
                    if estimated {
                        c.estimated += 1;
                    } else {
                        c.estimated -= 1;
                    }
                    call.estimated = estimated;
                }
                if let Some(cost) = seen.cost {
                    match call.cost {
                        Some(Cost::Usd(old)) => c.cost_usd -= old,
                        Some(Cost::Unknown) => c.unknown_cost -= 1,
                        None => {}
                    }
                    match cost {
                        Cost::Usd(new) => c.cost_usd += new,
                        Cost::Unknown => c.unknown_cost += 1,
                    }
                    call.cost = Some(cost);
                }
                call.failed |= seen.error;
            }
            SpanState::Attempt(attempt) => {
                if seen.attempt.is_some() {
                    attempt.attempt = seen.attempt;
                }
                if seen.fallback.is_some() {
                    attempt.fallback = seen.fallback;
                }
                if !attempt.retry_counted && attempt.attempt.is_some_and(|n| n > 1) {
                    attempt.retry_counted = true;
                    c.retries += 1;
                }
                if !attempt.fallback_counted
                    && attempt.attempt == Some(1)
                    && attempt.fallback.is_some_and(|n| n > 0)
                {
                    attempt.fallback_counted = true;
                    c.fallbacks += 1;
                }
            }
        }
    }
}

impl std::fmt::Debug for StatusLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusLine")
            .field("text", &self.text())
            .finish()
    }
}

/// The writer of [`StatusLine::writer`].
pub struct Interleaved<W: Write> {
    status: StatusLine,
    out: W,
    /// Text after the last newline, held while the line is shown.
    partial: Vec<u8>,
}

impl<W: Write> Write for Interleaved<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.status.shown() {
            if !self.partial.is_empty() {
                let held = std::mem::take(&mut self.partial);
                self.out.write_all(&held)?;
            }
            return self.out.write(buf);
        }
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            self.partial.extend_from_slice(buf);
            return Ok(buf.len());
        };
        let mut lines = std::mem::take(&mut self.partial);
        lines.extend_from_slice(&buf[..=end]);
        self.partial.extend_from_slice(&buf[end + 1..]);
        let out = &mut self.out;
        self.status.shared.bar.suspend(|| {
            out.write_all(&lines)?;
            out.flush()
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.status.shown() && !self.partial.is_empty() {
            let held = std::mem::take(&mut self.partial);
            self.out.write_all(&held)?;
        }
        self.out.flush()
    }
}

impl<W: Write> Drop for Interleaved<W> {
    fn drop(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.partial);
        let out = &mut self.out;
        let mut write = || {
            out.write_all(&held)?;
            out.flush()
        };
        let _ = if self.status.shown() {
            self.status.shared.bar.suspend(write)
        } else {
            write()
        };
    }
}

/// A plain-text draw target: each drawing that differs from the last becomes one line.
struct PlainLines(Mutex<Plain>);

struct Plain {
    out: Box<dyn Write + Send>,
    /// What the current drawing wrote so far.
    pending: String,
    /// The last line written.
    last: String,
}

impl std::fmt::Debug for PlainLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlainLines")
    }
}

impl TermLike for PlainLines {
    fn width(&self) -> u16 {
        PLAIN_WIDTH
    }

    // Cursor moves and clearing undo a drawing on a terminal; plain lines stay written.
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        let mut plain = self.0.lock();
        plain.pending.push_str(s);
        plain.pending.push('\n');
        Ok(())
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.lock().pending.push_str(s);
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let mut plain = self.0.lock();
        let drawn = std::mem::take(&mut plain.pending);
        for line in drawn.split('\n') {
            let line = line.rsplit('\r').next().unwrap_or("").trim_end();
            if line.is_empty() || line == plain.last {
                continue;
            }
            writeln!(plain.out, "{line}")?;
            plain.last = line.to_string();
        }
        plain.out.flush()
    }
}

/// A cost as a span gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cost {
    Usd(f64),
    Unknown,
}

/// The fields of interest among those a span gives at once.
#[derive(Debug, Default)]
struct Seen {
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    estimated: Option<bool>,
    cost: Option<Cost>,
    error: bool,
    attempt: Option<i64>,
    fallback: Option<i64>,
}

impl Visit for Seen {
    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "gen_ai.usage.input_tokens" => self.input_tokens = Some(value),
            "gen_ai.usage.output_tokens" => self.output_tokens = Some(value),
            "concerto.attempt" => self.attempt = Some(value),
            "concerto.fallback" => self.fallback = Some(value),
            // A whole-dollar cost given as an integer.
            "concerto.cost_usd" => self.cost = Some(Cost::Usd(value as f64)),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "concerto.cost_usd" {
            self.cost = Some(Cost::Usd(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "concerto.usage.estimated" {
            self.estimated = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "error.type" => self.error = true,
            "concerto.cost_usd" => {
                self.cost = Some(value.parse().map_or(Cost::Unknown, Cost::Usd));
            }
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "error.type" => self.error = true,
            "concerto.cost_usd" => self.record_str(field, &format!("{value:?}")),
            _ => {}
        }
    }
}

/// What the layer keeps in the extensions of a span it counts.
enum SpanState {
    Call(CallState),
    Attempt(AttemptState),
}

/// An open agent call: what it has added to the counts so far.
#[derive(Default)]
struct CallState {
    input_tokens: i64,
    output_tokens: i64,
    estimated: bool,
    cost: Option<Cost>,
    failed: bool,
}

/// An HTTP attempt: which one, on which connection, and whether it was counted.
#[derive(Default)]
struct AttemptState {
    attempt: Option<i64>,
    fallback: Option<i64>,
    retry_counted: bool,
    fallback_counted: bool,
}

impl<S> Layer<S> for StatusLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        if meta.target() != concerto_vm::spans::TARGET {
            return;
        }
        let mut state = match meta.name() {
            "agent_call" => {
                self.shared.counts.lock().in_flight += 1;
                SpanState::Call(CallState::default())
            }
            "llm_attempt" => SpanState::Attempt(AttemptState::default()),
            _ => return,
        };
        let mut seen = Seen::default();
        attrs.record(&mut seen);
        self.apply(&mut state, &seen);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(state);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(state) = extensions.get_mut::<SpanState>() else {
            return;
        };
        let mut seen = Seen::default();
        values.record(&mut seen);
        self.apply(state, &seen);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(SpanState::Call(call)) = span.extensions_mut().remove::<SpanState>() else {
            return;
        };
        let mut c = self.shared.counts.lock();
        c.in_flight = c.in_flight.saturating_sub(1);
        c.done += 1;
        if call.failed {
            c.failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::field::Empty;
    use tracing_subscriber::layer::SubscriberExt;

    const TARGET: &str = concerto_vm::spans::TARGET;

    /// Runs `f` with `line` as the only layer of a fresh subscriber.
    fn with_line<R>(line: &StatusLine, f: impl FnOnce() -> R) -> R {
        let subscriber = tracing_subscriber::registry().with(line.clone());
        tracing::subscriber::with_default(subscriber, f)
    }

    /// An agent call span as the VM makes it (fields empty until recorded).
    fn call_span() -> tracing::Span {
        tracing::info_span!(
            target: TARGET,
            "agent_call",
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            concerto.usage.estimated = Empty,
            concerto.cost_usd = Empty,
            error.type = Empty,
        )
    }

    fn attempt_span(attempt: i64, fallback: i64) -> tracing::Span {
        tracing::info_span!(
            target: TARGET,
            "llm_attempt",
            concerto.attempt = attempt,
            concerto.fallback = fallback,
        )
    }

    fn counts(line: &StatusLine) -> Counts {
        line.shared.counts.lock().clone()
    }

    /// The text without its leading clock (`12s · `).
    fn body(line: &StatusLine) -> String {
        let text = line.text();
        text.split_once(" · ")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or(text)
    }

    #[test]
    fn calls_count_in_flight_while_open_and_done_when_closed() {
        let line = StatusLine::lines(std::io::sink());
        with_line(&line, || {
            let first = call_span();
            let second = call_span();
            assert_eq!(
                body(&line),
                "calls 2 in flight, 0 done · retries 0 · tokens 0 · $0.0000"
            );
            first.record("gen_ai.usage.input_tokens", 100i64);
            first.record("gen_ai.usage.output_tokens", 20i64);
            first.record("concerto.cost_usd", 0.0045);
            first.record("concerto.usage.estimated", false);
            drop(first);
            assert_eq!(
                body(&line),
                "calls 1 in flight, 1 done · retries 0 · tokens 120 · $0.0045"
            );
            second.record("error.type", "timeout");
            drop(second);
        });
        assert_eq!(
            body(&line),
            "calls 0 in flight, 2 done (1 failed) · retries 0 · tokens 120 · $0.0045"
        );
    }

    #[test]
    fn running_totals_recorded_again_replace_the_call_s_earlier_ones() {
        // The VM records a call's running totals after each of its requests.
        let line = StatusLine::lines(std::io::sink());
        with_line(&line, || {
            let call = call_span();
            call.record("gen_ai.usage.input_tokens", 10i64);
            call.record("concerto.cost_usd", 0.001);
            call.record("gen_ai.usage.input_tokens", 25i64);
            call.record("concerto.cost_usd", 0.003);
            assert_eq!(counts(&line).tokens, 25);
            assert!((counts(&line).cost_usd - 0.003).abs() < 1e-12);
            // A later request of an unpriced model makes the call's cost unknown.
            call.record("concerto.cost_usd", "unknown");
            assert_eq!(counts(&line).unknown_cost, 1);
            assert!(counts(&line).cost_usd.abs() < 1e-12);
        });
    }

    #[test]
    fn fields_given_when_the_span_opens_count_too() {
        let line = StatusLine::lines(std::io::sink());
        with_line(&line, || {
            let _call = tracing::info_span!(
                target: TARGET,
                "agent_call",
                gen_ai.usage.input_tokens = 7i64,
                gen_ai.usage.output_tokens = 5i64,
                concerto.usage.estimated = true,
                concerto.cost_usd = "unknown",
            );
            // An attempt whose number is recorded after it opens.
            let attempt = tracing::info_span!(
                target: TARGET,
                "llm_attempt",
                concerto.attempt = Empty,
                concerto.fallback = 0i64,
            );
            assert_eq!(counts(&line).retries, 0);
            attempt.record("concerto.attempt", 2i64);
            assert_eq!(
                body(&line),
                "calls 1 in flight, 0 done · retries 1 · tokens ~12 · cost ?"
            );
        });
    }

    #[test]
    fn retries_and_fallbacks_are_counted_from_the_attempts() {
        let line = StatusLine::lines(std::io::sink());
        with_line(&line, || {
            // Own connection: first attempt, one retry; then a fallback's first attempt and
            // its retry.
            for (attempt, fallback) in [(1, 0), (2, 0), (1, 1), (2, 1)] {
                let span = attempt_span(attempt, fallback);
                // Recording the same values again does not count twice.
                span.record("concerto.attempt", attempt);
            }
        });
        let c = counts(&line);
        assert_eq!((c.retries, c.fallbacks), (2, 1));
        assert_eq!(
            body(&line),
            "calls 0 in flight, 0 done · retries 2 · fallbacks 1 · tokens 0 · $0.0000"
        );
    }

    #[test]
    fn spans_of_other_targets_and_names_are_not_counted() {
        let line = StatusLine::lines(std::io::sink());
        with_line(&line, || {
            let _other = tracing::info_span!(target: "elsewhere", "agent_call");
            let _request = tracing::info_span!(target: TARGET, "llm_request");
        });
        assert_eq!(counts(&line), Counts::default());
    }

    #[test]
    fn the_line_reads_as_the_module_doc_shows() {
        let counts = Counts {
            in_flight: 1,
            done: 4,
            failed: 1,
            retries: 2,
            fallbacks: 1,
            tokens: 5230,
            estimated: 1,
            cost_usd: 0.0123,
            unknown_cost: 0,
        };
        assert_eq!(
            counts.render(Duration::from_secs(65)),
            "1m05s · calls 1 in flight, 4 done (1 failed) · retries 2 · fallbacks 1 · \
             tokens ~5230 · $0.0123"
        );
    }

    #[test]
    fn the_clock_and_the_dollars_read_as_people_write_them() {
        assert_eq!(clock(Duration::from_millis(12_900)), "12s");
        assert_eq!(clock(Duration::from_secs(65)), "1m05s");
        assert_eq!(clock(Duration::from_secs(3720)), "1h02m");
        assert_eq!(dollars(0.0123), "$0.0123");
        assert_eq!(dollars(0.000006), "$0.000006");
        assert_eq!(dollars(0.0), "$0.0000");
    }

    /// A shared in-memory byte buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock()).to_string()
        }
    }

    #[test]
    fn plain_lines_show_each_change_once_and_end_with_the_final_state() {
        let out = Buffer::default();
        let line = StatusLine::lines(out.clone());
        with_line(&line, || {
            let call = call_span();
            // Nothing is drawn before the start.
            std::thread::sleep(TICK * 3);
            assert_eq!(out.text(), "");
            line.start();
            std::thread::sleep(TICK * 3);
            call.record("gen_ai.usage.input_tokens", 3i64);
            std::thread::sleep(TICK * 3);
            drop(call);
            line.finish();
        });
        let text = out.text();
        // Without the clock (a slow machine may pass a second).
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(" · ").map_or(l, |(_, rest)| rest))
            .collect();
        let mut distinct = lines.clone();
        distinct.dedup();
        assert_eq!(
            distinct,
            [
                "calls 1 in flight, 0 done · retries 0 · tokens 0 · $0.0000",
                "calls 1 in flight, 0 done · retries 0 · tokens 3 · $0.0000",
                "calls 0 in flight, 1 done · retries 0 · tokens 3 · $0.0000",
            ],
            "{text}"
        );
    }

    /// A terminal screen: rows of characters, a cursor, and what indicatif and the
    /// interleaved writer do to them.
    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<ScreenState>>);

    #[derive(Default)]
    struct ScreenState {
        rows: Vec<Vec<char>>,
        row: usize,
        col: usize,
    }

    impl ScreenState {
        fn put(&mut self, s: &str) {
            for ch in s.chars() {
                match ch {
                    '\r' => self.col = 0,
                    '\n' => {
                        self.row += 1;
                        self.col = 0;
                    }
                    ch => {
                        while self.rows.len() <= self.row {
                            self.rows.push(Vec::new());
                        }
                        let row = &mut self.rows[self.row];
                        while row.len() <= self.col {
                            row.push(' ');
                        }
                        row[self.col] = ch;
                        self.col += 1;
                    }
                }
            }
        }
    }

    impl Screen {
        /// The rows as text, trailing blanks and trailing empty rows removed.
        fn rows(&self) -> Vec<String> {
            let state = self.0.lock();
            let mut rows: Vec<String> = state
                .rows
                .iter()
                .map(|r| r.iter().collect::<String>().trim_end().to_string())
                .collect();
            while rows.last().is_some_and(String::is_empty) {
                rows.pop();
            }
            rows
        }
    }

    impl std::fmt::Debug for Screen {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Screen")
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            let mut s = self.0.lock();
            s.row = s.row.saturating_sub(n);
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.0.lock().row += n;
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
            self.0.lock().col += n;
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
            let mut s = self.0.lock();
            s.col = s.col.saturating_sub(n);
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            let mut state = self.0.lock();
            state.put(s);
            state.put("\n");
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().put(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            let mut s = self.0.lock();
            let row = s.row;
            if let Some(r) = s.rows.get_mut(row) {
                r.clear();
            }
            s.col = 0;
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().put(&String::from_utf8_lossy(buf));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn on_a_terminal_output_goes_above_the_line_and_the_line_is_cleared_at_the_end() {
        let screen = Screen::default();
        let line = StatusLine::with_target(
            ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 20),
            true,
        );
        let mut out = line.writer(screen.clone());
        with_line(&line, || {
            // Before the start, text goes straight through.
            out.write_all(b"before\n").unwrap();
            line.start();
            let call = call_span();
            std::thread::sleep(TICK * 3);
            let rows = screen.rows();
            assert_eq!(rows.len(), 2, "{rows:?}");
            assert!(
                rows[1]
                    .ends_with("0s · calls 1 in flight, 0 done · retries 0 · tokens 0 · $0.0000"),
                "{rows:?}"
            );
            // Written in two pieces: the first is held until its newline.
            out.write_all(b"[emit:a] ").unwrap();
            out.flush().unwrap();
            assert_eq!(screen.rows().len(), 2, "{:?}", screen.rows());
            out.write_all(b"1\n[emit:b] 2\n").unwrap();
            drop(call);
            std::thread::sleep(TICK * 3);
            let rows = screen.rows();
            assert_eq!(
                rows[..3],
                ["before", "[emit:a] 1", "[emit:b] 2"],
                "{rows:?}"
            );
            assert!(
                rows[3].ends_with("calls 0 in flight, 1 done · retries 0 · tokens 0 · $0.0000"),
                "{rows:?}"
            );
            assert_eq!(rows.len(), 4, "{rows:?}");
            // Text without its newline, then the end: held until a flush after the line was
            // cleared; text written after that goes straight through.
            out.write_all(b"tail").unwrap();
            let mut late = line.writer(screen.clone());
            late.write_all(b"late").unwrap();
            line.finish();
            assert_eq!(screen.rows(), ["before", "[emit:a] 1", "[emit:b] 2"]);
            out.flush().unwrap();
            assert_eq!(
                screen.rows(),
                ["before", "[emit:a] 1", "[emit:b] 2", "tail"]
            );
            out.write_all(b" end\n").unwrap();
            // A writer holding text is dropped: the text is written.
            drop(late);
        });
        drop(out);
        assert_eq!(
            screen.rows(),
            ["before", "[emit:a] 1", "[emit:b] 2", "tail end", "late"]
        );
    }

    #[test]
    fn text_out_keeps_the_line_intact_too() {
        let screen = Screen::default();
        let line = StatusLine::with_target(
            ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 20),
            true,
        );
        let inner = screen.clone();
        let print: TextOut = Arc::new(move |text: &str| inner.0.lock().put(text));
        let print = line.text_out(print);
        line.start();
        std::thread::sleep(TICK * 2);
        print("hello ");
        print("world\n");
        std::thread::sleep(TICK * 2);
        let rows = screen.rows();
        assert_eq!(rows[0], "hello world", "{rows:?}");
        assert!(rows[1].contains("calls 0 in flight"), "{rows:?}");
        line.finish();
        assert_eq!(screen.rows(), ["hello world"]);
    }
}
