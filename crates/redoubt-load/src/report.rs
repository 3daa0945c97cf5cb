//! A run's results: what `BENCHMARKS.md` rows are made of, written as JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::Workload;

/// Delivery latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// A new latency histogram: 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `redoubt` or the peer's name.
    pub system: String,
    /// The server setup, such as "1 node, SQLite".
    pub setup: String,
    /// The workload.
    pub workload: Option<Workload>,
    /// Messages accepted by the server (one per upload, whatever the
    /// fan-out).
    pub messages_sent: u64,
    /// Deliveries expected (messages times recipients).
    pub deliveries_expected: u64,
    /// Distinct deliveries received.
    pub deliveries: u64,
    /// Deliveries received again (dropped by id, as clients do).
    pub duplicates: u64,
    /// Expected deliveries never received.
    pub missing: u64,
    /// Seconds senders were sending (the measurement window).
    pub seconds: f64,
    /// Deliveries per second over the window.
    pub deliveries_per_second: f64,
    /// Messages (uploads) per second over the window.
    pub messages_per_second: f64,
    /// End-to-end latency for devices that were online.
    pub latency: Latency,
    /// Server CPU seconds used in the window, all nodes.
    pub server_cpu_seconds: f64,
    /// Average server cores busy in the window.
    pub server_cores: f64,
    /// Peak resident memory of the server processes, summed, in MiB.
    pub server_peak_rss_mib: f64,
    /// Resident memory added by the connections, per connection, in KiB
    /// (idle scenario).
    pub rss_per_connection_kib: Option<f64>,
    /// Bytes the workload put in request and frame bodies.
    pub app_bytes: u64,
    /// Bytes over the loopback interface in the window (everything on it:
    /// client to server, server to database and bus).
    pub loopback_bytes: u64,
    /// Offline backlog: seconds to drain, and envelopes per second.
    pub drain_seconds: Option<f64>,
    /// Offline backlog drain rate.
    pub drain_per_second: Option<f64>,
    /// Calls that failed (each also counted once in `error_samples`).
    pub errors: u64,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
}

impl Report {
    /// Records an error, keeping a few distinct messages.
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        let m = message.into();
        if self.error_samples.len() < 5 && !self.error_samples.contains(&m) {
            self.error_samples.push(m);
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} ({}): {:.0} deliveries/s, {:.0} messages/s over {:.1}s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             server {:.2} cores, peak RSS {:.1} MiB; {} delivered, {} duplicates dropped, {} missing, {} errors",
            self.system,
            self.setup,
            self.deliveries_per_second,
            self.messages_per_second,
            self.seconds,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            self.server_cores,
            self.server_peak_rss_mib,
            self.deliveries,
            self.duplicates,
            self.missing,
            self.errors
        );
        if let Some(kib) = self.rss_per_connection_kib {
            s.push_str(&format!("; {kib:.1} KiB per connection"));
        }
        if let (Some(t), Some(r)) = (self.drain_seconds, self.drain_per_second) {
            s.push_str(&format!("; backlog drained in {t:.2}s ({r:.0}/s)"));
        }
        s
    }
}
