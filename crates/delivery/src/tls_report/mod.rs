//! SMTP TLS reporting (RFC 8460): sessions to domains with an MTA-STS policy are counted per
//! UTC day ([`counter`]), flushed to the store at most once a minute, and once a day each
//! policy domain with counts for the day before gets its report ([`report`]) at the addresses
//! of its `_smtp._tls` TXT record: by HTTPS POST, or by mail through the relay's own queue.

pub(crate) mod counter;
pub(crate) mod report;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mail_auth::mta_sts::ReportUri;
use postrider_core::tls_report::{TlsSessionCounts, UtcDay};
use postrider_core::{
    Address, Envelope, NewMessage, RecipientRequest, ReversePath, Source, Timestamp,
};
use tokio_util::sync::CancellationToken;

use crate::settings::TlsReportSettings;
use crate::worker::{Shared, clock_now};

/// How often in-memory counts are written to the store (and the daily run is considered).
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// Sending rounds for one day before its remaining counts are given up.
pub(crate) const MAX_ROUNDS: u32 = 3;
/// Pause between two sending rounds of the same day.
const ROUND_PAUSE: Duration = Duration::from_secs(3600);
/// Longest random wait after 00:00 UTC before the daily run (RFC 8460 §4.1 asks senders to
/// spread their reports).
const MAX_START_DELAY: Duration = Duration::from_secs(3600);
/// Longest time one HTTPS report upload may take, connection included.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to the report of one domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainReport {
    /// The policy domain.
    pub domain: String,
    /// Addresses (`https:` URLs, `mailto:` addresses) the report was handed to.
    pub sent: Vec<String>,
    /// Addresses it could not be handed to, or why there were none, with the reason.
    pub failed: Vec<String>,
    /// The domain publishes no usable reporting record: there is nobody to send to, so its
    /// counts are dropped rather than tried again.
    #[serde(skip)]
    no_address: bool,
}

impl DomainReport {
    /// Whether at least one address took the report.
    fn delivered(&self) -> bool {
        !self.sent.is_empty()
    }

    /// Whether the domain's counts are finished with: reported, or nobody to report to.
    fn settled(&self) -> bool {
        self.delivered() || self.no_address
    }
}

/// What one run for a day did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DayReport {
    /// The day reported, `YYYY-MM-DD`.
    pub day: String,
    /// One entry per domain with counts that day.
    pub domains: Vec<DomainReport>,
}

/// Runs until shutdown: flushes the counts every [`FLUSH_INTERVAL`], and once a day, after
/// 00:00 UTC plus a random delay, sends the reports of the days before.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(counter) = &shared.tls_counter else {
        return;
    };
    let delay = Duration::from_secs(rand::random_range(0..MAX_START_DELAY.as_secs()));
    let mut pause_until = Timestamp::from_millis(0);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
        }
        counter.flush(&shared.store).await;
        let now = clock_now();
        if !round_due(now, delay, pause_until) {
            continue;
        }
        if !send_due_days(&shared, UtcDay::of(now)).await {
            pause_until = clock_now().saturating_add(ROUND_PAUSE);
        }
    }
}

/// Whether a daily round may run at `now`: past today's 00:00 UTC plus `delay`, and not in
/// the pause after a round that left reports to retry.
fn round_due(now: Timestamp, delay: Duration, pause_until: Timestamp) -> bool {
    now >= UtcDay::of(now).start().saturating_add(delay) && now >= pause_until
}

/// Runs a round for every day before `today` with counts whose run is not done. Returns
/// whether nothing is left to retry.
async fn send_due_days(shared: &Shared, today: UtcDay) -> bool {
    let days = match shared.store.tls_report_days_before(today) {
        Ok(days) => days,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the days with TLS report counts");
            return false;
        }
    };
    let mut finished = true;
    for day in days {
        finished &= scheduled_round(shared, day).await;
    }
    finished
}

/// One scheduled round for `day`: sends what is left unless the day is done, and marks it done
/// when everything went out or the rounds ran out. Returns whether the day is done.
async fn scheduled_round(shared: &Shared, day: UtcDay) -> bool {
    let mut run = match shared.store.tls_report_run(day) {
        Ok(run) => run,
        Err(e) => {
            tracing::warn!(day = %day, error = %e, "cannot read the TLS report run");
            return false;
        }
    };
    if !run.done {
        run.attempts = run.attempts.saturating_add(1);
        // Recorded before sending: a crash mid-round does not grant extra rounds.
        if let Err(e) = shared.store.put_tls_report_run(day, &run).await {
            tracing::warn!(day = %day, error = %e, "cannot record the TLS report run");
            return false;
        }
        let report = send_day(shared, day).await;
        let left = report.domains.iter().filter(|d| !d.settled()).count();
        tracing::info!(day = %day, domains = report.domains.len(), left, round = run.attempts, "TLS reports sent");
        run.done = left == 0 || run.attempts >= MAX_ROUNDS;
    }
    if run.done {
        if let Err(e) = shared.store.remove_tls_report_day(day) {
            tracing::warn!(day = %day, error = %e, "cannot remove the TLS report counts of a finished day");
        }
        if let Err(e) = shared.store.put_tls_report_run(day, &run).await {
            tracing::warn!(day = %day, error = %e, "cannot record the TLS report run");
        }
    }
    run.done
}

/// Sends the report of every domain with counts on `day` now (whatever the schedule says; the
/// admin trigger), after flushing the counts in memory. Counts of a domain whose report went
/// out, or that publishes no reporting record, are removed.
pub(crate) async fn send_day(shared: &Shared, day: UtcDay) -> DayReport {
    // One run at a time: the daily round and the admin trigger must not both report a domain.
    let _sending = shared.tls_report_sending.lock().await;
    if let Some(counter) = &shared.tls_counter {
        counter.flush(&shared.store).await;
    }
    let mut out = DayReport {
        day: day.to_string(),
        domains: Vec::new(),
    };
    let Some(settings) = shared.settings().tls_reports.clone() else {
        return out;
    };
    let domains = match shared.store.tls_report_counts(day) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(day = %day, error = %e, "cannot read the TLS report counts");
            return out;
        }
    };
    for (domain, counts) in domains {
        let result = send_domain(shared, &settings, day, &domain, &counts).await;
        if result.settled()
            && let Err(e) = shared.store.remove_tls_report_counts(day, &domain)
        {
            tracing::warn!(domain = %domain, day = %day, error = %e, "cannot remove reported TLS counts");
        }
        out.domains.push(result);
    }
    if let Err(e) = shared.store.flush_tls_report_counts().await {
        tracing::warn!(error = %e, "cannot write out TLS report counts");
    }
    out
}

/// Builds the report of `domain` for `day` and hands it to each of its report addresses.
async fn send_domain(
    shared: &Shared,
    settings: &TlsReportSettings,
    day: UtcDay,
    domain: &str,
    counts: &TlsSessionCounts,
) -> DomainReport {
    let mut out = DomainReport {
        domain: domain.to_owned(),
        sent: Vec::new(),
        failed: Vec::new(),
        no_address: false,
    };
    let rua = match shared
        .resolver
        .lookup_txt(&format!("_smtp._tls.{domain}"))
        .await
    {
        Ok(records) => match report::rua_of(&records) {
            Ok(rua) => rua,
            Err(e) => {
                tracing::info!(domain = %domain, day = %day, reason = %e, "no TLS report address; report not sent");
                out.failed.push(e.to_string());
                out.no_address = true;
                return out;
            }
        },
        Err(e) => {
            tracing::warn!(domain = %domain, day = %day, error = %e, "TLS report address lookup failed");
            out.failed
                .push(format!("TXT lookup of _smtp._tls.{domain} failed: {e}"));
            return out;
        }
    };
    let policy = shared
        .store
        .sts_policy(domain)
        .ok()
        .flatten()
        .map(|c| c.policy);
    let delivery = shared.settings();
    let reporter = report::Reporter {
        organization: &settings.organization,
        contact: &settings.contact,
        hostname: &delivery.hostname,
    };
    let tls_report = report::build_report(reporter, day, domain, policy.as_ref(), counts);
    let gz = match report::gzip(report::report_json(&tls_report).as_bytes()) {
        Ok(gz) => gz,
        Err(e) => {
            out.failed.push(format!("cannot compress the report: {e}"));
            return out;
        }
    };
    let mut mailto = Vec::new();
    for uri in rua {
        match uri {
            ReportUri::Http(url) => {
                let result = upload(shared, &url, &gz).await;
                count(shared, "https", result.is_ok());
                match result {
                    Ok(()) => out.sent.push(url),
                    Err(e) => {
                        tracing::warn!(domain = %domain, day = %day, url = %url, error = %e, "TLS report upload failed");
                        out.failed.push(format!("{url}: {e}"));
                    }
                }
            }
            ReportUri::Mail(to) => match Address::parse(&to) {
                Ok(address) => mailto.push(address),
                Err(e) => out.failed.push(format!("mailto:{to}: {e}")),
            },
        }
    }
    if !mailto.is_empty() {
        let names: Vec<String> = mailto.iter().map(|a| format!("mailto:{a}")).collect();
        let result = enqueue_mail(shared, settings, domain, &tls_report, &gz, mailto).await;
        count(shared, "mailto", result.is_ok());
        match result {
            Ok(id) => {
                tracing::info!(domain = %domain, day = %day, id = %id, "TLS report queued for mailing");
                out.sent.extend(names);
            }
            Err(e) => {
                tracing::warn!(domain = %domain, day = %day, error = %e, "cannot queue the TLS report mail");
                out.failed
                    .extend(names.into_iter().map(|n| format!("{n}: {e}")));
            }
        }
    }
    out
}

/// `postrider_tls_reports_total{transport,result}`.
fn count(shared: &Shared, transport: &str, sent: bool) {
    let result = if sent { "sent" } else { "failed" };
    if let Ok(c) = shared
        .metrics
        .tls_reports
        .get_metric_with_label_values(&[transport, result])
    {
        c.inc();
    }
}

/// The host, port and path of an `https:` report URL.
fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("not a URL: {url}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("not an https URL: {url}"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("no host in {url}"))?
        .to_ascii_lowercase();
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    Ok((host, uri.port_u16().unwrap_or(443), path))
}

/// POSTs the gzipped report to `url` (certificate verified, bounded in time); any 2xx answer
/// is success.
async fn upload(shared: &Shared, url: &str, gz: &[u8]) -> Result<(), String> {
    let (host, port, path) = split_url(url)?;
    let body = Bytes::copy_from_slice(gz);
    let attempt = async {
        let mut conn = crate::mta_sts::connect_https::<Full<Bytes>>(shared, &host, port)
            .await
            .map_err(|e| e.to_string())?;
        let authority = if port == 443 {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .header(
                hyper::header::USER_AGENT,
                concat!("postrider/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = conn
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP status {}", response.status().as_u16()))
        }
    };
    tokio::time::timeout(UPLOAD_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer within {}s", UPLOAD_TIMEOUT.as_secs()))?
}

/// Queues the report as an RFC 8460 §5.3 message (multipart/report, report-type tlsrpt, the
/// `.json.gz` attached) from `settings.from` to `to`; it is DKIM-signed at delivery like any
/// message.
async fn enqueue_mail(
    shared: &Shared,
    settings: &TlsReportSettings,
    domain: &str,
    tls_report: &mail_auth::report::tlsrpt::TlsReport,
    gz: &[u8],
    to: Vec<Address>,
) -> Result<postrider_core::MessageId, String> {
    let delivery = shared.settings();
    let from = settings.from.to_string();
    let names: Vec<String> = to.iter().map(ToString::to_string).collect();
    let mut body = Vec::with_capacity(gz.len() * 2 + 2048);
    tls_report
        .write_rfc5322_from_bytes(
            domain,
            &delivery.hostname,
            (settings.organization.as_str(), from.as_str()),
            names.iter().map(String::as_str),
            gz,
            &mut body,
        )
        .map_err(|e| format!("cannot build the report message: {e}"))?;
    let envelope = Envelope::new(
        ReversePath::Address(settings.from.clone()),
        to.into_iter().map(RecipientRequest::new).collect(),
    )
    .map_err(|e| e.to_string())?;
    let mut message = NewMessage::new(envelope, body, Source::Dsn, clock_now());
    message
        .metadata
        .insert("tls_report_for".to_owned(), domain.to_owned());
    message.sandbox = delivery.capture_all;
    shared
        .store
        .enqueue(message)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daily_round_waits_for_its_delay_and_the_retry_pause() {
        let midnight = UtcDay(20_000).start();
        let at = |secs: u64| midnight.saturating_add(Duration::from_secs(secs));
        let delay = Duration::from_secs(600);
        let none = Timestamp::from_millis(0);
        assert!(!round_due(at(0), delay, none));
        assert!(!round_due(at(599), delay, none));
        assert!(round_due(at(600), delay, none));
        assert!(round_due(at(86_399), delay, none));
        // Paused after a round with reports left to retry.
        assert!(!round_due(at(700), delay, at(4_200)));
        assert!(round_due(at(4_200), delay, at(4_200)));
    }

    #[test]
    fn report_urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("https://Reports.example.test/tlsrpt?x=1"),
            Ok(("reports.example.test".into(), 443, "/tlsrpt?x=1".into()))
        );
        assert_eq!(
            split_url("https://reports.example.test:8443"),
            Ok(("reports.example.test".into(), 8443, "/".into()))
        );
        assert!(split_url("http://reports.example.test/").is_err());
        assert!(split_url("not a url").is_err());
    }
}
