//! Logging set-up: tracing to stderr, and under systemd's journal a `<N>` syslog priority prefix on
//! every line (sd-daemon(3)), so `journalctl -u beltcam -p warning` shows beltcam's warnings (the
//! journal otherwise stores every line of a service's stderr at priority info). Also
//! [`RateLimit`], which every warning that can repeat per frame or per connection goes through.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The syslog priority of a tracing level, as sd-daemon(3) prefixes read it.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether stderr is the journal: `JOURNAL_STREAM` names stderr's device and inode (systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    #[allow(clippy::useless_conversion)] // st_dev and st_ino are u32 on some 32-bit targets
    match nix::sys::stat::fstat(2) {
        Ok(st) => {
            dev.parse::<u64>().ok() == Some(u64::from(st.st_dev))
                && ino.parse::<u64>().ok() == Some(u64::from(st.st_ino))
        }
        Err(_) => false,
    }
}

/// Prefixes each event with `<N>` and formats the rest with `inner`.
pub struct JournalPrefix<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for JournalPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Changes the running filter (a reload's `log.level`); set by `init`.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Parses a level or filter directive, with the config's one-line error.
fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(filter)
        .map_err(|e| format!("config error: log.level: {filter:?} is not a level or filter ({e})"))
}

/// Installs the global subscriber. `filter` is a level or tracing filter directive.
pub fn init(filter: &str) -> Result<(), String> {
    let filter = parse_filter(filter)?;
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    macro_rules! install {
        ($builder:expr) => {{
            let b = $builder.with_filter_reloading();
            let handle = b.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.init();
        }};
    }
    if journal {
        // The journal stamps time itself.
        let format = tracing_subscriber::fmt::format().without_time();
        install!(builder.event_format(JournalPrefix(format)));
    } else {
        install!(builder);
    }
    Ok(())
}

/// Replaces the log filter of the running process (a reload that changed `log.level`).
pub fn set_filter(filter: &str) -> Result<(), String> {
    let f = parse_filter(filter)?;
    match SET_FILTER.get() {
        Some(set) => set(f),
        None => Err("logging is not initialised".into()),
    }
}

/// How often a repeated warning is logged at most, unless its call site says otherwise.
pub const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// A warning that can repeat (each failed accept, each oversize frame): its first occurrence is
/// logged, later ones are counted, and at most once per `every` one more line is logged with the
/// count held back since the previous line. Lock-free and allocation-free, so it can sit in a
/// `static` beside the call site and be hit from every thread:
///
/// ```
/// use beltcam::logging::RateLimit;
/// static ACCEPT: RateLimit = RateLimit::new(beltcam::logging::REPEAT_EVERY);
/// if let Some(held_back) = ACCEPT.allow() {
///     tracing::warn!(held_back, "accept failed");
/// }
/// ```
pub struct RateLimit {
    every_ms: u64,
    /// Milliseconds since `epoch()` (plus one, so 0 means "never logged") when the next line may go.
    next_ms: AtomicU64,
    held: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimit {
    pub const fn new(every: Duration) -> Self {
        RateLimit {
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held_back)` when this occurrence is to be logged (with how many were not, since the
    /// last logged one); `None` when it is only counted.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed().as_millis() as u64 + 1)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        // One thread wins the slot; the others count themselves as held back.
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.every_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::AcqRel));
        }
        self.held.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_logged_first_then_once_per_period_with_the_count() {
        let r = RateLimit::new(Duration::from_secs(10));
        assert_eq!(r.allow_at(1), Some(0), "the first occurrence is logged");
        // 100 more within the period: counted only.
        assert!((0..100).all(|i| r.allow_at(2 + i * 50).is_none()));
        assert_eq!(
            r.allow_at(10_001),
            Some(100),
            "then one line with the count"
        );
        assert_eq!(r.allow_at(10_002), None);
        assert_eq!(r.allow_at(20_001), Some(1));
        // Quiet for a long time: the next one is logged at once, with nothing held back.
        assert_eq!(r.allow_at(1_000_000), Some(0));
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn prefix_is_written_before_the_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(JournalPrefix(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(camera = "front", "camera offline");
            tracing::info!("serving");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("<4> WARN"), "{text}");
        assert!(lines[0].contains("camera offline"), "{text}");
        assert!(lines[1].starts_with("<6> INFO"), "{text}");
    }
}
