//! `postrider queue …`: queue administration through the running relay's HTTP API
//! (`/v1/queue…`), printed as tables for people or as JSON with `--json`.

use std::fmt::Write as _;

use clap::Subcommand;
use serde_json::Value;

use postrider_core::Timestamp;

use crate::api_client::{ApiClient, ApiTarget, encode};

/// What to do to the queue.
#[derive(Debug, Subcommand)]
pub(crate) enum QueueAction {
    /// List queued messages (pending ones unless --all), oldest first, paging through the API.
    List {
        /// Only messages in this state (queued, scheduled, deferred, held, delivered, bounced, partially_bounced).
        #[arg(long)]
        state: Option<String>,
        /// Only messages with a recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Include finished messages still within retention.
        #[arg(long)]
        all: bool,
        /// At most this many messages; 0 lists every one.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// List every matching message (the same as --limit 0).
        #[arg(long)]
        all_pages: bool,
        /// Continue after this message id (printed as "more: continue with --after …").
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one message with every recipient's state and last reply.
    Show {
        /// Message id (16 hex digits).
        id: String,
    },
    /// Make deferred messages due now: one id, or every message matching a filter (messages
    /// scheduled for later keep their send time).
    Retry {
        /// Message id.
        #[arg(conflicts_with_all = NOT_WITH_ID, required_unless_present_any = FILTER_ARGS)]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkFilter,
    },
    /// Remove messages without notifying the sender: one id, or every match of a filter.
    Delete {
        /// Message id.
        #[arg(conflicts_with_all = NOT_WITH_ID, required_unless_present_any = FILTER_ARGS)]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkFilter,
    },
    /// Bounce messages now: their pending recipients fail and the sender gets a DSN.
    Bounce {
        /// Message id.
        #[arg(conflicts_with_all = NOT_WITH_ID, required_unless_present_any = FILTER_ARGS)]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkFilter,
    },
    /// Stop attempting messages until they are released.
    Hold {
        /// Message id.
        #[arg(conflicts_with_all = NOT_WITH_ID, required_unless_present_any = FILTER_ARGS)]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkFilter,
    },
    /// Release held messages (due now).
    Release {
        /// Message id.
        #[arg(conflicts_with_all = NOT_WITH_ID, required_unless_present_any = FILTER_ARGS)]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkFilter,
    },
    /// The event log (accepted, deferred, delivered, bounced, suppressed, expired), filtered,
    /// oldest first (API key scope `read`).
    Events {
        /// Start after this sequence number (the cursor printed as "more: continue with --after …").
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events; 0 prints every match.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only events of this message (its queue id, 16 hex digits).
        #[arg(long)]
        id: Option<String>,
        /// Only events of this recipient address.
        #[arg(long)]
        recipient: Option<String>,
        /// Only these types, comma-separated (accepted, deferred, delivered, bounced, suppressed, expired).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only events of messages with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only events at or after this time: RFC 3339, or a duration ago (30m, 2h, 3d).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time: RFC 3339, or a duration ago.
        #[arg(long)]
        until: Option<String>,
    },
    /// Counts by state and the busiest destination domains.
    Stats {
        /// How many domains to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

/// The options that select messages for a bulk action (instead of an id).
const FILTER_ARGS: [&str; 4] = ["state", "domain", "older_than", "all"];

/// The options that make no sense with an id.
const NOT_WITH_ID: [&str; 5] = ["state", "domain", "older_than", "all", "dry_run"];

/// Which messages a bulk action applies to, like `postsuper -d ALL deferred`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BulkFilter {
    /// Only messages in this state (queued, scheduled, deferred, held).
    #[arg(long)]
    state: Option<String>,
    /// Only messages with a recipient at this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only messages that arrived longer ago than this (30m, 2h, 3d).
    #[arg(long)]
    older_than: Option<String>,
    /// Every pending message (needed when no other filter is given).
    #[arg(long)]
    all: bool,
    /// Only print how many messages would be affected.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask before deleting or bouncing by filter (needed without a terminal).
    #[arg(long)]
    yes: bool,
}

/// Runs one queue command and prints its result.
pub(crate) fn run(target: &ApiTarget, action: QueueAction) -> anyhow::Result<()> {
    let client = ApiClient::new(target);
    match action {
        QueueAction::List {
            state,
            domain,
            all,
            limit,
            all_pages,
            after,
        } => {
            let filter = ListQuery {
                state: state.as_deref(),
                domain: domain.as_deref(),
                include_finished: all,
            };
            let wanted = (limit > 0 && !all_pages).then_some(limit);
            list(&client, &filter, after, wanted, target.json)
        }
        QueueAction::Retry { id: None, filter } => bulk(&client, "retry", &filter, target.json),
        QueueAction::Delete { id: None, filter } => bulk(&client, "delete", &filter, target.json),
        QueueAction::Bounce { id: None, filter } => bulk(&client, "bounce", &filter, target.json),
        QueueAction::Hold { id: None, filter } => bulk(&client, "hold", &filter, target.json),
        QueueAction::Release { id: None, filter } => bulk(&client, "release", &filter, target.json),
        QueueAction::Events {
            after,
            limit,
            id,
            recipient,
            kind,
            tag,
            since,
            until,
        } => {
            let now = now();
            let mut query = Vec::new();
            for (name, value) in [
                ("id", id),
                ("recipient", recipient),
                ("type", kind),
                ("tag", tag),
                ("since", since.map(|t| time_arg(&t, now)).transpose()?),
                ("until", until.map(|t| time_arg(&t, now)).transpose()?),
            ] {
                if let Some(v) = value {
                    query.push(format!("{name}={}", encode(&v)));
                }
            }
            let wanted = (limit > 0).then_some(limit);
            events(&client, &query.join("&"), after, wanted, target.json)
        }
        other => act(&client, &other, target.json),
    }
}

/// A time option: RFC 3339 as it is, or a duration (`2h`) meaning that long before `now`.
fn time_arg(text: &str, now: Timestamp) -> anyhow::Result<String> {
    if Timestamp::parse_rfc3339(text).is_some() {
        return Ok(text.to_owned());
    }
    let ago = humantime::parse_duration(text.trim()).map_err(|e| {
        anyhow::anyhow!("{text:?} is neither an RFC 3339 time nor a duration such as 2h: {e}")
    })?;
    let ms = now
        .as_millis()
        .saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX));
    Ok(Timestamp::from_millis(ms).to_rfc3339())
}

/// Column titles of `queue events`.
const EVENT_HEADER: [&str; 6] = ["SEQ", "AT", "TYPE", "MESSAGE", "RECIPIENT", "REPLY"];
/// Minimum widths of the `queue events` columns.
const EVENT_WIDTHS: [usize; 5] = [6, 24, 10, 16, 28];

/// `queue events`: pages through `GET /v1/events` with `filters` from `after` until the log
/// ends or `wanted` events were printed.
fn events(
    client: &ApiClient,
    filters: &str,
    mut after: u64,
    wanted: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let mut printed = 0usize;
    let mut output = PagedOutput::new(
        json,
        fixed_row(&EVENT_HEADER.map(str::to_owned), &EVENT_WIDTHS),
    );
    loop {
        let page_size = wanted.map_or(API_PAGE, |w| w.saturating_sub(printed).min(API_PAGE));
        if page_size == 0 {
            break;
        }
        let mut path = format!("/v1/events?after={after}&limit={page_size}");
        if !filters.is_empty() {
            path.push('&');
            path.push_str(filters);
        }
        let page = client.get(&path, "read")?;
        let items = page["events"].as_array().map_or(&[][..], Vec::as_slice);
        printed += items.len();
        output.page(items, event_row);
        let next = page["next_cursor"].as_u64().unwrap_or(after);
        if next <= after {
            return finish_events(json, &output.collected, None);
        }
        after = next;
    }
    finish_events(json, &output.collected, Some(after))
}

/// Prints the collected events (`--json`) or the cursor to continue from.
fn finish_events(json: bool, collected: &[Value], more: Option<u64>) -> anyhow::Result<()> {
    if json {
        let doc = serde_json::json!({ "events": collected, "next_cursor": more });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if let Some(cursor) = more {
        println!("(more: continue with --after {cursor})");
    }
    Ok(())
}

/// One event of `queue events`.
fn event_row(e: &Value) -> String {
    fixed_row(
        &[
            text(&e["seq"]),
            text(&e["at"]),
            text(&e["type"]),
            text(&e["id"]),
            text(&e["recipient"]),
            if e["reply"].is_object() {
                reply_text(&e["reply"])
            } else {
                String::new()
            },
        ],
        &EVENT_WIDTHS,
    )
}

/// Matches handled per bulk call (the API serves at most 1000).
const BULK_PAGE: usize = 500;

/// A bulk action by filter: counts the matches (dry-run pages), asks before a destructive
/// action, then pages through the queue, printing progress on stderr.
fn bulk(client: &ApiClient, action: &str, filter: &BulkFilter, json: bool) -> anyhow::Result<()> {
    let page = |dry_run: bool, after: Option<&str>| {
        let body = serde_json::json!({
            "action": action, "state": filter.state, "domain": filter.domain, "older_than": filter.older_than,
            "all": filter.all, "dry_run": dry_run, "after": after, "limit": BULK_PAGE,
        });
        client.post("/v1/queue/bulk", Some(body), "admin")
    };
    let mut total = 0u64;
    let mut after: Option<String> = None;
    loop {
        let v = page(true, after.as_deref())?;
        total += v["matched"].as_u64().unwrap_or(0);
        match v["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let done_word = past_tense(action);
    if filter.dry_run {
        if json {
            println!(
                "{}",
                serde_json::json!({"action": action, "dry_run": true, "matched": total})
            );
        } else {
            println!("{total} message(s) would be {done_word}");
        }
        return Ok(());
    }
    if total > 0 && matches!(action, "delete" | "bounce") && !filter.yes {
        confirm(action, total)?;
    }
    let mut sums = BulkSums::default();
    after = None;
    loop {
        let v = page(false, after.as_deref())?;
        sums.add(&v);
        eprintln!("{done_word} {}/{total}", sums.changed);
        match v["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"action": action, "dry_run": false, "matched": sums.matched,
                "changed": sums.changed, "skipped": sums.skipped,
                "scheduled_left": sums.scheduled_left})
        );
    } else {
        println!("{}", sums.summary(action));
    }
    Ok(())
}

/// Totals of the pages of a bulk action.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BulkSums {
    matched: u64,
    changed: u64,
    skipped: u64,
    scheduled_left: u64,
}

impl BulkSums {
    fn add(&mut self, page: &Value) {
        let n = |k: &str| page[k].as_u64().unwrap_or(0);
        self.matched += n("matched");
        self.changed += n("changed");
        self.skipped += n("skipped");
        self.scheduled_left += n("scheduled_left");
    }

    /// The closing line for people.
    fn summary(&self, action: &str) -> String {
        if action == "retry" {
            return format!(
                "{} deferred message(s) made due now, {} scheduled message(s) left for their send time, {} skipped",
                self.changed, self.scheduled_left, self.skipped
            );
        }
        format!(
            "{} message(s) {}, {} skipped (finished, already so, or changed meanwhile)",
            self.changed,
            past_tense(action),
            self.skipped
        )
    }
}

/// `deleted`, `held`, … for messages.
fn past_tense(action: &str) -> &'static str {
    match action {
        "retry" => "retried",
        "hold" => "held",
        "release" => "released",
        "delete" => "deleted",
        _ => "bounced",
    }
}

/// Asks on the terminal before `action` on `count` messages; without a terminal, refuses.
fn confirm(action: &str, count: u64) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to {action} {count} message(s) without confirmation and there is no terminal to ask on; add --yes"
        );
    }
    eprint!("{action} {count} message(s)? type yes to go on: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "yes" {
        anyhow::bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

/// One call for one command (everything but the paged listing), printed.
fn act(client: &ApiClient, action: &QueueAction, json: bool) -> anyhow::Result<()> {
    let (method, path, body) = match action {
        QueueAction::List { .. } | QueueAction::Events { .. } => return Ok(()),
        QueueAction::Show { id } => ("GET", format!("/v1/queue/{}", encode(id)), None),
        QueueAction::Retry { id: Some(id), .. } => {
            ("POST", format!("/v1/queue/{}/retry", encode(id)), None)
        }
        QueueAction::Delete { id: Some(id), .. } => {
            ("DELETE", format!("/v1/queue/{}", encode(id)), None)
        }
        QueueAction::Bounce { id: Some(id), .. } => {
            ("POST", format!("/v1/queue/{}/bounce", encode(id)), None)
        }
        QueueAction::Hold { id: Some(id), .. } => {
            ("POST", format!("/v1/queue/{}/hold", encode(id)), None)
        }
        QueueAction::Release { id: Some(id), .. } => {
            ("POST", format!("/v1/queue/{}/release", encode(id)), None)
        }
        QueueAction::Retry { id: None, .. }
        | QueueAction::Delete { id: None, .. }
        | QueueAction::Bounce { id: None, .. }
        | QueueAction::Hold { id: None, .. }
        | QueueAction::Release { id: None, .. } => return Ok(()),
        QueueAction::Stats { top } => ("GET", format!("/v1/queue/stats?top={top}"), None),
    };
    let answer = client.call(method, &path, body, "admin")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    print!("{}", render(action, &answer));
    Ok(())
}

/// The largest page `GET /v1/queue` serves; longer listings take several calls.
const API_PAGE: usize = 1000;

/// Which messages a listing asks the API for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListQuery<'a> {
    /// Only this state.
    pub(crate) state: Option<&'a str>,
    /// Only messages with a recipient at this domain.
    pub(crate) domain: Option<&'a str>,
    /// Finished messages too.
    pub(crate) include_finished: bool,
}

impl ListQuery<'_> {
    /// The query string of one page of `GET /v1/queue`.
    fn query(&self, limit: usize, after: Option<&str>) -> String {
        let mut q = format!("limit={limit}");
        if let Some(s) = self.state {
            let _ = write!(q, "&state={}", encode(s));
        }
        if let Some(d) = self.domain {
            let _ = write!(q, "&domain={}", encode(d));
        }
        if self.include_finished {
            q.push_str("&include_finished=true");
        }
        if let Some(a) = after {
            let _ = write!(q, "&after={}", encode(a));
        }
        q
    }
}

/// Pages through `GET /v1/queue` from `after`, handing each page's messages to `each_page`,
/// until the listing ends or `wanted` messages were handed over (`None`: all of them).
/// Returns the cursor to continue from when it stopped early.
pub(crate) fn for_each_page(
    client: &ApiClient,
    filter: &ListQuery<'_>,
    mut after: Option<String>,
    wanted: Option<usize>,
    mut each_page: impl FnMut(&[Value]) -> anyhow::Result<()>,
) -> anyhow::Result<Option<String>> {
    let mut handed = 0usize;
    loop {
        let page_size = wanted.map_or(API_PAGE, |w| w.saturating_sub(handed).min(API_PAGE));
        if page_size == 0 {
            return Ok(after);
        }
        let page = client.get(
            &format!("/v1/queue?{}", filter.query(page_size, after.as_deref())),
            "admin",
        )?;
        let messages = page["messages"].as_array().map_or(&[][..], Vec::as_slice);
        handed += messages.len();
        each_page(messages)?;
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(None),
        }
    }
}

/// `queue list`: pages through the API and prints a table (or one JSON document), with the
/// cursor to continue from when `wanted` stopped it.
fn list(
    client: &ApiClient,
    filter: &ListQuery<'_>,
    after: Option<String>,
    wanted: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let now = now();
    let mut output = PagedOutput::new(
        json,
        fixed_row(&LIST_HEADER.map(str::to_owned), &LIST_WIDTHS),
    );
    let rest = for_each_page(client, filter, after, wanted, |messages| {
        output.page(messages, |m| list_entry(m, now));
        Ok(())
    })?;
    if json {
        let doc = serde_json::json!({ "messages": output.collected, "next_after": rest });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if let Some(next) = rest {
        println!("(more: continue with --after {next})");
    }
    Ok(())
}

/// A table printed page by page as the pages arrive (its header first), or with `--json` the
/// items kept for one document at the end.
struct PagedOutput {
    json: bool,
    header: Option<String>,
    collected: Vec<Value>,
}

impl PagedOutput {
    /// Output with `header` above the first page of a table (unused with `json`).
    fn new(json: bool, header: String) -> PagedOutput {
        PagedOutput {
            json,
            header: (!json).then_some(header),
            collected: Vec::new(),
        }
    }

    /// Prints `items`, one `row` each (or keeps them for the JSON document).
    fn page(&mut self, items: &[Value], row: impl Fn(&Value) -> String) {
        if self.json {
            self.collected.extend_from_slice(items);
            return;
        }
        let mut out = self.header.take().unwrap_or_default();
        for item in items {
            out.push_str(&row(item));
        }
        print!("{out}");
    }
}

/// Column titles of `queue list`.
const LIST_HEADER: [&str; 6] = ["ID", "STATE", "AGE", "NEXT", "FROM", "RECIPIENTS"];
/// Minimum widths of the `queue list` columns (wider values push the rest right).
const LIST_WIDTHS: [usize; 5] = [16, 9, 6, 8, 28];

/// One line of columns at least `widths` wide (the last cell unpadded).
fn fixed_row(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (cell, width) in cells.iter().zip(widths) {
        let _ = write!(line, "{cell:<width$}  ");
    }
    if let Some(last) = cells.get(widths.len()) {
        line.push_str(last);
    }
    let mut line = line.trim_end().to_owned();
    line.push('\n');
    line
}

/// A message of `queue list`: its row, then its last deferral reason in parentheses on the
/// line under it (as `mailq` shows it) when a pending recipient has one.
fn list_entry(m: &Value, now: Timestamp) -> String {
    let age = Timestamp::parse_rfc3339(m["created_at"].as_str().unwrap_or_default()).map_or_else(
        || "-".to_owned(),
        |t| short_duration(now.saturating_since(t)),
    );
    let next = match m["next_attempt_at"]
        .as_str()
        .and_then(Timestamp::parse_rfc3339)
    {
        Some(t) if t > now => format!("in {}", short_duration(t.saturating_since(now))),
        Some(_) => "now".to_owned(),
        None => "-".to_owned(),
    };
    let mut out = fixed_row(
        &[
            text(&m["id"]),
            text(&m["state"]),
            age,
            next,
            text(&m["from"]),
            recipients_summary(m),
        ],
        &LIST_WIDTHS,
    );
    if let Some(reason) = pending_reason(m) {
        let _ = writeln!(out, "  ({reason})");
    }
    out
}

/// The first recipient, and `+N` for the others.
fn recipients_summary(m: &Value) -> String {
    let all = m["recipients"].as_array().map_or(&[][..], Vec::as_slice);
    match all {
        [] => "-".to_owned(),
        [one] => text(&one["address"]),
        [first, rest @ ..] => format!("{} +{}", text(&first["address"]), rest.len()),
    }
}

/// The last reply of the first pending (queued or deferred) recipient that has one: why the
/// message is still waiting.
pub(crate) fn pending_reason(m: &Value) -> Option<String> {
    m["recipients"]
        .as_array()?
        .iter()
        .filter(|r| matches!(r["state"].as_str(), Some("queued" | "deferred")))
        .find(|r| r["last_reply"].is_object())
        .map(|r| reply_text(&r["last_reply"]))
}

/// A duration as its two largest units: `45s`, `12m`, `3h05m`, `2d04h`.
fn short_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The wall clock now.
pub(crate) fn now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

/// A JSON value as a table cell (`-` for null).
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A reply as `code enhanced text`.
pub(crate) fn reply_text(r: &Value) -> String {
    if r.is_null() {
        return "-".to_owned();
    }
    let mut s = text(&r["code"]);
    if let Some(e) = r["enhanced"].as_str() {
        s.push(' ');
        s.push_str(e);
    }
    if let Some(t) = r["text"].as_str() {
        s.push(' ');
        s.push_str(t);
    }
    s
}

/// Formats rows as left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let joined: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(joined.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

fn render(action: &QueueAction, v: &Value) -> String {
    match action {
        QueueAction::List { .. } | QueueAction::Events { .. } => String::new(),
        QueueAction::Show { .. } => {
            let mut out = String::new();
            for k in [
                "id",
                "state",
                "from",
                "source",
                "created_at",
                "attempts",
                "next_attempt_at",
                "finished_at",
                "size",
            ] {
                let _ = writeln!(out, "{k:<16}{}", text(&v[k]));
            }
            let empty = Vec::new();
            let rows: Vec<Vec<String>> = v["recipients"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|r| {
                    vec![
                        text(&r["address"]),
                        text(&r["state"]),
                        text(&r["attempts"]),
                        text(&r["mx_host"]),
                        reply_text(&r["last_reply"]),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(
                &["RECIPIENT", "STATE", "ATTEMPTS", "MX HOST", "LAST REPLY"],
                &rows,
            ));
            out
        }
        QueueAction::Stats { .. } => {
            let mut out = format!("pending messages: {}\n\n", text(&v["pending"]));
            let rows: Vec<Vec<String>> = v["by_state"].as_object().map_or_else(Vec::new, |m| {
                m.iter().map(|(k, n)| vec![k.clone(), text(n)]).collect()
            });
            out.push_str(&table(&["STATE", "MESSAGES"], &rows));
            let empty = Vec::new();
            let rows: Vec<Vec<String>> = v["top_domains"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|d| vec![text(&d["domain"]), text(&d["count"])])
                .collect();
            out.push('\n');
            out.push_str(&table(&["DOMAIN", "PENDING"], &rows));
            let rows: Vec<Vec<String>> = v["suspended_destinations"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|d| {
                    vec![
                        text(&d["host"]),
                        text(&d["until"]),
                        text(&d["failures"]),
                        text(&d["reason"]),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                out.push('\n');
                out.push_str(&table(
                    &["SUSPENDED HOST", "UNTIL", "FAILURES", "REASON"],
                    &rows,
                ));
            }
            out
        }
        QueueAction::Delete { .. } => format!("{} deleted\n", text(&v["id"])),
        QueueAction::Bounce { .. } => format!(
            "{} bounced ({} recipient(s)); DSN {}\n",
            text(&v["id"]),
            text(&v["bounced"]),
            text(&v["dsn_id"])
        ),
        QueueAction::Retry { .. } | QueueAction::Hold { .. } | QueueAction::Release { .. } => {
            let verb = if v["changed"].as_bool() == Some(true) {
                "changed"
            } else {
                "unchanged"
            };
            format!("{} {verb}, now {}\n", text(&v["id"]), text(&v["state"]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_encode() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn show_renders_recipients() {
        let v = serde_json::json!({"id": "00000000000000aa", "state": "deferred", "recipients": [
            {"address": "a@b.test", "state": "deferred", "attempts": 2, "mx_host": "mx.b.test", "last_reply": {"code": 450, "enhanced": "4.2.1", "text": "busy"}}
        ]});
        let out = render(&QueueAction::Show { id: "x".into() }, &v);
        assert!(
            out.contains("a@b.test   deferred  2         mx.b.test  450 4.2.1 busy"),
            "{out}"
        );
    }

    #[test]
    fn list_rows_carry_age_next_attempt_recipients_and_the_reason_below() {
        let now = Timestamp::parse_rfc3339("2026-12-03T12:00:00Z").unwrap_or(Timestamp::EPOCH);
        let m = serde_json::json!({"id": "00000000000000aa", "state": "deferred",
        "from": "app@example.com", "created_at": "2026-12-03T09:55:00Z",
        "next_attempt_at": "2026-12-03T12:10:00Z", "recipients": [
            {"address": "a@b.test", "state": "delivered", "last_reply": {"code": 250, "text": "ok"}},
            {"address": "c@d.test", "state": "deferred", "last_reply": {"code": 451, "enhanced": "4.7.1", "text": "greylisted"}},
            {"address": "e@d.test", "state": "queued", "last_reply": null}
        ]});
        let out = list_entry(&m, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "00000000000000aa  deferred   2h05m   in 10m    app@example.com               a@b.test +2"
        );
        assert_eq!(lines[1], "  (451 4.7.1 greylisted)");
        assert_eq!(lines.len(), 2);
        assert_eq!(short_duration(std::time::Duration::from_secs(59)), "59s");
        assert_eq!(
            short_duration(std::time::Duration::from_secs(2 * 86_400 + 3600)),
            "2d01h"
        );
    }

    #[test]
    fn time_options_take_rfc3339_or_a_duration_ago() {
        let now = Timestamp::parse_rfc3339("2026-12-03T12:00:00Z").unwrap_or(Timestamp::EPOCH);
        assert_eq!(
            time_arg("2h", now).ok().as_deref(),
            Some("2026-12-03T10:00:00.000Z")
        );
        assert_eq!(
            time_arg("2026-12-01T00:00:00Z", now).ok().as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        assert!(time_arg("yesterday", now).is_err());
    }
}
