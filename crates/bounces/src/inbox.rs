//! Processing of the reports the bounce-domain listener stored in the inbox.
//!
//! One background task ([`ReportProcessor::run`]) drains the inbox, including what a previous
//! run left there: each report is parsed ([`crate::parse_report`]), tied to a message and
//! recipient (the VERP return path it was sent to first; else the queue id and recipient
//! address the report quotes), and its effect is applied together with its removal from the
//! inbox in one durable store transaction ([`Store::finish_report`]). Reports that name no
//! message, auto-replies and anything unrecognised are only logged and counted.

use std::time::Duration;

use postrider_core::clock::{Clock as _, SystemClock};
use postrider_core::{EnhancedStatus, MessageId, QueuedMessage, SmtpReply};
use postrider_metrics::Metrics;
use postrider_store::{InboxEffect, InboxOutcome, ReceivedReport, ReportSource, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::report::{DsnAction, DsnRecipient, InboundReport, parse_report};
use crate::verp::{VerpSigner, VerpTarget};

/// Reports handled per round before the inbox is read again.
const BATCH: usize = 64;
/// Longest wait between two looks at the inbox (a report whose processing failed is retried).
const IDLE_POLL: Duration = Duration::from_secs(30);
/// Pause after a storage error before the next round.
const ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// Code of the reply made from a DSN whose diagnostic carries none.
const DEFAULT_FAILURE_CODE: u16 = 550;
/// Text of the reply made from a DSN without a diagnostic.
const NO_DIAGNOSTIC: &str = "delivery failed after the message was accepted (DSN)";

/// What a report turned out to be, the `type` label of `postrider_inbound_reports_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportType {
    /// A delivery status notification tied to a message.
    Dsn,
    /// A complaint tied to a message.
    Complaint,
    /// An automatic reply.
    AutoReply,
    /// Not understood.
    Unrecognised,
    /// A DSN or complaint that names no message of the queue.
    Unmatched,
}

impl ReportType {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportType::Dsn => "dsn",
            ReportType::Complaint => "complaint",
            ReportType::AutoReply => "auto_reply",
            ReportType::Unrecognised => "unrecognised",
            ReportType::Unmatched => "unmatched",
        }
    }
}

/// What to do with one report: its type and its effect on the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What it was.
    pub report_type: ReportType,
    /// What it changes.
    pub effect: InboxEffect,
}

impl Decision {
    fn only(report_type: ReportType) -> Decision {
        Decision {
            report_type,
            effect: InboxEffect::Discard,
        }
    }
}

/// Drains the report inbox of a store.
#[derive(Debug, Clone)]
pub struct ReportProcessor {
    store: Store,
    verp: VerpSigner,
    metrics: Metrics,
}

impl ReportProcessor {
    /// A processor for `store`'s inbox, checking return paths with `verp`.
    pub fn new(store: Store, verp: VerpSigner, metrics: Metrics) -> ReportProcessor {
        ReportProcessor {
            store,
            verp,
            metrics,
        }
    }

    /// Processes reports until `shutdown`: everything waiting at start, then each new one.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let pause = match self.process_waiting().await {
                Ok(n) if n >= BATCH => Duration::ZERO,
                Ok(_) => IDLE_POLL,
                Err(error) => {
                    tracing::warn!(%error, "processing received reports failed; trying again later");
                    ERROR_BACKOFF
                }
            };
            if pause.is_zero() && !shutdown.is_cancelled() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.store.wait_for_reports(), if pause == IDLE_POLL => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::debug!("report processor stopped");
    }

    /// Processes up to one batch of waiting reports; returns how many were looked at.
    pub async fn process_waiting(&self) -> Result<usize, StoreError> {
        let ids = self.store.waiting_reports(BATCH)?;
        for &id in &ids {
            self.process(id).await?;
        }
        Ok(ids.len())
    }

    /// Processes one report. Only storage failures are errors (the report then stays in the
    /// inbox); an unreadable report is dropped.
    pub async fn process(&self, id: MessageId) -> Result<(), StoreError> {
        let now = SystemClock.now();
        let report = match self.store.received_report(id) {
            Ok(Some(report)) => report,
            Ok(None) => return Ok(()),
            Err(error @ (StoreError::Corrupt { .. } | StoreError::UnknownFormat { .. })) => {
                tracing::warn!(report = %id, %error, "unreadable received report dropped");
                self.count(ReportType::Unrecognised);
                let _ = self
                    .store
                    .finish_report(id, &InboxEffect::Discard, now)
                    .await?;
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let raw = report.raw.clone();
        let parsed = tokio::task::spawn_blocking(move || parse_report(&raw))
            .await
            .unwrap_or(InboundReport::Unrecognised);
        let decision = decide(&self.verp, &report, &parsed, |id| {
            self.store.message(id).ok().flatten()
        });
        let outcome = self.store.finish_report(id, &decision.effect, now).await?;
        self.account(&report, &decision, outcome);
        Ok(())
    }

    fn count(&self, report_type: ReportType) {
        self.metrics
            .inbound_reports
            .with_label_values(&[report_type.as_str()])
            .inc();
    }

    /// Counts and logs what a report did.
    fn account(&self, report: &ReceivedReport, decision: &Decision, outcome: InboxOutcome) {
        let report_type = match outcome {
            InboxOutcome::UnknownMessage => ReportType::Unmatched,
            _ => decision.report_type,
        };
        self.count(report_type);
        let id = report.id;
        match outcome {
            InboxOutcome::Bounced {
                category,
                suppressed,
            } => {
                self.metrics
                    .bounces
                    .with_label_values(&[category.as_str(), "async"])
                    .inc();
                tracing::info!(report = %id, category = category.as_str(), suppressed, "asynchronous bounce recorded");
            }
            InboxOutcome::Complained => {
                self.metrics.complaints.inc();
                tracing::info!(report = %id, "complaint recorded");
            }
            InboxOutcome::Unchanged => {
                tracing::info!(report = %id, report_type = report_type.as_str(), "report changes nothing (recipient not delivered, or already recorded)");
            }
            InboxOutcome::UnknownMessage => {
                tracing::info!(report = %id, "report names no message of the queue; dropped");
            }
            InboxOutcome::Discarded => {
                tracing::info!(report = %id, report_type = report_type.as_str(), sender = %report.envelope.mail_from, "report ignored");
            }
        }
    }
}

/// What a parsed report does: `message` looks a queued message up by id.
pub fn decide(
    verp: &VerpSigner,
    report: &ReceivedReport,
    parsed: &InboundReport,
    message: impl Fn(MessageId) -> Option<QueuedMessage>,
) -> Decision {
    let verp_target = report
        .envelope
        .rcpt_to
        .iter()
        .find_map(|rcpt| verp.check_address(rcpt));
    match parsed {
        InboundReport::AutoReply => Decision::only(ReportType::AutoReply),
        InboundReport::Unrecognised => Decision::only(ReportType::Unrecognised),
        InboundReport::Dsn {
            recipients,
            original,
        } => {
            let failed: Vec<&DsnRecipient> = recipients
                .iter()
                .filter(|r| r.action == DsnAction::Failed)
                .collect();
            let target = verp_target.or_else(|| {
                let m = message(original.queue_id.as_deref()?.parse().ok()?)?;
                failed
                    .iter()
                    .find_map(|r| recipient_index(&m, r.address.as_deref()?))
            });
            let Some(target) = target else {
                return Decision::only(ReportType::Unmatched);
            };
            let wanted = message(target.id)
                .and_then(|m| m.recipients.get(target.index).cloned())
                .map(|r| r.request.address.to_string());
            let Some(dsn) = failed
                .iter()
                .find(|r| {
                    matches!((&r.address, &wanted), (Some(a), Some(w)) if a.eq_ignore_ascii_case(w))
                })
                .or_else(|| failed.first())
            else {
                // delayed, delivered or relayed: nothing to change.
                return Decision::only(ReportType::Dsn);
            };
            let reply = failure_reply(dsn);
            Decision {
                report_type: ReportType::Dsn,
                effect: InboxEffect::AsyncBounce {
                    message: target.id,
                    recipient: target.index,
                    source: ReportSource {
                        report_id: report.id,
                        received_at: report.received_at,
                        status: reply.status().to_string(),
                        diagnostic: dsn.diagnostic.clone(),
                    },
                    reply,
                },
            }
        }
        InboundReport::Complaint {
            feedback_type,
            recipient,
            original,
        } => {
            let target = verp_target.or_else(|| {
                let m = message(original.queue_id.as_deref()?.parse().ok()?)?;
                recipient_index(&m, recipient.as_deref()?)
            });
            let Some(target) = target else {
                return Decision::only(ReportType::Unmatched);
            };
            Decision {
                report_type: ReportType::Complaint,
                effect: InboxEffect::Complaint {
                    message: target.id,
                    recipient: target.index,
                    source: ReportSource {
                        report_id: report.id,
                        received_at: report.received_at,
                        status: feedback_type.clone(),
                        diagnostic: None,
                    },
                },
            }
        }
    }
}

/// The recipient of `m` with this address (any case).
fn recipient_index(m: &QueuedMessage, address: &str) -> Option<VerpTarget> {
    m.recipients
        .iter()
        .position(|r| r.request.address.to_string().eq_ignore_ascii_case(address))
        .map(|index| VerpTarget { id: m.id, index })
}

/// The permanent failure a DSN recipient reports: the code of its diagnostic (a 5xx), else
/// 550; its status (made permanent), else the diagnostic's; the diagnostic as the text.
pub fn failure_reply(dsn: &DsnRecipient) -> SmtpReply {
    let diagnostic = dsn.diagnostic.as_deref().unwrap_or(NO_DIAGNOSTIC);
    let (code, text) = match diagnostic.split_once(' ') {
        Some((code, rest)) if code.len() == 3 && code.starts_with('5') => (
            code.parse().unwrap_or(DEFAULT_FAILURE_CODE),
            rest.trim_start(),
        ),
        _ => (DEFAULT_FAILURE_CODE, diagnostic),
    };
    let mut reply = SmtpReply::new(code, text);
    if let Some(status) = dsn.status {
        reply.enhanced = Some(EnhancedStatus::new(5, status.subject, status.detail));
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::OriginalMessage;
    use postrider_core::{
        Address, Domain, Envelope, NewMessage, RecipientRequest, ReversePath, Source, Timestamp,
    };
    use postrider_store::ReportEnvelope;

    fn signer() -> VerpSigner {
        VerpSigner::new(
            Domain::parse("bounces.example.com").unwrap(),
            "0123456789abcdef-secret",
        )
        .unwrap()
    }

    fn queued() -> QueuedMessage {
        let envelope = Envelope::new(
            ReversePath::parse("app@example.com").unwrap(),
            ["one@example.org", "two@example.org"]
                .iter()
                .map(|a| RecipientRequest::new(Address::parse(a).unwrap()))
                .collect(),
        )
        .unwrap();
        let new = NewMessage::new(
            envelope,
            b"x".to_vec(),
            Source::Http,
            Timestamp::from_millis(1),
        );
        QueuedMessage::new(MessageId::from_u64(0xa1), &new)
    }

    fn received(rcpt: String) -> ReceivedReport {
        ReceivedReport {
            id: MessageId::from_u64(7),
            received_at: Timestamp::from_millis(5),
            envelope: ReportEnvelope {
                mail_from: String::new(),
                rcpt_to: vec![rcpt],
                client_ip: None,
            },
            raw: Vec::new(),
        }
    }

    fn failed(address: &str, status: &str, diagnostic: Option<&str>) -> DsnRecipient {
        DsnRecipient {
            address: Some(address.into()),
            action: DsnAction::Failed,
            status: EnhancedStatus::parse(status),
            diagnostic: diagnostic.map(str::to_owned),
        }
    }

    fn lookup(id: MessageId) -> Option<QueuedMessage> {
        let m = queued();
        (id == m.id).then_some(m)
    }

    #[test]
    fn a_dsn_to_a_return_path_bounces_its_recipient() {
        let target = VerpTarget {
            id: MessageId::from_u64(0xa1),
            index: 1,
        };
        let rp = signer().return_path(target).unwrap().to_string();
        let dsn = InboundReport::Dsn {
            recipients: vec![failed(
                "two@example.org",
                "5.1.1",
                Some("550 5.1.1 <two@example.org>: user unknown"),
            )],
            original: OriginalMessage::default(),
        };
        let d = decide(&signer(), &received(rp), &dsn, lookup);
        assert_eq!(d.report_type, ReportType::Dsn);
        let InboxEffect::AsyncBounce {
            message,
            recipient,
            reply,
            source,
        } = d.effect
        else {
            panic!("{:?}", d.effect)
        };
        assert_eq!((message, recipient), (target.id, 1));
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced, EnhancedStatus::parse("5.1.1"));
        assert_eq!(reply.text, "<two@example.org>: user unknown");
        assert_eq!(source.status, "5.1.1");
        assert_eq!(source.report_id, MessageId::from_u64(7));
    }

    #[test]
    fn without_a_return_path_the_quoted_queue_id_and_address_are_used() {
        let dsn = InboundReport::Dsn {
            recipients: vec![failed("ONE@example.org", "5.2.2", None)],
            original: OriginalMessage {
                message_id: None,
                queue_id: Some("00000000000000a1".into()),
            },
        };
        let d = decide(
            &signer(),
            &received("postmaster@bounces.example.com".into()),
            &dsn,
            lookup,
        );
        let InboxEffect::AsyncBounce {
            recipient, reply, ..
        } = d.effect
        else {
            panic!("{:?}", d.effect)
        };
        assert_eq!(recipient, 0);
        assert_eq!((reply.code, reply.text.as_str()), (550, NO_DIAGNOSTIC));
        // A forged token or an unknown queue id matches nothing.
        let forged = "b+0000000000000000000000aa@bounces.example.com".to_owned();
        let unknown = InboundReport::Dsn {
            recipients: vec![failed("one@example.org", "5.1.1", None)],
            original: OriginalMessage::default(),
        };
        let d = decide(&signer(), &received(forged), &unknown, lookup);
        assert_eq!(d, Decision::only(ReportType::Unmatched));
    }

    #[test]
    fn delays_auto_replies_and_the_unrecognised_change_nothing() {
        let rp = signer()
            .return_path(VerpTarget {
                id: MessageId::from_u64(0xa1),
                index: 0,
            })
            .unwrap()
            .to_string();
        let delayed = InboundReport::Dsn {
            recipients: vec![DsnRecipient {
                action: DsnAction::Delayed,
                ..failed("one@example.org", "4.2.2", None)
            }],
            original: OriginalMessage::default(),
        };
        for (parsed, t) in [
            (delayed, ReportType::Dsn),
            (InboundReport::AutoReply, ReportType::AutoReply),
            (InboundReport::Unrecognised, ReportType::Unrecognised),
        ] {
            assert_eq!(
                decide(&signer(), &received(rp.clone()), &parsed, lookup),
                Decision::only(t)
            );
        }
        let complaint = InboundReport::Complaint {
            feedback_type: "abuse".into(),
            recipient: None,
            original: OriginalMessage::default(),
        };
        let d = decide(&signer(), &received(rp), &complaint, lookup);
        assert_eq!(d.report_type, ReportType::Complaint);
        assert!(matches!(
            d.effect,
            InboxEffect::Complaint { recipient: 0, .. }
        ));
    }
}
