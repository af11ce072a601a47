//! Prometheus metrics of Postrider, registered once and shared as typed handles.
//!
//! # Brief overview
//! [`Metrics`] owns a private [`prometheus::Registry`] and pre-built handles for every series the
//! relay exports. Labels are bounded by construction: sources, results and status classes come
//! from fixed sets, never from recipients, message ids or raw peer input.
//! [`Metrics::render`] produces the text exposition format served at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the relay exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `postrider_messages_accepted_total{source}`: messages durably queued, by `smtp` / `http`.
    pub messages_accepted: IntCounterVec,
    /// `postrider_delivery_attempts_total{result}`: per-recipient attempt results
    /// (`delivered`, `deferred`, `bounced`).
    pub delivery_attempts: IntCounterVec,
    /// `postrider_bounces_generated_total`: delivery status notifications queued for senders.
    pub bounces_generated: IntCounter,
    /// `postrider_queue_messages`: messages accepted and not yet finished.
    pub queue_messages: IntGauge,
    /// `postrider_delivery_duration_seconds`: one delivery attempt to one destination domain.
    pub delivery_duration: Histogram,
    /// `postrider_smtp_sessions_total`: SMTP submission sessions opened.
    pub smtp_sessions: IntCounter,
    /// `postrider_smtp_rejections_total{reason}`: SMTP commands or messages refused, by reason.
    pub smtp_rejections: IntCounterVec,
    /// `postrider_http_requests_total{route,status}`: API requests by matched route and status class.
    pub http_requests: IntCounterVec,
    /// `postrider_store_flush_seconds`: time of one group-commit flush (fsync) of the store.
    pub store_flush_duration: Histogram,
    /// `postrider_store_flush_batch`: submissions made durable by one flush.
    pub store_flush_batch: Histogram,
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("static metric definition");
            registry.register(Box::new(h.clone())).expect("metric registered once");
            h
        };
        let latency = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

        let messages_accepted = counter_vec("postrider_messages_accepted_total", "Messages durably queued, by submission source.", &["source"]);
        let delivery_attempts = counter_vec("postrider_delivery_attempts_total", "Per-recipient delivery attempt results.", &["result"]);
        for r in ["delivered", "deferred", "bounced"] {
            delivery_attempts.with_label_values(&[r]);
        }
        for s in ["smtp", "http"] {
            messages_accepted.with_label_values(&[s]);
        }
        let bounces_generated = IntCounter::new("postrider_bounces_generated_total", "Delivery status notifications queued for senders.").expect("static metric definition");
        registry.register(Box::new(bounces_generated.clone())).expect("metric registered once");
        let queue_messages = IntGauge::new("postrider_queue_messages", "Messages accepted and not yet finished.").expect("static metric definition");
        registry.register(Box::new(queue_messages.clone())).expect("metric registered once");
        let delivery_duration = histogram("postrider_delivery_duration_seconds", "Duration of one delivery attempt to one destination domain.", latency.clone());
        let smtp_sessions = IntCounter::new("postrider_smtp_sessions_total", "SMTP submission sessions opened.").expect("static metric definition");
        registry.register(Box::new(smtp_sessions.clone())).expect("metric registered once");
        let smtp_rejections = counter_vec("postrider_smtp_rejections_total", "SMTP commands or messages refused, by reason.", &["reason"]);
        let http_requests = counter_vec("postrider_http_requests_total", "API requests by route and status class.", &["route", "status"]);
        let store_flush_duration = histogram("postrider_store_flush_seconds", "Duration of one group-commit flush of the store.", latency);
        let store_flush_batch = histogram(
            "postrider_store_flush_batch",
            "Writes made durable by one group-commit flush.",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        );
        Metrics {
            registry,
            messages_accepted,
            delivery_attempts,
            bounces_generated,
            queue_messages,
            delivery_duration,
            smtp_sessions,
            smtp_rejections,
            http_requests,
            store_flush_duration,
            store_flush_batch,
        }
    }

    /// The registry, for adapters that register collectors of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format except on invalid metric families,
        // which static definitions rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_backbone_names() {
        let m = Metrics::new();
        m.messages_accepted.with_label_values(&["smtp"]).inc();
        m.delivery_duration.observe(0.2);
        let text = m.render();
        for name in [
            "postrider_messages_accepted_total{source=\"smtp\"} 1",
            "postrider_delivery_attempts_total{result=\"bounced\"} 0",
            "postrider_bounces_generated_total 0",
            "postrider_queue_messages 0",
            "postrider_delivery_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
