//! Shared terminal output: progress bars, problem reports, number formatting.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How many problem lines are printed before only counting them: enough to see the
/// pattern, few enough that a file of a million bad lines does not flood the terminal.
pub const PROBLEMS_SHOWN_MAX: u64 = 20;

/// A progress bar on stderr, hidden when stderr is not a terminal or when asked.
pub fn progress_bar(len: Option<u64>, template: &str, quiet: bool) -> ProgressBar {
    if quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(template)
        .expect("progress templates are fixed and valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints to stderr without tearing a visible progress bar.
pub fn eprint_above(bar: &ProgressBar, text: &str) {
    if bar.is_hidden() {
        eprintln!("{text}");
    } else {
        bar.suspend(|| eprintln!("{text}"));
    }
}

/// Problems (bad lines, rejected events) reported to stderr: the first
/// [`PROBLEMS_SHOWN_MAX`] in full, then only counted.
#[derive(Debug)]
pub struct ProblemReport {
    bar: ProgressBar,
    problems_count: AtomicU64,
}

impl ProblemReport {
    pub fn new(bar: ProgressBar) -> ProblemReport {
        ProblemReport {
            bar,
            problems_count: AtomicU64::new(0),
        }
    }

    pub fn report(&self, text: &str) {
        let previous = self.problems_count.fetch_add(1, Ordering::Relaxed);
        if previous < PROBLEMS_SHOWN_MAX {
            eprint_above(&self.bar, text);
        }
    }

    /// Says how many problems were not shown, if any.
    pub fn finish(&self) {
        let count = self.problems_count.load(Ordering::Relaxed);
        if count > PROBLEMS_SHOWN_MAX {
            eprint_above(
                &self.bar,
                &format!(
                    "... and {} more rejected lines not shown ({} in all)",
                    group_thousands(count - PROBLEMS_SHOWN_MAX),
                    group_thousands(count)
                ),
            );
        }
    }
}

/// Writes one line to stdout. A closed pipe (e.g. `| head`) is reported as
/// `BrokenPipe` so the caller can stop quietly instead of panicking like `println!`.
pub fn print_line(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()
}

/// Writes `contents` to `path` through a temporary file in the same directory and a
/// rename, so a crash or a full disk never leaves a half-written proof or checkpoint
/// where a whole one was (a kept checkpoint is overwritten by each newer one).
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(file_name);
    temporary_name.push(format!(".tmp-{}", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    std::fs::rename(&temporary, path)
}

/// `1234567` as `1,234,567`.
pub fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Bytes as MiB, rounded.
pub fn mebibytes(bytes: u64) -> String {
    group_thousands((bytes + (1 << 19)) >> 20)
}

/// Bytes with a binary unit: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration as `3d 04h 05m 06s`, leaving off leading zero units.
pub fn human_duration(duration: Duration) -> String {
    let total_s = duration.as_secs();
    let (days, hours, minutes, seconds) = (
        total_s / 86_400,
        total_s / 3_600 % 24,
        total_s / 60 % 60,
        total_s % 60,
    );
    if days > 0 {
        format!("{days}d {hours:02}h {minutes:02}m {seconds:02}s")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m {seconds:02}s")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(81_234), "81,234");
        assert_eq!(group_thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(3_725)), "1h 02m 05s");
        assert_eq!(
            human_duration(Duration::from_secs(90_061)),
            "1d 01h 01m 01s"
        );
    }

    #[test]
    fn bytes_get_a_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 << 20), "12.0 MiB");
    }

    #[test]
    fn mebibytes_round() {
        assert_eq!(mebibytes(312 * 1024 * 1024), "312");
        assert_eq!(mebibytes(1024 * 1024 / 2), "1");
    }
}
