//! One attempt of one leased message: group pending recipients by domain, deliver to the domains
//! concurrently (bounded), then record the outcome, the retry decision and any failure notice in
//! one store call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postrider_core::{
    Address, BounceCategory, Domain, EnhancedStatus, MessageId, QueuedMessage, RecipientRequest,
    RecipientState, RecipientStatus, ReplyClass, ReversePath, SmtpReply, Timestamp,
    failure_category,
};
use postrider_metrics::Metrics;
use postrider_store::{AttemptUpdate, Lease, RecordOutcome, Store};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::capture::{Simulated, capture_outcomes};
use crate::health::{Breaker, SuspendedDestination};
use crate::mx::MxResolver;
use crate::outcome::{
    NoticeContext, RecipientOutcome, apply_attempt, delay_notice, failure_notice, success_notice,
};
use crate::pool::Pool;
use crate::rate::RateLimiter;
use crate::settings::DeliverySettings;
use crate::smtp::{Transaction, deliver_to_domain, relay_label};
use crate::tls::TlsTrust;
use arc_swap::ArcSwap;

/// State shared by the scheduler and its workers.
pub(crate) struct Shared {
    /// This state itself, for tasks that outlive the call that starts them (background
    /// policy refreshes).
    pub(crate) me: std::sync::Weak<Shared>,
    pub(crate) store: Store,
    pub(crate) resolver: Arc<dyn MxResolver>,
    /// The settings in force; a reload replaces them (see [`Shared::settings`]).
    pub(crate) current: ArcSwap<DeliverySettings>,
    pub(crate) metrics: Metrics,
    /// Messages with a running attempt, with the newest lease taken for each. If a lease expires
    /// while its attempt still runs and the scheduler leases the message again, no second attempt
    /// starts; the newer lease replaces the old one here and the running attempt records with it.
    pub(crate) inflight: Mutex<HashMap<MessageId, Lease>>,
    /// Outbound connections: reuse and limits.
    pub(crate) pool: Pool,
    /// Destination health.
    pub(crate) breaker: Mutex<Breaker>,
    /// Per-domain message rates.
    pub(crate) rate: Mutex<RateLimiter>,
    /// Per-domain session limits (only domains with `max_connections`).
    pub(crate) domain_limits: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// Outbound TLS trust.
    pub(crate) tls: TlsTrust,
    /// Domains with their own metric label (bounded by `metrics_max_domains`).
    pub(crate) metric_domains: Mutex<HashSet<String>>,
    /// When the MTA-STS policy fetch of a domain last failed (bounded, see [`crate::mta_sts`]).
    pub(crate) sts_fetch_failures: Mutex<HashMap<String, Instant>>,
    /// Serialises MTA-STS policy fetches per domain (striped by domain hash, so bounded): a
    /// burst of messages to a domain with a new policy fetches it once.
    pub(crate) sts_fetch_locks: crate::mta_sts::FetchLocks,
    /// Session counts for TLS reports; `None` when `[tls_reports]` is off (set at start).
    pub(crate) tls_counter: Option<crate::tls_report::counter::SessionCounter>,
    /// Held while TLS reports are being sent (one run at a time).
    pub(crate) tls_report_sending: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("inflight", &self.inflight_count())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The settings in force now. An attempt takes them once at its start, so a reload applies
    /// from the next attempt on.
    pub(crate) fn settings(&self) -> Arc<DeliverySettings> {
        self.current.load_full()
    }

    /// Registers a new lease. Returns `true` when no attempt of this message runs (start one),
    /// `false` when one does (its lease was refreshed instead).
    pub(crate) fn begin(&self, lease: Lease) -> bool {
        let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = !map.contains_key(&lease.message.id);
        map.insert(lease.message.id, lease);
        fresh
    }

    /// The newest lease of a running attempt.
    fn current_lease(&self, id: MessageId) -> Option<Lease> {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Takes a rate slot for `domain`; `Err(t)`: none free before `t`.
    pub(crate) fn rate_limit(
        &self,
        domain: &str,
        per_minute: u32,
        now: Timestamp,
    ) -> Result<(), Timestamp> {
        self.rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take(domain, per_minute, now)
    }

    /// The session limit of `domain` (created with `limit` permits on first use).
    pub(crate) fn domain_semaphore(&self, domain: &str, limit: usize) -> Arc<Semaphore> {
        let mut map = self
            .domain_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = map
            .entry(domain.to_owned())
            .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
        if entry.0 != limit {
            // The limit was changed by a reload: sessions holding the old semaphore finish
            // under it, new ones count against the new limit.
            *entry = (limit, Arc::new(Semaphore::new(limit)));
        }
        Arc::clone(&entry.1)
    }

    /// `Some` when `host` is suspended now.
    pub(crate) fn breaker_check(&self, host: &str) -> Option<SuspendedDestination> {
        self.breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(host, clock_now())
    }

    /// Records a connection failure or 421 of `host`.
    pub(crate) fn breaker_failure(&self, host: &str, reason: &str) {
        let now = clock_now();
        let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = b.record_failure(host, reason, now) {
            tracing::warn!(mx = %s.host, failures = s.failures, until = %s.until.to_rfc3339(), reason = %s.reason, "destination suspended");
        }
        self.metrics
            .destinations_suspended
            .set(i64::try_from(b.suspended(now).len()).unwrap_or(i64::MAX));
    }

    /// Records a working session with `host`.
    pub(crate) fn breaker_success(&self, host: &str) {
        let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        if b.record_success(host) {
            tracing::info!(mx = %host, "destination healthy again");
            self.metrics
                .destinations_suspended
                .set(i64::try_from(b.suspended(clock_now()).len()).unwrap_or(i64::MAX));
        }
    }

    /// Destinations suspended now (also refreshes the gauge).
    pub(crate) fn suspended(&self) -> Vec<SuspendedDestination> {
        let v = self
            .breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .suspended(clock_now());
        self.metrics
            .destinations_suspended
            .set(i64::try_from(v.len()).unwrap_or(i64::MAX));
        v
    }

    /// The metric label of recipient domain `domain`: itself for the first
    /// `metrics_max_domains` distinct domains, `other` after that.
    fn domain_label(&self, domain: &str) -> String {
        let mut set = self
            .metric_domains
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if set.contains(domain) {
            return domain.to_owned();
        }
        if set.len() < self.settings().metrics_max_domains {
            set.insert(domain.to_owned());
            return domain.to_owned();
        }
        "other".to_owned()
    }

    /// Counts one outcome of a TLS policy (`policy` = `mta-sts`) in
    /// `postrider_tls_policy_results_total`; `result` is `success` or an RFC 8460 result type.
    pub(crate) fn policy_result(&self, policy: &str, result: &str) {
        if let Ok(c) = self
            .metrics
            .tls_policy_results
            .get_metric_with_label_values(&[policy, result])
        {
            c.inc();
        }
    }

    /// Counts one session (or policy fetch) held to `session.domain`'s MTA-STS policy: in
    /// `postrider_tls_policy_results_total` and, when TLS reports are on, for the domain's
    /// daily report.
    pub(crate) fn sts_result(&self, session: crate::tls_report::counter::SessionResult<'_>) {
        self.policy_result("mta-sts", session.result);
        if let Some(counter) = &self.tls_counter {
            counter.record(clock_now(), session);
        }
    }

    /// Attempts currently running.
    pub(crate) fn inflight_count(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Removes a message from the in-flight map however its attempt ends (even by panic).
struct InflightGuard<'a> {
    shared: &'a Shared,
    id: MessageId,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// The wall clock as a [`Timestamp`].
pub(crate) fn clock_now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

/// Runs one attempt of message `id`, which must have been registered with [`Shared::begin`].
pub(crate) async fn run_attempt(shared: Arc<Shared>, id: MessageId) {
    let _guard = InflightGuard {
        shared: &shared,
        id,
    };
    let Some(lease) = shared.current_lease(id) else {
        return;
    };
    let settings = shared.settings();
    let message = &lease.message;
    let personal = has_personal_copies(&settings, message);
    if message.unsubscribe && !personal {
        tracing::warn!(id = %id, "message asks for unsubscribe links but [unsubscribe] is not configured; sent without them");
    }
    let body = match shared.store.body(id) {
        // Copies with their own unsubscribe link are signed per transaction instead.
        Ok(body) if personal => body.map(Arc::new),
        Ok(body) => body.map(|b| Arc::new(sign(settings.signer.as_deref(), b))),
        Err(e) => {
            // Nothing recorded: the lease expires and the message is tried again later.
            tracing::error!(id = %id, error = %e, "cannot read the message body; attempt abandoned");
            return;
        }
    };
    // Captured messages never reach the network: their outcomes are simulated from the
    // recipients' addresses. Ordinary messages pay one flag check for this.
    let captured = settings.capture_all || message.sandbox;
    let simulated = if captured {
        capture_outcomes(message)
    } else {
        Vec::new()
    };
    let outcomes = match &body {
        Some(_) if captured => simulated
            .iter()
            .map(|(outcome, _)| Timed {
                outcome: outcome.clone(),
                duration: Duration::ZERO,
            })
            .collect(),
        Some(body) => deliver_all(&shared, message, Arc::clone(body)).await,
        None => {
            // The record exists but its content does not: nothing can ever be delivered. Bounce
            // (5.3.0, local error) so the sender learns it must send again, rather than retry for
            // the whole queue lifetime.
            tracing::error!(id = %id, "message body missing from the store; bouncing the pending recipients");
            let reply = SmtpReply::synthetic(
                554,
                EnhancedStatus::new(5, 3, 0),
                "the relay lost the content of this message",
            );
            message
                .pending()
                .map(|index| Timed {
                    outcome: RecipientOutcome::new(
                        index,
                        reply.clone(),
                        ReplyClass::Permanent,
                        None,
                    ),
                    duration: Duration::ZERO,
                })
                .collect()
        }
    };

    let now = clock_now();
    let plain: Vec<RecipientOutcome> = outcomes.iter().map(|t| t.outcome.clone()).collect();
    let mut applied = apply_attempt(message, &plain, now, &settings.retry);
    if captured {
        record_capture_metrics(&shared, &simulated);
    } else {
        record_delivery_metrics(&shared, message, &applied, now);
    }
    log_outcomes(message, &applied.message, &outcomes);

    let ctx = NoticeContext {
        hostname: &settings.hostname,
        original: body.as_deref().map(Vec::as_slice),
        max_returned_message: settings.max_returned_message,
        now,
    };
    let mut notice: Vec<_> = failure_notice(
        &applied.message,
        &applied.bounced,
        &applied.suppressed,
        &ctx,
    )
    .into_iter()
    .chain(success_notice(
        &applied.message,
        &applied.success_reports,
        &ctx,
    ))
    .collect();
    notice.extend(delay_notice(
        &mut applied.message,
        settings.delay_warning_after,
        settings.retry.max_age(),
        &ctx,
    ));
    if captured {
        // Notices about a captured message are captured too, even when only the relay-wide
        // mode made it so: they must not leave after a switch back to delivery.
        for n in &mut notice {
            n.sandbox = true;
        }
    }
    let notifications: Vec<_> = notice.into_iter().collect();
    let notices = notifications.len() as u64;
    let update = AttemptUpdate {
        message: applied.message,
        next_attempt_at: applied.next_attempt_at,
        notifications,
    };
    let complaints = simulated_complaints(message, &simulated);
    // The scheduler may have re-leased the message meanwhile: record with the newest lease.
    let lease = shared.current_lease(id).unwrap_or(lease);
    match shared.store.record_attempt(&lease, update).await {
        Ok(RecordOutcome::Recorded { notification_ids }) => {
            shared.metrics.bounces_generated.inc_by(notices);
            for dsn_id in notification_ids {
                tracing::info!(id = %id, dsn_id = %dsn_id, "failure notice queued for the sender");
            }
            tracing::debug!(id = %id, next_attempt_at = %applied.next_attempt_at.map_or_else(|| "none".to_owned(), |t| t.to_rfc3339()), "attempt recorded");
            record_complaints(&shared, id, &complaints, now).await;
        }
        Ok(RecordOutcome::LeaseLost) => {
            tracing::warn!(id = %id, "lease lost before the attempt was recorded (message deleted or re-leased); outcome dropped");
        }
        Err(e) => {
            tracing::error!(id = %id, error = %e, "cannot record the attempt; the message will be tried again after its lease");
        }
    }
}

/// `postrider_delivery_attempts_total`, the result and status-code metrics and the queue time
/// of a real attempt.
fn record_delivery_metrics(
    shared: &Shared,
    before: &QueuedMessage,
    applied: &crate::outcome::AppliedAttempt,
    now: Timestamp,
) {
    let (delivered, deferred, bounced) = applied.counts;
    for (result, n) in [
        ("delivered", delivered),
        ("deferred", deferred),
        ("bounced", bounced),
    ] {
        if n > 0
            && let Ok(c) = shared
                .metrics
                .delivery_attempts
                .get_metric_with_label_values(&[result])
        {
            c.inc_by(n);
        }
    }
    record_result_metrics(shared, before, &applied.message);
    if applied.message.is_finished() {
        shared
            .metrics
            .delivery_queue_time
            .observe(now.saturating_since(before.received_at).as_secs_f64());
    }
}

/// `postrider_sandbox_captured_total{outcome}` for a captured attempt (the delivery metrics
/// count only mail that really left).
fn record_capture_metrics(shared: &Shared, simulated: &[(RecipientOutcome, Simulated)]) {
    for (_, s) in simulated {
        if let Ok(c) = shared
            .metrics
            .sandbox_captured
            .get_metric_with_label_values(&[s.as_str()])
        {
            c.inc();
        }
    }
}

/// The recipients of `message` that simulate a complaint in this captured attempt.
fn simulated_complaints(
    message: &QueuedMessage,
    simulated: &[(RecipientOutcome, Simulated)],
) -> Vec<Address> {
    simulated
        .iter()
        .filter(|(_, s)| *s == Simulated::Complained)
        .filter_map(|(o, _)| message.recipients.get(o.index))
        .map(|r| r.request.address.clone())
        .collect()
}

/// Records the complaint of each of `recipients`, once their delivery is recorded. A failure
/// is logged: the recipient stays delivered, only its `complained` event is missing.
async fn record_complaints(shared: &Shared, id: MessageId, recipients: &[Address], now: Timestamp) {
    for address in recipients {
        if let Err(e) = shared.store.record_complaint(id, address, now).await {
            tracing::error!(message_id = %id, recipient = %address, error = %e, "cannot record the simulated complaint");
        }
    }
}

/// A recipient's outcome with how long its domain attempt took.
#[derive(Debug, Clone)]
struct Timed {
    outcome: RecipientOutcome,
    duration: Duration,
}

/// The `category` and `kind` labels of `postrider_bounces_total` for a recipient after an
/// attempt: `None` unless the attempt failed (`hard` when it bounced, `soft` when deferred).
fn failure_labels(r: &RecipientStatus) -> Option<(BounceCategory, &'static str)> {
    let kind = match r.state {
        RecipientState::Bounced => "hard",
        RecipientState::Deferred => "soft",
        _ => return None,
    };
    Some((failure_category(r.last_reply.as_ref()?)?, kind))
}

/// `postrider_delivery_results_total` and `postrider_delivery_by_domain_total` for the
/// recipients whose state this attempt changed (postponed ones count as `postponed`).
fn record_result_metrics(shared: &Shared, before: &QueuedMessage, after: &QueuedMessage) {
    for (b, a) in before.recipients.iter().zip(&after.recipients) {
        if b.state.is_final() {
            continue;
        }
        let changed = a.attempts != b.attempts || a.state != b.state;
        let result = if changed {
            a.state.as_str()
        } else {
            "postponed"
        };
        let class = match a.last_reply.as_ref().map(|r| r.status().class) {
            Some(2) => "2.x",
            Some(5) => "5.x",
            _ => "4.x",
        };
        if changed
            && let Some(status) = a.last_reply.as_ref().map(postrider_core::SmtpReply::status)
        {
            let code = if status.subject <= 7 && status.detail <= 30 {
                status.to_string()
            } else {
                "other".to_owned()
            };
            if let Ok(c) = shared
                .metrics
                .delivery_status_codes
                .get_metric_with_label_values(&[&code])
            {
                c.inc();
            }
        }
        if let Ok(c) = shared
            .metrics
            .delivery_results
            .get_metric_with_label_values(&[result, class])
        {
            c.inc();
        }
        if changed
            && let Some((category, kind)) = failure_labels(a)
            && let Ok(c) = shared
                .metrics
                .bounces
                .get_metric_with_label_values(&[category.as_str(), kind])
        {
            c.inc();
        }
        let domain = shared.domain_label(&a.request.address.domain().as_str().to_ascii_lowercase());
        if let Ok(c) = shared
            .metrics
            .delivery_by_domain
            .get_metric_with_label_values(&[&domain, result])
        {
            c.inc();
        }
    }
}

/// One tracing event per recipient and attempt, with the state it ended in.
fn log_outcomes(before: &QueuedMessage, after: &QueuedMessage, outcomes: &[Timed]) {
    for t in outcomes {
        let Some(r) = after.recipients.get(t.outcome.index) else {
            continue;
        };
        if before
            .recipients
            .get(t.outcome.index)
            .is_some_and(|b| b.state.is_final())
        {
            continue;
        }
        tracing::info!(
            id = %after.id,
            recipient = %r.request.address,
            result = r.state.as_str(),
            relay = %relay_label(t.outcome.mx_host.as_deref(), t.outcome.mx_addr),
            reply = %t.outcome.reply,
            category = %failure_category(&t.outcome.reply).map_or("-", BounceCategory::as_str),
            tls = t.outcome.tls.as_ref().is_some_and(|t| t.encrypted),
            tls_version = t
                .outcome
                .tls
                .as_ref()
                .and_then(|t| t.version.as_deref())
                .unwrap_or("-"),
            tls_verified = t.outcome.tls.as_ref().is_some_and(|t| t.verified),
            tls_policy = %t
                .outcome
                .tls
                .as_ref()
                .and_then(|t| t.policy.as_deref())
                .unwrap_or("-"),
            postponed = t.outcome.postponed,
            duration_ms = u64::try_from(t.duration.as_millis()).unwrap_or(u64::MAX),
            attempt = after.attempts,
            "delivery attempt"
        );
    }
}

/// Delivers to every destination domain of the pending recipients, at most
/// `max_domains_per_message` at once, within `max_attempt_duration` overall.
async fn deliver_all(
    shared: &Arc<Shared>,
    message: &QueuedMessage,
    body: Arc<Vec<u8>>,
) -> Vec<Timed> {
    let mut by_domain: BTreeMap<Domain, Vec<(usize, RecipientRequest)>> = BTreeMap::new();
    for index in message.pending() {
        let r = &message.recipients[index];
        by_domain
            .entry(r.request.address.domain().clone())
            .or_default()
            .push((index, r.request.clone()));
    }
    let settings = shared.settings();
    let deadline = tokio::time::Instant::now() + settings.max_attempt_duration;
    let limit = Arc::new(Semaphore::new(settings.max_domains_per_message));
    let mut tasks = JoinSet::new();
    let mut pending_domains: HashMap<tokio::task::Id, Vec<usize>> = HashMap::new();
    for (domain, recipients) in by_domain {
        let shared = Arc::clone(shared);
        let body = Arc::clone(&body);
        let limit = Arc::clone(&limit);
        let message_meta = Arc::new(message.clone());
        let id = message.id;
        let indices: Vec<usize> = recipients.iter().map(|(i, _)| *i).collect();
        let handle = tasks.spawn(async move {
            let started = Instant::now();
            let attempt = tokio::time::timeout_at(deadline, async {
                let _permit = limit.acquire().await;
                deliver_domain(&shared, &message_meta, &domain, &recipients, &body).await
            })
            .await;
            let duration = started.elapsed();
            shared.metrics.delivery_duration.observe(duration.as_secs_f64());
            match attempt {
                Ok(timed) => timed.into_iter().map(|mut t| {
                    t.duration = duration;
                    t
                }).collect(),
                Err(_) => {
                    tracing::warn!(id = %id, domain = %domain, "domain attempt cut off by max_attempt_duration");
                    let reply = SmtpReply::synthetic(
                        451,
                        EnhancedStatus::new(4, 4, 7),
                        "the delivery attempt took too long and was cut off",
                    );
                    recipients
                        .iter()
                        .map(|(index, _)| Timed {
                            outcome: RecipientOutcome::new(*index, reply.clone(), ReplyClass::Transient, None),
                            duration,
                        })
                        .collect::<Vec<_>>()
                }
            }
        });
        pending_domains.insert(handle.id(), indices);
    }
    let mut all = Vec::with_capacity(message.recipients.len());
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((task, timed)) => {
                pending_domains.remove(&task);
                all.extend(timed);
            }
            Err(e) => {
                // A panicking domain task must not lose its recipients: they are retried.
                tracing::error!(id = %message.id, error = %e, "domain delivery task failed");
                let reply = SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 3, 0),
                    "internal error during delivery",
                );
                for index in pending_domains.remove(&e.id()).unwrap_or_default() {
                    all.push(Timed {
                        outcome: RecipientOutcome::new(
                            index,
                            reply.clone(),
                            ReplyClass::Transient,
                            None,
                        ),
                        duration: Duration::ZERO,
                    });
                }
            }
        }
    }
    all.sort_by_key(|t| t.outcome.index);
    all
}

/// Whether each recipient of `message` gets a copy of its own (with its own unsubscribe link).
fn has_personal_copies(settings: &DeliverySettings, message: &QueuedMessage) -> bool {
    message.unsubscribe && settings.unsubscribe.is_some()
}

/// The envelope sender of each transaction to `recipients` of `message`, with the recipients it
/// carries: one transaction from the message's sender, or one per recipient with VERP (from
/// its signed return path; a recipient whose return path cannot be made keeps the sender) or
/// when `one_per_recipient` (each copy is personal).
fn transactions_of(
    verp: Option<&postrider_bounces::VerpSigner>,
    one_per_recipient: bool,
    message: &QueuedMessage,
    recipients: &[(usize, RecipientRequest)],
) -> Vec<(ReversePath, Vec<(usize, RecipientRequest)>)> {
    let verp = verp.filter(|_| !message.sender.is_null());
    if verp.is_none() && !one_per_recipient {
        return vec![(message.sender.clone(), recipients.to_vec())];
    }
    recipients
        .iter()
        .map(|(index, r)| {
            let target = postrider_bounces::VerpTarget {
                id: message.id,
                index: *index,
            };
            let sender = verp
                .and_then(|v| v.return_path(target))
                .map_or_else(|| message.sender.clone(), ReversePath::Address);
            (sender, vec![(*index, r.clone())])
        })
        .collect()
}

/// The bytes sent to `group`: the shared (already signed) body, or, for a personal copy, the
/// stored message with the recipient's unsubscribe fields in front, then signed, so the DKIM
/// signature covers them. A message that brought its own `List-Unsubscribe` keeps it and gets
/// none of ours.
fn copy_for<'a>(
    settings: &DeliverySettings,
    message: &QueuedMessage,
    group: &[(usize, RecipientRequest)],
    body: &'a [u8],
) -> std::borrow::Cow<'a, [u8]> {
    let (Some(links), [(index, _)]) = (
        settings
            .unsubscribe
            .as_ref()
            .filter(|_| message.unsubscribe),
        group,
    ) else {
        return std::borrow::Cow::Borrowed(body);
    };
    let target = postrider_core::unsubscribe::UnsubscribeTarget {
        id: message.id,
        index: *index,
    };
    let copy = postrider_core::unsubscribe::with_unsubscribe_headers(links, target, body);
    std::borrow::Cow::Owned(sign(settings.signer.as_deref(), copy))
}

/// The transactions of `message` to one domain (one, or one per recipient with VERP), in turn.
async fn deliver_domain(
    shared: &Shared,
    message: &QueuedMessage,
    domain: &Domain,
    recipients: &[(usize, RecipientRequest)],
    body: &[u8],
) -> Vec<Timed> {
    let settings = shared.settings();
    let mut all = Vec::with_capacity(recipients.len());
    let personal = has_personal_copies(&settings, message);
    for (sender, group) in transactions_of(settings.verp.as_ref(), personal, message, recipients) {
        let copy = copy_for(&settings, message, &group, body);
        all.extend(deliver_transaction(shared, message, &sender, domain, &group, &copy).await);
    }
    all
}

/// One transaction of `message` from `sender` to `recipients` in `domain`.
async fn deliver_transaction(
    shared: &Shared,
    message: &QueuedMessage,
    sender: &ReversePath,
    domain: &Domain,
    recipients: &[(usize, RecipientRequest)],
    body: &[u8],
) -> Vec<Timed> {
    let refs: Vec<(usize, &RecipientRequest)> = recipients.iter().map(|(i, r)| (*i, r)).collect();
    let tx = Transaction {
        sender,
        recipients: &refs,
        body,
        ret: message.ret,
        envid: message.envid.as_deref(),
    };
    let attempt = deliver_to_domain(shared, domain, &tx).await;
    attempt
        .results
        .into_iter()
        .map(|r| Timed {
            outcome: RecipientOutcome {
                index: r.index,
                reply: r.reply,
                class: r.class,
                mx_host: attempt.mx_host.clone(),
                mx_addr: attempt.mx_addr,
                tls: attempt.tls.clone(),
                postponed: attempt.postponed,
                retry_at: attempt.retry_at,
                dsn_relayed: attempt.dsn_relayed,
            },
            duration: Duration::ZERO,
        })
        .collect()
}

/// Prepends the signer's header fields (DKIM) to the stored message. Signing happens per attempt,
/// so a rotated key applies to mail already queued; an unsigned message goes out as stored.
fn sign(signer: Option<&dyn postrider_core::MessageSigner>, body: Vec<u8>) -> Vec<u8> {
    match signer.and_then(|s| s.sign(&body)) {
        Some(mut headers) => {
            headers.extend_from_slice(&body);
            headers
        }
        None => body,
    }
}
