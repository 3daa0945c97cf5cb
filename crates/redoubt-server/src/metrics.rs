//! Prometheus metrics, served at `/metrics`. Labels are routes and status
//! codes, never identifiers: no metric can single out a user.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The method.
    pub method: String,
    /// The route template, such as `/v1/devices/{device_id}`.
    pub route: String,
    /// The status code.
    pub status: u16,
}

/// Labels of a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: String,
}

/// Labels of a purge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurgeLabels {
    /// What was purged.
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests served.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Request latency.
    pub http_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Envelope copies queued (one per recipient device).
    pub envelopes_queued: Counter,
    /// Envelope copies delivered and acknowledged.
    pub envelopes_delivered: Counter,
    /// Devices connected by WebSocket.
    pub connected_devices: Gauge,
    /// Devices registered.
    pub registrations: Counter,
    /// Key packages claimed.
    pub key_packages_claimed: Counter,
    /// Lookups and claims refused by a rate limit.
    pub rate_limited: Counter,
    /// Rows deleted by maintenance.
    pub purged: Family<PurgeLabels, Counter>,
    /// The key-transparency directory's newest published epoch.
    pub kt_epoch: Gauge,
    /// How long publishing an epoch took.
    pub kt_publish_seconds: Histogram,
    /// How many numbers the key-transparency directory holds.
    pub kt_directory_size: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("redoubt");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        let http_latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_latency.clone(),
        );
        let envelopes_queued = Counter::default();
        registry.register(
            "envelopes_queued",
            "Envelope copies queued, one per recipient device",
            envelopes_queued.clone(),
        );
        let envelopes_delivered = Counter::default();
        registry.register(
            "envelopes_delivered",
            "Envelope copies delivered and acknowledged",
            envelopes_delivered.clone(),
        );
        let connected_devices = Gauge::default();
        registry.register(
            "connected_devices",
            "Devices connected by WebSocket",
            connected_devices.clone(),
        );
        let registrations = Counter::default();
        registry.register(
            "device_registrations",
            "Devices registered",
            registrations.clone(),
        );
        let key_packages_claimed = Counter::default();
        registry.register(
            "key_packages_claimed",
            "Key packages claimed",
            key_packages_claimed.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Lookups and key-package claims refused by a rate limit",
            rate_limited.clone(),
        );
        let purged = Family::<PurgeLabels, Counter>::default();
        registry.register("purged_rows", "Rows deleted by maintenance", purged.clone());
        let kt_epoch = Gauge::default();
        registry.register(
            "kt_epoch",
            "The key-transparency directory's newest published epoch",
            kt_epoch.clone(),
        );
        let kt_publish_seconds = Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0]);
        registry.register(
            "kt_publish_seconds",
            "Time to publish one key-transparency epoch",
            kt_publish_seconds.clone(),
        );
        let kt_directory_size = Gauge::default();
        registry.register(
            "kt_directory_size",
            "Numbers in the key-transparency directory",
            kt_directory_size.clone(),
        );
        Self {
            registry: Arc::new(registry),
            http_requests,
            http_latency,
            envelopes_queued,
            envelopes_delivered,
            connected_devices,
            registrations,
            key_packages_claimed,
            rate_limited,
            purged,
            kt_epoch,
            kt_publish_seconds,
            kt_directory_size,
        }
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
