//! The one log format of every Bulkhead binary (`bulkhead`, `containerd-shim-bulkhead-v2`,
//! `bulkhead-vmm`, `bulkhead-agent`), and the one way an error is printed with its causes.
//!
//! Text, the default, one line per record:
//!
//! ```text
//! 2026-12-01T18:26:50.123456Z INFO  bulkhead: pulling docker.io/library/busybox:latest
//! [    0.041000] INFO  bulkhead-vmm: vcpus: 1 started
//! ```
//!
//! `<time> <LEVEL> <binary>: <message>`. The time is the UTC wall clock, except for binaries
//! whose log is read as a timeline ([`Clock`]): the VMM counts from its own start (its boot
//! phases), the agent from the guest's boot (it lines up with the kernel's printk times).
//!
//! JSON lines ([`Format::Json`], chosen with `--log-format json`, the configuration's
//! `log_format` or `BULKHEAD_LOG_FORMAT=json`), for containerd and log collectors:
//!
//! ```text
//! {"time":"2026-12-01T18:26:50.123456Z","uptime":0.041000,"level":"info","binary":"bulkhead-vmm","target":"bulkhead_vmm::builder","msg":"vcpus: 1 started"}
//! ```
//!
//! `time` is always the wall clock; `uptime` (seconds) is there when the binary's clock is
//! not the wall clock.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The environment variable every binary reads for its [`Format`] (a flag or the
/// configuration file, where a binary has them, win over it).
pub const FORMAT_ENV: &str = "BULKHEAD_LOG_FORMAT";

/// How records are written (`text` or `json`; with the `serde` feature, also as a
/// configuration value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Format {
    /// `<time> <LEVEL> <binary>: <message>`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// The format named by [`FORMAT_ENV`]; `None` when it is unset or empty.
    pub fn from_env() -> Result<Option<Format>, ParseFormatError> {
        match std::env::var(FORMAT_ENV) {
            Ok(v) if !v.is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format name other than `text` or `json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseFormatError(pub String);

impl fmt::Display for ParseFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown log format {:?} (text or json)", self.0)
    }
}

impl std::error::Error for ParseFormatError {}

impl FromStr for Format {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Format, ParseFormatError> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(ParseFormatError(s.to_owned())),
        }
    }
}

/// The time a text line starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clock {
    /// UTC wall clock, RFC 3339 with microseconds.
    #[default]
    Wall,
    /// `[    0.041000]`: seconds since [`Logger::init`] (the VMM's boot phases).
    SinceStart,
    /// `[   12.345678]`: seconds of `CLOCK_MONOTONIC`, which in a guest is the time since
    /// boot and lines up with the kernel's printk times (the agent).
    Monotonic,
}

/// Where a [`Logger`] writes: the process's stderr, or any writer (a file, a FIFO, the
/// serial console, an inherited descriptor).
pub enum Target {
    Stderr,
    Writer(Box<dyn Write + Send>),
}

/// A `log` backend in the one format. Build it, then [`Logger::init`] it once, first thing
/// in `main`.
pub struct Logger {
    binary: String,
    level: LevelFilter,
    libraries: Option<LevelFilter>,
    format: Format,
    clock: Clock,
    out: Mutex<Option<Box<dyn Write + Send>>>,
}

static START: OnceLock<Instant> = OnceLock::new();

impl Logger {
    /// A text logger for `binary` at `level`, writing to stderr, with the wall clock.
    pub fn new(binary: impl Into<String>, level: LevelFilter) -> Logger {
        Logger {
            binary: binary.into(),
            level,
            libraries: None,
            format: Format::Text,
            clock: Clock::Wall,
            out: Mutex::new(None),
        }
    }

    pub fn format(mut self, format: Format) -> Logger {
        self.format = format;
        self
    }

    pub fn clock(mut self, clock: Clock) -> Logger {
        self.clock = clock;
        self
    }

    pub fn target(mut self, target: Target) -> Logger {
        self.out = Mutex::new(match target {
            Target::Stderr => None,
            Target::Writer(w) => Some(w),
        });
        self
    }

    /// The most verbose level for records of other crates (targets not starting with
    /// `bulkhead`); by default the same as ours.
    pub fn libraries(mut self, level: LevelFilter) -> Logger {
        self.libraries = Some(level);
        self
    }

    /// Installs this logger process-wide. A second call keeps the first logger and only
    /// sets the level.
    pub fn init(self) {
        START.get_or_init(Instant::now);
        let level = self.level;
        let _ = log::set_boxed_logger(Box::new(self));
        log::set_max_level(level);
    }

    /// The line (with its newline) this logger writes for `record` at `now`.
    pub fn line(&self, record: &Record<'_>, now: Now) -> String {
        let uptime = match self.clock {
            Clock::Wall => None,
            Clock::SinceStart => Some(now.since_start),
            Clock::Monotonic => Some(now.monotonic),
        };
        match self.format {
            Format::Text => {
                let time = match uptime {
                    None => rfc3339(now.wall),
                    Some(t) => format!("[{:5}.{:06}]", t.as_secs(), t.subsec_micros()),
                };
                format!(
                    "{time} {:<5} {}: {}\n",
                    record.level(),
                    self.binary,
                    record.args()
                )
            }
            Format::Json => {
                let mut s = String::with_capacity(160);
                s.push_str("{\"time\":\"");
                s.push_str(&rfc3339(now.wall));
                s.push('"');
                if let Some(t) = uptime {
                    s.push_str(&format!(
                        ",\"uptime\":{}.{:06}",
                        t.as_secs(),
                        t.subsec_micros()
                    ));
                }
                s.push_str(",\"level\":\"");
                s.push_str(level_name(record.level()));
                s.push_str("\",\"binary\":");
                json_string(&mut s, &self.binary);
                s.push_str(",\"target\":");
                json_string(&mut s, record.target());
                s.push_str(",\"msg\":");
                json_string(&mut s, &record.args().to_string());
                s.push_str("}\n");
                s
            }
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let max = match self.libraries {
            Some(l) if !metadata.target().starts_with("bulkhead") => l.min(self.level),
            _ => self.level,
        };
        metadata.level() <= max && metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(record, Now::get());
        // One write per line, so lines of several threads do not interleave.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        match out.as_mut() {
            Some(w) => {
                let _ = w.write_all(line.as_bytes());
                let _ = w.flush();
            }
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {
        if let Some(w) = self.out.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = w.flush();
        }
    }
}

/// The clocks a line may show, read once per record.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub wall: SystemTime,
    pub since_start: Duration,
    pub monotonic: Duration,
}

impl Now {
    pub fn get() -> Now {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Now {
            wall: SystemTime::now(),
            since_start: since_start(),
            monotonic: Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.max(0) as u32),
        }
    }
}

/// Time since the logger was installed (or since the first call of this function).
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// RFC 3339 UTC with microseconds: `2026-12-01T18:26:50.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Appends `v` as a JSON string literal.
fn json_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An error and its causes on one line, outermost first, joined by `": "`. A cause whose
/// text the line already ends with (a transparent wrapper repeats its source) or that is
/// empty is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !s.is_empty() && !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Now {
        Now {
            // 2026-12-01T18:26:50.123456Z
            wall: SystemTime::UNIX_EPOCH + Duration::new(1_796_149_610, 123_456_789),
            since_start: Duration::from_micros(41_000),
            monotonic: Duration::from_micros(12_003_456),
        }
    }

    fn line(logger: &Logger, level: Level, target: &str, msg: &str) -> String {
        logger.line(
            &Record::builder()
                .args(format_args!("{msg}"))
                .level(level)
                .target(target)
                .build(),
            now(),
        )
    }

    #[test]
    fn text_lines_start_with_the_binarys_clock() {
        let wall = Logger::new("bulkhead", LevelFilter::Info);
        assert_eq!(
            line(&wall, Level::Info, "bulkhead::pull", "pulling"),
            "2026-12-01T18:26:50.123456Z INFO  bulkhead: pulling\n"
        );
        let vmm = Logger::new("bulkhead-vmm", LevelFilter::Info).clock(Clock::SinceStart);
        assert_eq!(
            line(&vmm, Level::Warn, "bulkhead_vmm", "vcpus: 1 started"),
            "[    0.041000] WARN  bulkhead-vmm: vcpus: 1 started\n"
        );
        let agent = Logger::new("bulkhead-agent", LevelFilter::Info).clock(Clock::Monotonic);
        assert_eq!(
            line(&agent, Level::Info, "bulkhead_agent", "hello"),
            "[   12.003456] INFO  bulkhead-agent: hello\n"
        );
    }

    #[test]
    fn json_lines_escape_and_carry_the_wall_clock() {
        let vmm = Logger::new("bulkhead-vmm", LevelFilter::Info)
            .clock(Clock::SinceStart)
            .format(Format::Json);
        assert_eq!(
            line(&vmm, Level::Error, "bulkhead_vmm::x", "a \"b\"\n\\c\u{1}"),
            "{\"time\":\"2026-12-01T18:26:50.123456Z\",\"uptime\":0.041000,\"level\":\"error\",\
             \"binary\":\"bulkhead-vmm\",\"target\":\"bulkhead_vmm::x\",\
             \"msg\":\"a \\\"b\\\"\\n\\\\c\\u0001\"}\n"
        );
        let cli = Logger::new("bulkhead", LevelFilter::Info).format(Format::Json);
        assert_eq!(
            line(&cli, Level::Debug, "hyper", "x"),
            "{\"time\":\"2026-12-01T18:26:50.123456Z\",\"level\":\"debug\",\
             \"binary\":\"bulkhead\",\"target\":\"hyper\",\"msg\":\"x\"}\n"
        );
    }

    #[test]
    fn library_records_can_be_held_to_a_lower_level() {
        log::set_max_level(LevelFilter::Trace);
        let l = Logger::new("bulkhead-agent", LevelFilter::Debug).libraries(LevelFilter::Warn);
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(l.enabled(&meta(Level::Debug, "bulkhead_agent::sandbox")));
        assert!(!l.enabled(&meta(Level::Trace, "bulkhead_agent::sandbox")));
        assert!(!l.enabled(&meta(Level::Info, "ttrpc::server")));
        assert!(l.enabled(&meta(Level::Warn, "ttrpc::server")));
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("text".parse(), Ok(Format::Text));
        assert_eq!("JSON".parse(), Ok(Format::Json));
        assert_eq!(
            "xml".parse::<Format>().unwrap_err().to_string(),
            "unknown log format \"xml\" (text or json)"
        );
        assert_eq!(Format::Json.to_string(), "json");
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59.000000Z");
    }

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chains_join_causes_once() {
        let e = E(
            "start sandbox",
            Some(Box::new(E(
                "spawn vmm",
                Some(Box::new(E("spawn vmm", Some(Box::new(E("", None)))))),
            ))),
        );
        assert_eq!(error_chain(&e), "start sandbox: spawn vmm");
        let e = E("a", Some(Box::new(E("b", Some(Box::new(E("c", None)))))));
        assert_eq!(error_chain(&e), "a: b: c");
    }
}
