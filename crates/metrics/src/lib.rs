//! Prometheus metrics of Postrider, registered once and shared as typed handles.
//!
//! # Brief overview
//! [`Metrics`] owns a private [`prometheus::Registry`] and pre-built handles for every series the
//! relay exports. Labels are bounded by construction: sources, results and status classes come
//! from fixed sets, never from recipients, message ids or raw peer input.
//! [`Metrics::render`] produces the text exposition format served at `GET /metrics`.
//!
//! Besides the relay's own `postrider_*` series the registry holds the standard `process_*`
//! series (CPU seconds, resident memory, open file descriptors, start time) on Linux, and every
//! labelled counter starts with a zero series for each label value known up front, so that
//! dashboards and alerts see `0` rather than no data before the first event.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Per-recipient attempt results, the `result` label of the delivery counters.
pub const DELIVERY_RESULTS: [&str; 4] = ["delivered", "deferred", "bounced", "postponed"];

/// Enhanced status classes, the `status_class` label of `postrider_delivery_results_total`.
pub const STATUS_CLASSES: [&str; 3] = ["2.x", "4.x", "5.x"];

/// Failure categories, the `category` label of `postrider_bounces_total` (the labels of
/// `postrider_core::BounceCategory`; a delivery test checks they agree).
pub const BOUNCE_CATEGORIES: [&str; 11] = [
    "invalid_recipient",
    "mailbox_full",
    "spam_block",
    "policy",
    "dns",
    "tls",
    "rate_limited",
    "content",
    "auth",
    "network",
    "other",
];

/// Failure kinds, the `kind` label of `postrider_bounces_total`: `hard` (permanent failure or
/// expiry), `soft` (deferred, will be retried), `async` (reported later by a returned DSN).
pub const BOUNCE_KINDS: [&str; 3] = ["hard", "soft", "async"];

/// The `type` labels of `postrider_inbound_reports_total`: what a message received at the
/// bounce domain was, or `unmatched` when a DSN or complaint named no message of the queue.
pub const INBOUND_REPORT_TYPES: [&str; 5] = [
    "dsn",
    "complaint",
    "auto_reply",
    "unrecognised",
    "unmatched",
];

/// The `result` labels of `postrider_tls_policy_results_total` for MTA-STS: `success` and the
/// RFC 8460 result types a sender can observe.
pub const TLS_POLICY_RESULTS: [&str; 9] = [
    "success",
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

/// The `domain` label every domain beyond the tracked ones is counted under.
pub const OTHER_DOMAIN: &str = "other";

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
    /// `postrider_sandbox_captured_total{outcome}`: recipients of captured (sandbox) messages
    /// whose attempt was simulated instead of sent, by simulated outcome (`delivered`,
    /// `deferred`, `bounced`, `complained`).
    pub sandbox_captured: IntCounterVec,
    /// `postrider_queue_messages`: messages accepted and not yet finished.
    pub queue_messages: IntGauge,
    /// `postrider_delivery_duration_seconds`: one delivery attempt to one destination domain.
    pub delivery_duration: Histogram,
    /// `postrider_smtp_sessions_total`: SMTP submission sessions opened.
    pub smtp_sessions: IntCounter,
    /// `postrider_smtp_rejections_total{reason}`: SMTP commands or messages refused, by reason.
    pub smtp_rejections: IntCounterVec,
    /// `postrider_http_requests_total{route,status}`: API requests by matched route template
    /// and status code.
    pub http_requests: IntCounterVec,
    /// `postrider_http_request_duration_seconds{route,status}`: time to answer one API request,
    /// by matched route template (not the raw path, which would make the labels unbounded) and
    /// status code.
    pub http_request_duration: HistogramVec,
    /// `postrider_store_flush_seconds`: time of one group commit (journal write + fdatasync).
    pub store_flush_duration: Histogram,
    /// `postrider_store_flush_batch`: writes (submissions and recorded outcomes) made durable by
    /// one flush.
    pub store_flush_batch: Histogram,
    /// Journal records found damaged or missing when the queue was opened (each one an
    /// acknowledged write that could not be recovered); see `quarantine/` in the data directory.
    pub store_corrupt_records: IntCounter,

    // ---- operations metrics: queue shape, disk, build, SMTP transactions ----
    /// `postrider_queue_messages_by_state{state}`: pending messages by state (`queued`, `deferred`,
    /// `held`, `scheduled`), so dashboards can tell a backlog of retries from fresh mail.
    pub queue_messages_by_state: prometheus::IntGaugeVec,
    /// `postrider_queue_oldest_message_age_seconds`: age of the oldest pending message, held ones
    /// excluded (0 when nothing is pending); a steadily rising value means mail is stuck.
    pub queue_oldest_message_age: prometheus::Gauge,
    /// `postrider_data_dir_free_bytes`: free bytes on the file system holding `data_dir`, because
    /// a full disk stops the relay from accepting mail.
    pub data_dir_free_bytes: IntGauge,
    /// `postrider_store_size_bytes`: on-disk size of the queue database.
    pub store_size_bytes: IntGauge,
    /// `postrider_build_info{version}`: always 1; carries the running version as a label so
    /// dashboards and alerts can join on it and spot mixed versions during a rollout.
    pub build_info: prometheus::IntGaugeVec,
    /// `postrider_smtp_transactions_total{result}`: SMTP mail transactions by outcome
    /// (`accepted` = queued, `rejected` = refused by policy or limits, `failed` = aborted by an
    /// error such as a storage failure or a dropped connection).
    pub smtp_transactions: IntCounterVec,
    // ---- end of operations metrics ----

    // ---- SMTP abuse metrics ----
    /// `postrider_smtp_auth_failures_total{reason}`: AUTH attempts refused, by reason
    /// (`invalid_credentials` = checked and wrong, `locked_out` = refused unchecked during a
    /// lockout, `busy` = no password check could start in time), so guessing shows up.
    pub smtp_auth_failures: IntCounterVec,
    /// `postrider_smtp_auth_lockouts_total{scope}`: lockouts started after repeated AUTH
    /// failures, per client `address` or per `user`.
    pub smtp_auth_lockouts: IntCounterVec,
    /// `postrider_smtp_overload`: 1 while SMTP sessions are above the overload mark (idle
    /// sessions get short timeouts and may be closed for new clients), else 0.
    pub smtp_overload: IntGauge,
    // ---- end of SMTP abuse metrics ----

    // ---- delivery engine metrics ----
    /// `postrider_delivery_results_total{result,status_class}`: per-recipient attempt results
    /// (`delivered`, `deferred`, `bounced`, `postponed`) by the class of the enhanced status
    /// (`2.x`, `4.x`, `5.x`).
    pub delivery_results: IntCounterVec,
    /// `postrider_delivery_status_codes_total{code}`: per-recipient results by enhanced status
    /// code (`5.1.1`, `4.2.1`, …); codes with a subject above 7 or a detail above 30 count as
    /// `other`, which bounds the series.
    pub delivery_status_codes: IntCounterVec,
    /// `postrider_delivery_by_domain_total{domain,result}`: per-recipient results by recipient
    /// domain; only the first N distinct domains seen get their own label, the rest are `other`.
    pub delivery_by_domain: IntCounterVec,
    /// `postrider_bounces_total{category,kind}`: per-recipient failures by why they happened
    /// ([`BOUNCE_CATEGORIES`]) and how final they are ([`BOUNCE_KINDS`]).
    pub bounces: IntCounterVec,
    /// `postrider_outbound_connections`: outbound SMTP connections open, idle pooled ones included.
    pub outbound_connections: IntGauge,
    /// `postrider_dns_lookups_total{result}`: destination lookups by result (`ok`, `nxdomain`,
    /// `nodata`, `nullmx`, `servfail`, `timeout`, `error`).
    pub dns_lookups: IntCounterVec,
    /// `postrider_dns_cache_lookups_total{result}`: destination lookups answered from the
    /// resolver's answer cache (`hit`, waiting for a lookup in flight included) or by asking DNS
    /// (`miss`); a falling hit ratio means many new or short-TTL destinations.
    pub dns_cache_lookups: IntCounterVec,
    /// `postrider_destinations_suspended`: destinations currently suspended by the circuit breaker.
    pub destinations_suspended: IntGauge,
    /// `postrider_delivery_queue_time_seconds`: time from arrival to the final state of a message.
    pub delivery_queue_time: Histogram,
    /// `postrider_outbound_tls_total{result}`: outbound sessions opened, `tls` or `plaintext`.
    pub outbound_tls: IntCounterVec,
    /// `postrider_tls_policy_results_total{policy,result}`: outbound sessions and policy
    /// lookups held to a TLS policy (`policy` = `mta-sts`), by RFC 8460 result type
    /// (`success`, `starttls-not-supported`, `certificate-host-mismatch`, ...).
    pub tls_policy_results: IntCounterVec,
    /// `postrider_tls_reports_total{transport,result}`: SMTP TLS reports (RFC 8460) handed to
    /// a domain's report address, by `transport` (`https`, `mailto`) and `result` (`sent`,
    /// `failed`).
    pub tls_reports: IntCounterVec,
    // ---- end of delivery engine metrics ----

    // ---- webhook metrics ----
    /// `postrider_webhook_deliveries_total{result}`: webhook POST attempts by result
    /// (`delivered` = 2xx, `failed` = other status or transport error; retried later).
    pub webhook_deliveries: IntCounterVec,
    /// `postrider_webhook_dropped_total`: webhook deliveries given up after their retry
    /// lifetime (or dropped because the webhook is no longer configured).
    pub webhook_dropped: IntCounter,
    /// `postrider_webhook_outbox`: webhook deliveries waiting in the durable outbox.
    pub webhook_outbox: IntGauge,
    // ---- end of webhook metrics ----

    // ---- configuration reload metrics ----
    /// `postrider_config_reloads_total{result}`: configuration reloads, `ok` or `refused` (an
    /// invalid file; the running configuration stays).
    pub config_reloads: IntCounterVec,
    /// `postrider_config_last_reload_success_timestamp_seconds`: when the configuration in force
    /// was loaded (start-up or the last successful reload), in Unix seconds.
    pub config_last_reload_success: IntGauge,

    // ---- cluster mode ----
    /// `postrider_cluster_up`: 1 while this node reaches the cluster's Valkey/Redis, 0 while it
    /// runs degraded on local state (and always 0 on a single node).
    pub cluster_up: IntGauge,
    /// `postrider_inbound_reports_total{type}`: messages received at the bounce domain by what
    /// they were ([`INBOUND_REPORT_TYPES`]: `dsn`, `complaint`, `auto_reply`, `unrecognised`, or
    /// `unmatched` when a report named no message of the queue).
    pub inbound_reports: IntCounterVec,
    /// `postrider_complaints_total`: complaints (ARF feedback reports) recorded for messages.
    pub complaints: IntCounter,
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("static metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];

        let messages_accepted = counter_vec(
            "postrider_messages_accepted_total",
            "Messages durably queued, by submission source.",
            &["source"],
        );
        let delivery_attempts = counter_vec(
            "postrider_delivery_attempts_total",
            "Per-recipient delivery attempt results.",
            &["result"],
        );
        for r in ["delivered", "deferred", "bounced"] {
            delivery_attempts.with_label_values(&[r]);
        }
        for s in ["smtp", "http"] {
            messages_accepted.with_label_values(&[s]);
        }
        let sandbox_captured = counter_vec(
            "postrider_sandbox_captured_total",
            "Recipients of sandbox messages captured instead of sent, by simulated outcome.",
            &["outcome"],
        );
        for o in ["delivered", "deferred", "bounced", "complained"] {
            sandbox_captured.with_label_values(&[o]);
        }
        let bounces_generated = IntCounter::new(
            "postrider_bounces_generated_total",
            "Delivery status notifications queued for senders.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(bounces_generated.clone()))
            .expect("metric registered once");
        let store_corrupt_records = IntCounter::new(
            "postrider_store_corrupt_records_total",
            "Journal records found damaged or missing when the queue was opened.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(store_corrupt_records.clone()))
            .expect("metric registered once");
        let queue_messages = IntGauge::new(
            "postrider_queue_messages",
            "Messages accepted and not yet finished.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(queue_messages.clone()))
            .expect("metric registered once");
        let delivery_duration = histogram(
            "postrider_delivery_duration_seconds",
            "Duration of one delivery attempt to one destination domain.",
            latency.clone(),
        );
        let smtp_sessions = IntCounter::new(
            "postrider_smtp_sessions_total",
            "SMTP submission sessions opened.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(smtp_sessions.clone()))
            .expect("metric registered once");
        let smtp_rejections = counter_vec(
            "postrider_smtp_rejections_total",
            "SMTP commands or messages refused, by reason.",
            &["reason"],
        );
        // Storage refusals are exported from the start, so alerts on them see a zero first.
        for r in ["storage", "storage_unavailable"] {
            smtp_rejections.with_label_values(&[r]);
        }
        let http_requests = counter_vec(
            "postrider_http_requests_total",
            "API requests by route template and status code.",
            &["route", "status"],
        );
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "postrider_http_request_duration_seconds",
                "Time to answer one API request, by route template and status code.",
            )
            .buckets(latency.clone()),
            &["route", "status"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(http_request_duration.clone()))
            .expect("metric registered once");
        let store_flush_duration = histogram(
            "postrider_store_flush_seconds",
            "Duration of one group-commit flush of the store.",
            latency,
        );
        let store_flush_batch = histogram(
            "postrider_store_flush_batch",
            "Writes made durable by one group-commit flush.",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        );

        // ---- operations metrics ----
        let queue_messages_by_state = prometheus::IntGaugeVec::new(
            Opts::new(
                "postrider_queue_messages_by_state",
                "Pending messages by queue state.",
            ),
            &["state"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(queue_messages_by_state.clone()))
            .expect("metric registered once");
        for state in ["queued", "deferred", "held", "scheduled"] {
            queue_messages_by_state.with_label_values(&[state]);
        }
        let queue_oldest_message_age = prometheus::Gauge::new(
            "postrider_queue_oldest_message_age_seconds",
            "Age in seconds of the oldest pending message; 0 when the queue is empty.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(queue_oldest_message_age.clone()))
            .expect("metric registered once");
        let data_dir_free_bytes = IntGauge::new(
            "postrider_data_dir_free_bytes",
            "Free bytes on the file system holding data_dir.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(data_dir_free_bytes.clone()))
            .expect("metric registered once");
        let store_size_bytes = IntGauge::new(
            "postrider_store_size_bytes",
            "On-disk size of the queue database in bytes.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(store_size_bytes.clone()))
            .expect("metric registered once");
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "postrider_build_info",
                "Always 1; the running build's version as a label.",
            ),
            &["version"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let smtp_transactions = counter_vec(
            "postrider_smtp_transactions_total",
            "SMTP mail transactions by outcome: accepted, rejected, failed.",
            &["result"],
        );
        for r in ["accepted", "rejected", "failed"] {
            smtp_transactions.with_label_values(&[r]);
        }
        // ---- end of operations metrics ----

        // ---- SMTP abuse metrics ----
        let smtp_auth_failures = counter_vec(
            "postrider_smtp_auth_failures_total",
            "SMTP AUTH attempts refused, by reason: invalid_credentials, locked_out, busy.",
            &["reason"],
        );
        for r in ["invalid_credentials", "locked_out", "busy"] {
            smtp_auth_failures.with_label_values(&[r]);
        }
        let smtp_auth_lockouts = counter_vec(
            "postrider_smtp_auth_lockouts_total",
            "SMTP AUTH lockouts started after repeated failures, by scope: address, user.",
            &["scope"],
        );
        for s in ["address", "user"] {
            smtp_auth_lockouts.with_label_values(&[s]);
        }
        let smtp_overload = IntGauge::new(
            "postrider_smtp_overload",
            "1 while SMTP sessions are above the overload mark, else 0.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(smtp_overload.clone()))
            .expect("metric registered once");
        // Sessions closed to make room for new clients count as rejections.
        smtp_rejections.with_label_values(&["overload"]);
        // ---- end of SMTP abuse metrics ----

        // ---- delivery engine metrics ----
        let delivery_results = counter_vec(
            "postrider_delivery_results_total",
            "Per-recipient delivery attempt results by enhanced status class.",
            &["result", "status_class"],
        );
        let delivery_status_codes = counter_vec(
            "postrider_delivery_status_codes_total",
            "Per-recipient delivery results by enhanced status code.",
            &["code"],
        );
        let delivery_by_domain = counter_vec(
            "postrider_delivery_by_domain_total",
            "Per-recipient delivery results by recipient domain (bounded; the rest is other).",
            &["domain", "result"],
        );
        for result in DELIVERY_RESULTS {
            for class in STATUS_CLASSES {
                delivery_results.with_label_values(&[result, class]);
            }
            delivery_by_domain.with_label_values(&[OTHER_DOMAIN, result]);
        }
        delivery_status_codes.with_label_values(&["other"]);
        let bounces = counter_vec(
            "postrider_bounces_total",
            "Per-recipient delivery failures by category and kind (hard, soft, async).",
            &["category", "kind"],
        );
        for category in BOUNCE_CATEGORIES {
            for kind in BOUNCE_KINDS {
                bounces.with_label_values(&[category, kind]);
            }
        }
        let outbound_connections = IntGauge::new(
            "postrider_outbound_connections",
            "Outbound SMTP connections open, idle pooled ones included.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(outbound_connections.clone()))
            .expect("metric registered once");
        let dns_lookups = counter_vec(
            "postrider_dns_lookups_total",
            "Destination DNS lookups by result.",
            &["result"],
        );
        for r in [
            "ok", "nxdomain", "nodata", "nullmx", "servfail", "timeout", "error",
        ] {
            dns_lookups.with_label_values(&[r]);
        }
        let dns_cache_lookups = counter_vec(
            "postrider_dns_cache_lookups_total",
            "Destination lookups answered from the DNS answer cache (hit) or by asking DNS (miss).",
            &["result"],
        );
        for r in ["hit", "miss"] {
            dns_cache_lookups.with_label_values(&[r]);
        }
        let destinations_suspended = IntGauge::new(
            "postrider_destinations_suspended",
            "Destinations currently suspended by the circuit breaker.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(destinations_suspended.clone()))
            .expect("metric registered once");
        let delivery_queue_time = histogram(
            "postrider_delivery_queue_time_seconds",
            "Time from arrival to the final state of a message.",
            vec![
                0.1,
                0.5,
                1.0,
                5.0,
                30.0,
                60.0,
                300.0,
                900.0,
                3600.0,
                4.0 * 3600.0,
                86_400.0,
                5.0 * 86_400.0,
            ],
        );
        let outbound_tls = counter_vec(
            "postrider_outbound_tls_total",
            "Outbound SMTP sessions by transport protection.",
            &["result"],
        );
        for r in ["tls", "plaintext"] {
            outbound_tls.with_label_values(&[r]);
        }
        let tls_policy_results = counter_vec(
            "postrider_tls_policy_results_total",
            "Outbound sessions and policy lookups held to a TLS policy, by RFC 8460 result type.",
            &["policy", "result"],
        );
        for r in TLS_POLICY_RESULTS {
            tls_policy_results.with_label_values(&["mta-sts", r]);
        }
        let tls_reports = counter_vec(
            "postrider_tls_reports_total",
            "SMTP TLS reports handed to report addresses, by transport and result.",
            &["transport", "result"],
        );
        for transport in ["https", "mailto"] {
            for result in ["sent", "failed"] {
                tls_reports.with_label_values(&[transport, result]);
            }
        }
        // ---- end of delivery engine metrics ----

        // ---- webhook metrics ----
        let webhook_deliveries = counter_vec(
            "postrider_webhook_deliveries_total",
            "Webhook POST attempts by result: delivered (2xx) or failed.",
            &["result"],
        );
        for r in ["delivered", "failed"] {
            webhook_deliveries.with_label_values(&[r]);
        }
        let webhook_dropped = IntCounter::new(
            "postrider_webhook_dropped_total",
            "Webhook deliveries given up after their retry lifetime.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(webhook_dropped.clone()))
            .expect("metric registered once");
        let webhook_outbox = IntGauge::new(
            "postrider_webhook_outbox",
            "Webhook deliveries waiting in the outbox.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(webhook_outbox.clone()))
            .expect("metric registered once");
        // ---- end of webhook metrics ----
        register_process_collector(&registry);
        let config_reloads = counter_vec(
            "postrider_config_reloads_total",
            "Configuration reloads by result: ok, or refused (the running configuration stays).",
            &["result"],
        );
        for r in ["ok", "refused"] {
            config_reloads.with_label_values(&[r]);
        }
        let config_last_reload_success = IntGauge::new(
            "postrider_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (start or last successful reload).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(config_last_reload_success.clone()))
            .expect("metric registered once");
        let cluster_up = IntGauge::new(
            "postrider_cluster_up",
            "1 while the cluster's Valkey/Redis answers, 0 while degraded or single-node.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(cluster_up.clone()))
            .expect("metric registered once");
        let inbound_reports = counter_vec(
            "postrider_inbound_reports_total",
            "Messages received at the bounce domain, by type (dsn, complaint, auto_reply, unrecognised, unmatched).",
            &["type"],
        );
        for t in INBOUND_REPORT_TYPES {
            inbound_reports.with_label_values(&[t]);
        }
        let complaints = IntCounter::new(
            "postrider_complaints_total",
            "Complaints (ARF feedback reports) recorded for messages.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(complaints.clone()))
            .expect("metric registered once");
        Metrics {
            registry,
            messages_accepted,
            delivery_attempts,
            bounces_generated,
            sandbox_captured,
            queue_messages,
            delivery_duration,
            smtp_sessions,
            smtp_rejections,
            http_requests,
            http_request_duration,
            store_flush_duration,
            store_flush_batch,
            store_corrupt_records,
            // operations metrics
            queue_messages_by_state,
            queue_oldest_message_age,
            data_dir_free_bytes,
            store_size_bytes,
            build_info,
            smtp_transactions,
            // SMTP abuse metrics
            smtp_auth_failures,
            smtp_auth_lockouts,
            smtp_overload,
            // delivery engine metrics
            delivery_results,
            delivery_status_codes,
            delivery_by_domain,
            bounces,
            outbound_connections,
            dns_lookups,
            dns_cache_lookups,
            destinations_suspended,
            delivery_queue_time,
            outbound_tls,
            tls_policy_results,
            tls_reports,
            webhook_deliveries,
            webhook_dropped,
            config_reloads,
            config_last_reload_success,
            webhook_outbox,
            cluster_up,
            inbound_reports,
            complaints,
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

/// Adds the standard `process_*` series of this process (CPU seconds, resident and virtual
/// memory, open and maximum file descriptors, threads, start time) to `registry`.
#[cfg(target_os = "linux")]
fn register_process_collector(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    // Registration only fails for a duplicate, which one collector per registry rules out.
    let _ = registry.register(Box::new(collector));
}

/// The `process_*` series come from `/proc`, so other systems export none.
#[cfg(not(target_os = "linux"))]
fn register_process_collector(_registry: &Registry) {}

impl Metrics {
    /// Starts a zero series of `postrider_http_requests_total` and
    /// `postrider_http_request_duration_seconds` for `route` answered with `status`, so
    /// that a route's panels and alerts have data before its first request.
    pub fn init_http_route(&self, route: &str, status: &str) {
        self.http_requests.with_label_values(&[route, status]);
        self.http_request_duration
            .with_label_values(&[route, status]);
    }

    /// Starts a zero series of `postrider_smtp_rejections_total` for each of `reasons`.
    pub fn init_smtp_rejections<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for reason in reasons {
            self.smtp_rejections.with_label_values(&[reason]);
        }
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
            "postrider_sandbox_captured_total{outcome=\"complained\"} 0",
            "postrider_queue_messages 0",
            "postrider_delivery_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn renders_operations_names() {
        let m = Metrics::new();
        m.queue_messages_by_state
            .with_label_values(&["deferred"])
            .set(3);
        m.queue_oldest_message_age.set(42.5);
        m.data_dir_free_bytes.set(1_073_741_824);
        m.store_size_bytes.set(4096);
        m.smtp_transactions.with_label_values(&["rejected"]).inc();
        let text = m.render();
        let build = format!(
            "postrider_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for name in [
            "postrider_queue_messages_by_state{state=\"deferred\"} 3",
            "postrider_queue_messages_by_state{state=\"held\"} 0",
            "postrider_queue_messages_by_state{state=\"queued\"} 0",
            "postrider_queue_messages_by_state{state=\"scheduled\"} 0",
            "postrider_queue_oldest_message_age_seconds 42.5",
            "postrider_data_dir_free_bytes 1073741824",
            "postrider_store_size_bytes 4096",
            build.as_str(),
            "postrider_smtp_transactions_total{result=\"accepted\"} 0",
            "postrider_smtp_transactions_total{result=\"failed\"} 0",
            "postrider_smtp_transactions_total{result=\"rejected\"} 1",
            "postrider_smtp_rejections_total{reason=\"storage\"} 0",
            "postrider_smtp_rejections_total{reason=\"storage_unavailable\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn exports_process_series() {
        let text = Metrics::new().render();
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_start_time_seconds",
            ] {
                assert!(text.contains(name), "missing {name} in\n{text}");
            }
        }
    }

    #[test]
    fn labelled_counters_start_at_zero_for_known_labels() {
        let m = Metrics::new();
        m.init_http_route("/v1/messages", "202");
        m.init_smtp_rejections(["relay_denied"]);
        let text = m.render();
        for name in [
            "postrider_delivery_results_total{result=\"postponed\",status_class=\"4.x\"} 0",
            "postrider_delivery_results_total{result=\"delivered\",status_class=\"2.x\"} 0",
            "postrider_delivery_by_domain_total{domain=\"other\",result=\"bounced\"} 0",
            "postrider_delivery_status_codes_total{code=\"other\"} 0",
            "postrider_messages_accepted_total{source=\"http\"} 0",
            "postrider_http_requests_total{route=\"/v1/messages\",status=\"202\"} 0",
            "postrider_http_request_duration_seconds_count{route=\"/v1/messages\",status=\"202\"} 0",
            "postrider_smtp_rejections_total{reason=\"relay_denied\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn renders_smtp_abuse_names() {
        let m = Metrics::new();
        m.smtp_auth_lockouts.with_label_values(&["user"]).inc();
        m.smtp_overload.set(1);
        let text = m.render();
        for name in [
            "postrider_smtp_auth_failures_total{reason=\"invalid_credentials\"} 0",
            "postrider_smtp_auth_failures_total{reason=\"locked_out\"} 0",
            "postrider_smtp_auth_failures_total{reason=\"busy\"} 0",
            "postrider_smtp_auth_lockouts_total{scope=\"address\"} 0",
            "postrider_smtp_auth_lockouts_total{scope=\"user\"} 1",
            "postrider_smtp_overload 1",
            "postrider_smtp_rejections_total{reason=\"overload\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
