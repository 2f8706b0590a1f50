//! Logging. Everything goes to stderr; nothing secret is ever passed to a log macro, and
//! request spans (at debug) and failed requests' lines carry method, path and request id only.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the subscriber; hold the guard until exit, when it writes out what is queued.
///
/// Lines are formatted where they are logged but written by a thread of their own, in
/// batches: written in place, every line cost the request that logged it a system call
/// and the wake-up of whatever reads stderr (journald, a container runtime), with the
/// stderr lock shared by all workers. A full queue makes the logging thread wait rather
/// than drop the line; it holds 16 Ki lines, not the crate's default 128 Ki, whose slots
/// alone are 4 MiB of resident memory.
pub fn init(filter: &str, format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(16 * 1024)
        .thread_name("keygate-log")
        .finish(BufWriter::new(std::io::stderr()));
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    // try_init: a second call (tests, or the CLI after serve) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}

/// An error and its causes on one line, each said once: many errors already include their
/// cause's text in their own (`database unavailable: {0}`), and `{:#}` would repeat it.
pub struct Chain<'a>(pub &'a anyhow::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = String::new();
        for cause in self.0.chain() {
            let text = cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() || line.contains(&text) {
                continue;
            }
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("database unavailable: {0}")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let e = anyhow::Error::new(Outer(io)).context("cannot open the database");
        let said = Chain(&e).to_string();
        assert_eq!(said, "cannot open the database: database unavailable: Connection refused (os error 111)");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(Chain(&e).to_string(), "outer: inner");
    }
}
