//! The route table and the OpenAPI 3.0 document generated from it (`GET /openapi.json`, checked
//! in as `crates/api/openapi.json`).
//!
//! [`ROUTES`] is the single list of documented endpoints; [`crate::router`] registers its
//! handlers from the same table, so the document cannot miss a route built from it. Routes
//! added by hand in `router()` are caught by a test that scans `lib.rs`.

use axum::Json;
use axum::routing::{MethodRouter, delete, get, post};
use serde_json::{Value, json};

use crate::{
    ApiState, Scope, content, events, queue, routes, suppressions, tls_reports, unsubscribe,
};

/// A path or query parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Param {
    pub(crate) name: &'static str,
    /// `path` or `query`.
    pub(crate) location: &'static str,
    /// OpenAPI type: `string`, `integer` or `boolean`.
    pub(crate) kind: &'static str,
    pub(crate) description: &'static str,
}

/// One documented response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) description: &'static str,
    /// A schema in `components/schemas`, or `None` for an empty body.
    pub(crate) schema: Option<&'static str>,
}

/// One endpoint: how it is documented and which handler serves it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    /// The scope required, `None` for open endpoints.
    pub(crate) scope: Option<Scope>,
    pub(crate) operation_id: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) params: &'static [Param],
    /// `(schema, example JSON, status the example yields)`.
    pub(crate) request: Option<(&'static str, &'static str, u16)>,
    pub(crate) responses: &'static [Resp],
    pub(crate) handler: fn() -> MethodRouter<ApiState>,
}

/// Open routes that need a `read` key when `http.metrics_auth` is on.
pub(crate) const METRICS_AUTH_PATHS: &[&str] = &["/metrics", "/openapi.json"];

impl Route {
    /// The first 2xx status the route documents: the one its metrics series start at.
    pub(crate) fn success_status(&self) -> Option<u16> {
        self.responses
            .iter()
            .map(|r| r.status)
            .find(|s| (200..300).contains(s))
    }

    /// The scope the route needs: its own, or `read` for [`METRICS_AUTH_PATHS`] with
    /// `metrics_auth`.
    pub(crate) fn effective_scope(&self, metrics_auth: bool) -> Option<Scope> {
        if metrics_auth && self.scope.is_none() && METRICS_AUTH_PATHS.contains(&self.path) {
            Some(Scope::Read)
        } else {
            self.scope
        }
    }
}

const SCOPE: Param = Param {
    name: "scope",
    location: "query",
    kind: "string",
    description: "The sender domain of a scoped entry; absent: the global entry.",
};
const TOKEN: Param = Param {
    name: "token",
    location: "path",
    kind: "string",
    description: "The signed token of a `List-Unsubscribe` link.",
};
const ID: Param = Param {
    name: "id",
    location: "path",
    kind: "string",
    description: "Message id (16 hexadecimal digits).",
};
const ADDRESS: Param = Param {
    name: "address",
    location: "path",
    kind: "string",
    description: "E-mail address (any case; URL-encode `+` and `/`).",
};
const fn q(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        kind,
        description,
    }
}
const fn r(status: u16, description: &'static str, schema: Option<&'static str>) -> Resp {
    Resp {
        status,
        description,
        schema,
    }
}

const E400: Resp = r(400, "Invalid request (see `error.field`).", Some("Error"));
const E404: Resp = r(404, "Not found.", Some("Error"));
const E409: Resp = r(409, "Conflict with the current state.", Some("Error"));
const E410: Resp = r(
    410,
    "The message finished; its content is no longer kept.",
    Some("Error"),
);
const E413: Resp = r(
    413,
    "The message is larger than the relay parses.",
    Some("Error"),
);
const E503: Resp = r(503, "The queue is unavailable; retry later.", Some("Error"));
const MSG: Resp = r(200, "The message.", Some("Message"));

/// Example of `POST /v1/messages` (structured form).
pub(crate) const SEND_EXAMPLE: &str = r#"{"from": "Billing <billing@example.com>", "to": ["alice@example.net"], "subject": "Your invoice", "text": "Hello Alice", "tags": ["invoice"], "metadata": {"customer": "42"}}"#;

/// Every documented endpoint. `router()` registers the handlers from this table.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: "/v1/messages",
        scope: Some(Scope::Send),
        operation_id: "sendMessage",
        summary: "Submit one message (structured JSON, or raw RFC 5322 with `raw`). Optional `Idempotency-Key` header: a retry with the same key and body within the key lifetime answers like the first call with `Idempotent-Replayed: true`; another body gives 409 `idempotency_key_reused`; in cluster mode the key holds on every node, and while another node is still submitting under it the answer is 409 `idempotency_key_in_flight`.",
        params: &[Param {
            name: "Idempotency-Key",
            location: "header",
            kind: "string",
            description: "1 to 255 visible ASCII characters, unique per logical message.",
        }],
        request: Some(("SendRequest", SEND_EXAMPLE, 202)),
        responses: &[
            r(202, "Durably queued (or replayed).", Some("Accepted")),
            E400,
            r(
                409,
                "Idempotency key reused with another body.",
                Some("Error"),
            ),
            r(413, "Too large.", Some("Error")),
            E503,
        ],
        handler: || post(routes::send_message),
    },
    Route {
        method: "post",
        path: "/v1/messages/batch",
        scope: Some(Scope::Send),
        operation_id: "sendBatch",
        summary: "Submit up to `max_batch` messages; each item is accepted or refused on its own.",
        params: &[],
        request: Some((
            "BatchRequest",
            r#"{"messages": [{"from": "app@example.com", "to": ["a@example.net"], "subject": "Hi", "text": "One"}, {"from": "app@example.com", "to": ["not an address"], "subject": "Hi", "text": "Two"}]}"#,
            200,
        )),
        responses: &[
            r(
                200,
                "Per-item results in request order.",
                Some("BatchResponse"),
            ),
            E400,
            r(413, "Too large.", Some("Error")),
        ],
        handler: || post(routes::send_batch),
    },
    Route {
        method: "get",
        path: "/v1/messages/{id}",
        scope: Some(Scope::Read),
        operation_id: "getMessage",
        summary: "Status of a message and each recipient.",
        params: &[ID],
        request: None,
        responses: &[MSG, E400, E404],
        handler: || get(routes::get_message),
    },
    Route {
        method: "get",
        path: "/v1/messages/{id}/raw",
        scope: Some(Scope::Read),
        operation_id: "getMessageRaw",
        summary: "The message as stored (RFC 5322, `message/rfc822`, served as a download). Bodies are kept while a message is pending; a finished message gives 410.",
        params: &[ID],
        request: None,
        responses: &[
            r(200, "The message (message/rfc822).", None),
            E400,
            E404,
            E410,
        ],
        handler: || get(content::raw),
    },
    Route {
        method: "get",
        path: "/v1/messages/{id}/content",
        scope: Some(Scope::Read),
        operation_id: "getMessageContent",
        summary: "The message parsed: subject, addresses, date, Message-ID, headers, text and HTML bodies, and the attachments (download each with `/attachments/{n}`).",
        params: &[ID],
        request: None,
        responses: &[
            r(200, "The parsed message.", Some("MessageContent")),
            E400,
            E404,
            E410,
            E413,
            r(422, "The stored message cannot be parsed.", Some("Error")),
        ],
        handler: || get(content::content),
    },
    Route {
        method: "get",
        path: "/v1/messages/{id}/attachments/{n}",
        scope: Some(Scope::Read),
        operation_id: "getMessageAttachment",
        summary: "Attachment `n` (from 0, in the order `/content` lists them), decoded, as a download with its declared type.",
        params: &[
            ID,
            Param {
                name: "n",
                location: "path",
                kind: "integer",
                description: "Attachment index (from 0).",
            },
        ],
        request: None,
        responses: &[
            r(200, "The attachment's octets.", None),
            E400,
            E404,
            E410,
            E413,
            r(422, "The stored message cannot be parsed.", Some("Error")),
        ],
        handler: || get(content::attachment),
    },
    Route {
        method: "get",
        path: "/v1/events",
        scope: Some(Scope::Read),
        operation_id: "listEvents",
        summary: "Events with `seq > after` that match every given filter, oldest first. Pass `next_cursor` (the last `seq` examined) as `after` to continue. One call examines at most 10000 events, so a filtered page can be short or empty while later events still match: go on until `next_cursor` stops moving.",
        params: &[
            q(
                "after",
                "integer",
                "Cursor: the last `seq` seen (default 0).",
            ),
            q("limit", "integer", "Page size, 1 to 1000 (default 100)."),
            q(
                "id",
                "string",
                "Only events of this message (its queue id).",
            ),
            q(
                "recipient",
                "string",
                "Only events of this recipient address (any case).",
            ),
            q(
                "type",
                "string",
                "Only these types, comma-separated (accepted, deferred, delivered, bounced, suppressed, expired).",
            ),
            q("tag", "string", "Only events of messages with this tag."),
            q(
                "since",
                "string",
                "Only events at or after this RFC 3339 time.",
            ),
            q("until", "string", "Only events before this RFC 3339 time."),
        ],
        request: None,
        responses: &[r(200, "A page of events.", Some("EventPage")), E400],
        handler: || get(events::list),
    },
    Route {
        method: "get",
        path: "/v1/suppressions",
        scope: Some(Scope::Read),
        operation_id: "listSuppressions",
        summary: "Suppressed addresses in address order.",
        params: &[
            q(
                "after",
                "string",
                "Cursor: the `next_after` of the previous page (the last entry's address, followed by a space and its scope when it has one).",
            ),
            q("limit", "integer", "Page size, 1 to 1000 (default 100)."),
        ],
        request: None,
        responses: &[
            r(200, "A page of suppressions.", Some("SuppressionPage")),
            E400,
        ],
        handler: || get(suppressions::list),
    },
    Route {
        method: "post",
        path: "/v1/suppressions",
        scope: Some(Scope::Admin),
        operation_id: "addSuppression",
        summary: "Suppress an address: messages to it are no longer attempted.",
        params: &[],
        request: Some((
            "AddSuppression",
            r#"{"address": "former.customer@example.net", "reason": "manual"}"#,
            201,
        )),
        responses: &[
            r(201, "Added.", Some("Suppression")),
            r(
                200,
                "Already listed; the existing entry.",
                Some("Suppression"),
            ),
            E400,
            E503,
        ],
        handler: || post(suppressions::add),
    },
    Route {
        method: "get",
        path: "/v1/suppressions/{address}",
        scope: Some(Scope::Read),
        operation_id: "getSuppression",
        summary: "The suppression entry of an address.",
        params: &[ADDRESS, SCOPE],
        request: None,
        responses: &[r(200, "The entry.", Some("Suppression")), E400, E404],
        handler: || get(suppressions::show),
    },
    Route {
        method: "delete",
        path: "/v1/suppressions/{address}",
        scope: Some(Scope::Admin),
        operation_id: "deleteSuppression",
        summary: "Remove an address from the suppression list.",
        params: &[ADDRESS, SCOPE],
        request: None,
        responses: &[r(204, "Removed.", None), E400, E404],
        handler: || delete(suppressions::remove),
    },
    Route {
        method: "get",
        path: "/v1/queue",
        scope: Some(Scope::Admin),
        operation_id: "listQueue",
        summary: "List queued messages (pending by default).",
        params: &[
            q(
                "state",
                "string",
                "Only this state (queued, scheduled, deferred, held, delivered, bounced, partially_bounced).",
            ),
            q(
                "domain",
                "string",
                "Only messages with a recipient in this domain.",
            ),
            q(
                "include_finished",
                "boolean",
                "Also list finished messages.",
            ),
            q("after", "string", "Cursor: the last id seen."),
            q("limit", "integer", "Page size, 1 to 1000 (default 100)."),
        ],
        request: None,
        responses: &[r(200, "A page of messages.", Some("QueuePage")), E400],
        handler: || get(queue::list),
    },
    Route {
        method: "get",
        path: "/v1/queue/stats",
        scope: Some(Scope::Admin),
        operation_id: "queueStats",
        summary: "Counts by state and the busiest destination domains.",
        params: &[q("top", "integer", "How many domains to list.")],
        request: None,
        responses: &[r(200, "Statistics.", Some("QueueStats")), E400],
        handler: || get(queue::stats),
    },
    Route {
        method: "post",
        path: "/v1/queue/retry",
        scope: Some(Scope::Admin),
        operation_id: "retryMany",
        summary: "Make scheduled messages due now: all of them, or those for one domain.",
        params: &[],
        request: Some(("RetryRequest", r#"{"domain": "example.net"}"#, 200)),
        responses: &[r(200, "How many were moved.", Some("Object")), E400],
        handler: || post(queue::retry_many),
    },
    Route {
        method: "post",
        path: "/v1/queue/bulk",
        scope: Some(Scope::Admin),
        operation_id: "bulkQueueAction",
        summary: "One page of a filtered bulk operation (like postsuper): `action` (`retry`, `hold`, `release`, `delete` or `bounce`) on every pending message matching `state`, `domain` and `older_than` (or every pending one with `all: true`), one transaction per message. A call handles at most `limit` matches (default 500, at most 1000) and reads a bounded number of records; pass `next_after` back as `after` until it is `null`. `dry_run: true` only counts. Retry leaves scheduled messages for their send time (`scheduled_left`).",
        params: &[],
        request: Some((
            "BulkRequest",
            r#"{"action": "delete", "state": "deferred", "domain": "example.net", "older_than": "2h", "dry_run": true}"#,
            200,
        )),
        responses: &[
            r(
                200,
                "What this page matched and changed.",
                Some("BulkResult"),
            ),
            E400,
            E503,
        ],
        handler: || post(queue::bulk),
    },
    Route {
        method: "post",
        path: "/v1/tls-reports/send",
        scope: Some(Scope::Admin),
        operation_id: "sendTlsReports",
        summary: "Send the SMTP TLS reports (RFC 8460) of one UTC day now, outside the daily schedule: `day` (`YYYY-MM-DD`, default yesterday). Counts in memory are flushed first; counts of a domain whose report went out are removed, so a second call sends nothing for it.",
        params: &[],
        request: Some(("Object", r#"{"day": "2026-12-02"}"#, 200)),
        responses: &[
            r(
                200,
                "`{day, domains: [{domain, sent: [address], failed: [reason]}]}`.",
                Some("Object"),
            ),
            E400,
            r(
                501,
                "TLS reports are not enabled on this relay.",
                Some("Error"),
            ),
        ],
        handler: || post(tls_reports::send),
    },
    Route {
        method: "get",
        path: "/v1/queue/{id}",
        scope: Some(Scope::Admin),
        operation_id: "showQueued",
        summary: "One queued message.",
        params: &[ID],
        request: None,
        responses: &[MSG, E400, E404],
        handler: || get(queue::show),
    },
    Route {
        method: "delete",
        path: "/v1/queue/{id}",
        scope: Some(Scope::Admin),
        operation_id: "deleteQueued",
        summary: "Delete a message without notifying anyone.",
        params: &[ID],
        request: None,
        responses: &[r(204, "Deleted.", None), E400, E404],
        handler: || delete(queue::delete),
    },
    Route {
        method: "post",
        path: "/v1/queue/{id}/retry",
        scope: Some(Scope::Admin),
        operation_id: "retryOne",
        summary: "Make a pending message due now.",
        params: &[ID],
        request: None,
        responses: &[MSG, E400, E404, E409],
        handler: || post(queue::retry_one),
    },
    Route {
        method: "post",
        path: "/v1/queue/{id}/hold",
        scope: Some(Scope::Admin),
        operation_id: "holdQueued",
        summary: "Put a pending message on hold.",
        params: &[ID],
        request: None,
        responses: &[MSG, E400, E404, E409],
        handler: || post(queue::hold),
    },
    Route {
        method: "post",
        path: "/v1/queue/{id}/release",
        scope: Some(Scope::Admin),
        operation_id: "releaseQueued",
        summary: "Release a held message; it becomes due now.",
        params: &[ID],
        request: None,
        responses: &[MSG, E400, E404, E409],
        handler: || post(queue::release),
    },
    Route {
        method: "post",
        path: "/v1/queue/{id}/bounce",
        scope: Some(Scope::Admin),
        operation_id: "bounceQueued",
        summary: "Bounce the pending recipients now (a DSN goes to the sender when allowed).",
        params: &[ID],
        request: None,
        responses: &[MSG, E400, E404, E409],
        handler: || post(queue::bounce),
    },
    Route {
        method: "get",
        path: "/unsubscribe/{token}",
        scope: None,
        operation_id: "unsubscribePage",
        summary: "The page a `List-Unsubscribe` link opens in a browser: a confirm button that POSTs the one-click form. Changes nothing by itself (link scanners fetch URLs).",
        params: &[TOKEN],
        request: None,
        responses: &[
            r(200, "An HTML page with the confirm button.", None),
            r(
                404,
                "An HTML page: the link is not valid (or its message is gone).",
                None,
            ),
        ],
        handler: || get(unsubscribe::page),
    },
    Route {
        method: "post",
        path: "/unsubscribe/{token}",
        scope: None,
        operation_id: "unsubscribeOneClick",
        summary: "RFC 8058 one-click unsubscribe: body `List-Unsubscribe=One-Click` (form-encoded). Suppresses the recipient for the message's sender domain (reason `unsubscribed`) and logs an `unsubscribed` event; a repeat changes nothing.",
        params: &[TOKEN],
        request: None,
        responses: &[
            r(
                200,
                "`{\"status\": \"unsubscribed\"}`, or `already_unsubscribed`.",
                Some("Object"),
            ),
            E400,
            E404,
            E503,
        ],
        handler: || post(unsubscribe::one_click),
    },
    Route {
        method: "get",
        path: "/healthz",
        scope: None,
        operation_id: "health",
        summary: "Liveness: 200 while the process serves. `store` is `ok`, or why the queue refuses writes (then see `/readyz`).",
        params: &[],
        request: None,
        responses: &[r(
            200,
            "`{\"status\": \"ok\", \"store\": \"ok\"}`",
            Some("Health"),
        )],
        handler: || get(routes::healthz),
    },
    Route {
        method: "get",
        path: "/readyz",
        scope: None,
        operation_id: "ready",
        summary: "Readiness: whether the queue takes writes, so load balancers and Kubernetes send submissions elsewhere while it does not (a full disk, a failed sync).",
        params: &[],
        request: None,
        responses: &[
            r(200, "`{\"status\": \"ready\"}`", Some("Readiness")),
            r(
                503,
                "`{\"status\": \"unavailable\", \"reason\": \"...\"}`: the queue refuses writes.",
                Some("Readiness"),
            ),
        ],
        handler: || get(routes::readyz),
    },
    Route {
        method: "get",
        path: "/metrics",
        scope: None,
        operation_id: "metrics",
        summary: "Prometheus text exposition. Open, unless `http.metrics_auth` is on: then a key with the `read` scope is needed.",
        params: &[],
        request: None,
        responses: &[r(200, "Metrics (text/plain).", None)],
        handler: || get(routes::metrics),
    },
    Route {
        method: "get",
        path: "/openapi.json",
        scope: None,
        operation_id: "openapi",
        summary: "This document. Open, unless `http.metrics_auth` is on: then a key with the `read` scope is needed.",
        params: &[],
        request: None,
        responses: &[r(200, "The OpenAPI 3.0 document.", Some("Object"))],
        handler: || get(serve),
    },
];

/// Every documented route: [`ROUTES`] and the trust endpoints' table.
pub(crate) fn all_routes() -> impl Iterator<Item = &'static Route> {
    ROUTES.iter().chain(crate::trust_routes::ROUTES)
}

/// `GET /openapi.json`.
pub(crate) async fn serve() -> Json<Value> {
    Json(document())
}

fn schemas() -> Value {
    let s = |t: &str| json!({ "type": t });
    let reply = json!({"type": "object", "properties": {
        "code": s("integer"), "enhanced": {"type": "string", "nullable": true}, "text": s("string")}});
    json!({
        "Object": {"type": "object"},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "description": "Stable snake_case code."},
                "message": s("string"),
                "field": {"type": "string", "description": "The request field at fault."}}}}},
        "Mailbox": {"description": "`\"a@b.c\"`, `\"Name <a@b.c>\"` or `{\"email\", \"name\"}`.",
            "oneOf": [s("string"), {"type": "object", "required": ["email"], "properties": {
                "email": s("string"), "name": s("string")}}]},
        "SendRequest": {"type": "object", "description": "Structured form; or the raw form `{\"raw\": \"<RFC 5322>\", \"envelope\"?: {\"from\"?, \"to\"?}, \"tags\"?, \"metadata\"?, \"send_at\"?, \"unsubscribe\"?}`.",
            "properties": {
                "from": {"$ref": "#/components/schemas/Mailbox"},
                "to": {"type": "array", "items": {"$ref": "#/components/schemas/Mailbox"}},
                "cc": {"type": "array", "items": {"$ref": "#/components/schemas/Mailbox"}},
                "bcc": {"type": "array", "items": {"$ref": "#/components/schemas/Mailbox"}},
                "reply_to": {"type": "array", "items": {"$ref": "#/components/schemas/Mailbox"}},
                "subject": s("string"), "text": s("string"), "html": s("string"),
                "headers": {"type": "object", "additionalProperties": s("string")},
                "attachments": {"type": "array", "items": {"type": "object", "required": ["content"], "properties": {
                    "filename": s("string"), "content_type": s("string"),
                    "content": {"type": "string", "description": "Base64."},
                    "content_id": {"type": "string", "description": "Makes the part inline (cid:)."}}}},
                "tags": {"type": "array", "items": s("string")},
                "metadata": {"type": "object", "additionalProperties": s("string")},
                "send_at": {"type": "string", "format": "date-time"},
                "unsubscribe": {"type": "boolean", "description": "Give each recipient its own RFC 8058 one-click unsubscribe link (needs `[unsubscribe]`); default: the API key's `unsubscribe` setting."},
                "raw": s("string"),
                "envelope": {"type": "object", "properties": {"from": s("string"), "to": {"type": "array", "items": s("string")}}}}},
        "Accepted": {"type": "object", "required": ["id", "state"], "properties": {
            "id": s("string"), "state": {"type": "string", "enum": ["queued", "scheduled"]},
            "message_id": s("string")}},
        "BatchRequest": {"type": "object", "required": ["messages"], "properties": {
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/SendRequest"}}}},
        "BatchResponse": {"type": "object", "properties": {"results": {"type": "array", "items": {
            "oneOf": [{"$ref": "#/components/schemas/Accepted"}, {"$ref": "#/components/schemas/Error"}]}}}},
        "Reply": reply,
        "BounceCategory": {"type": "string", "description": "Why a delivery failed; present next to a failure reply (4xx/5xx).",
            "enum": postrider_core::BounceCategory::ALL.map(postrider_core::BounceCategory::as_str)},
        "Recipient": {"type": "object", "properties": {
            "address": s("string"),
            "state": {"type": "string", "enum": ["queued", "deferred", "delivered", "bounced", "suppressed"]},
            "attempts": s("integer"), "last_reply": {"$ref": "#/components/schemas/Reply"},
            "category": {"$ref": "#/components/schemas/BounceCategory"},
            "mx_host": s("string"), "last_attempt_at": {"type": "string", "format": "date-time"},
            "tls": {"type": "object", "description": "Transport of the last attempt that reached a server.",
                "properties": {"encrypted": s("boolean"), "version": {"type": "string", "example": "TLSv1.3"},
                    "verified": s("boolean")}},
            "async": {"type": "boolean", "description": "Present (true) when the recipient was delivered and then bounced by a DSN that came back to the bounce domain."}}},
        "Message": {"type": "object", "properties": {
            "id": s("string"),
            "state": {"type": "string", "enum": ["queued", "scheduled", "deferred", "held", "delivered", "bounced", "partially_bounced"]},
            "from": s("string"), "source": s("string"),
            "created_at": {"type": "string", "format": "date-time"}, "attempts": s("integer"),
            "next_attempt_at": {"type": "string", "format": "date-time", "nullable": true},
            "finished_at": {"type": "string", "format": "date-time", "nullable": true},
            "size": s("integer"), "tags": {"type": "array", "items": s("string")},
            "metadata": {"type": "object", "additionalProperties": s("string")},
            "sandbox": {"type": "boolean", "description": "Present (true) when the message is captured, not sent: submitted with a sandbox key, or while the relay captures everything."},
            "recipients": {"type": "array", "items": {"$ref": "#/components/schemas/Recipient"}}}},
        "MessageContent": {"type": "object", "properties": {
            "id": s("string"), "subject": {"type": "string", "nullable": true},
            "from": {"type": "array", "items": {"$ref": "#/components/schemas/ParsedMailbox"}},
            "to": {"type": "array", "items": {"$ref": "#/components/schemas/ParsedMailbox"}},
            "cc": {"type": "array", "items": {"$ref": "#/components/schemas/ParsedMailbox"}},
            "date": {"type": "string", "format": "date-time", "nullable": true},
            "message_id": {"type": "string", "nullable": true, "description": "Without angle brackets."},
            "headers": {"type": "array", "items": {"type": "object", "properties": {
                "name": s("string"), "value": {"type": "string", "description": "Unfolded, not decoded."}}}},
            "headers_truncated": {"type": "boolean", "description": "More than 500 headers; the rest are not listed."},
            "text": {"type": "string", "nullable": true}, "html": {"type": "string", "nullable": true},
            "attachments": {"type": "array", "items": {"type": "object", "properties": {
                "index": s("integer"), "name": {"type": "string", "nullable": true},
                "content_type": s("string"), "size": {"type": "integer", "description": "Decoded octets."},
                "content_id": {"type": "string", "nullable": true}}}}}},
        "ParsedMailbox": {"type": "object", "properties": {
            "name": {"type": "string", "nullable": true}, "email": {"type": "string", "nullable": true}}},
        "Event": {"type": "object", "required": ["seq", "type", "id", "at"], "properties": {
            "seq": s("integer"),
            "type": {"type": "string", "enum": ["accepted", "deferred", "delivered", "bounced", "suppressed", "expired", "complained", "unsubscribed"]},
            "id": {"type": "string", "description": "The queue id of the message (as in /v1/messages/{id})."},
            "recipient": s("string"),
            "reply": {"$ref": "#/components/schemas/Reply"}, "mx_host": s("string"),
            "category": {"$ref": "#/components/schemas/BounceCategory"},
            "source": {"type": "string", "enum": ["smtp", "http", "dsn"]},
            "tags": {"type": "array", "items": s("string")},
            "metadata": {"type": "object", "additionalProperties": s("string")},
            "at": {"type": "string", "format": "date-time"},
            "async": {"type": "boolean", "description": "Present (true) on a bounced event reported by a DSN after delivery."}}},
        "EventPage": {"type": "object", "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_cursor": s("integer")}},
        "Suppression": {"type": "object", "properties": {
            "address": s("string"), "reason": {"type": "string", "enum": ["hard_bounce", "manual", "complaint", "unsubscribed"]},
            "scope": {"type": "string", "description": "Present when the entry suppresses only messages from this sender domain (one-click unsubscribes); absent: all messages."},
            "created_at": {"type": "string", "format": "date-time"},
            "source_message": s("string"), "reply": {"$ref": "#/components/schemas/Reply"},
            "source_report": {"type": "object", "description": "The report received at the bounce domain that listed the address (asynchronous bounces, complaints).",
                "properties": {"report_id": s("string"), "received_at": {"type": "string", "format": "date-time"},
                    "status": {"type": "string", "description": "The DSN's status (5.1.1) or the complaint's feedback type (abuse)."},
                    "diagnostic": s("string")}}}},
        "SuppressionPage": {"type": "object", "properties": {
            "suppressions": {"type": "array", "items": {"$ref": "#/components/schemas/Suppression"}},
            "next_after": {"type": "string", "nullable": true}}},
        "AddSuppression": {"type": "object", "required": ["address"], "properties": {
            "address": s("string"), "reason": {"type": "string", "enum": ["manual", "hard_bounce", "unsubscribed"]},
            "scope": {"type": "string", "description": "Suppress only messages from this sender domain; absent: all messages."}}},
        "QueuePage": {"type": "object", "properties": {
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
            "next_after": {"type": "string", "nullable": true}}},
        "QueueStats": {"type": "object"},
        "BulkRequest": {"type": "object", "required": ["action"], "properties": {
            "action": {"type": "string", "enum": ["retry", "hold", "release", "delete", "bounce"]},
            "state": {"type": "string", "description": "Only messages in this state (queued, scheduled, deferred, held; a finished state selects finished messages)."},
            "domain": {"type": "string", "description": "Only messages with a recipient in this domain."},
            "older_than": {"type": "string", "description": "Only messages that arrived longer ago than this duration (`30m`, `2h`, `3d`)."},
            "all": {"type": "boolean", "description": "Every pending message; needed when no other filter is given."},
            "dry_run": {"type": "boolean", "description": "Only count the matches."},
            "after": {"type": "string", "description": "Cursor: the `next_after` of the previous page."},
            "limit": {"type": "integer", "description": "Most messages matched by this call, 1 to 1000 (default 500)."}}},
        "BulkResult": {"type": "object", "properties": {
            "action": s("string"), "dry_run": s("boolean"),
            "matched": {"type": "integer", "description": "Messages of this page that match the filter."},
            "changed": s("integer"),
            "skipped": {"type": "integer", "description": "Matches left as they were (finished or changed meanwhile, already so, in flight)."},
            "scheduled_left": {"type": "integer", "description": "Retry: messages left for their later send time."},
            "next_after": {"type": "string", "nullable": true, "description": "Cursor of the next page; `null` at the end."}}},
        "RetryRequest": {"type": "object", "properties": {"domain": s("string"), "all": s("boolean")}},
        "Health": {"type": "object", "required": ["status", "store"], "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "store": {"type": "string", "description": "`ok`, or why the queue refuses writes."}}},
        "Readiness": {"type": "object", "required": ["status"], "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "reason": {"type": "string", "description": "Why the queue refuses writes (with `unavailable`)."}}},
    })
}

/// The OpenAPI 3.0 document of every route in [`all_routes`].
pub(crate) fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for route in all_routes() {
        let params: Vec<Value> = route
            .params
            .iter()
            .map(|p| {
                json!({"name": p.name, "in": p.location, "required": p.location == "path",
                       "description": p.description, "schema": {"type": p.kind}})
            })
            .collect();
        let mut responses = serde_json::Map::new();
        for resp in route.responses {
            let mut v = json!({ "description": resp.description });
            if let Some(schema) = resp.schema {
                v["content"] = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}});
            }
            responses.insert(resp.status.to_string(), v);
        }
        if route.request.is_some() {
            responses.insert("415".into(), json!({"description": "The body is not sent as `application/json`.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        if route.scope.is_some() {
            responses.insert("401".into(), json!({"description": "Missing or invalid API key.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
            responses.insert("403".into(), json!({"description": "The key lacks the scope, or (without keys) the client is not on loopback.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
            responses.insert("429".into(), json!({"description": "Rate limited (see Retry-After).", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let mut op = json!({
            "operationId": route.operation_id,
            "summary": route.summary,
            "responses": responses,
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        match route.scope {
            Some(scope) => {
                op["security"] = json!([{ "apiKey": [] }]);
                op["x-required-scope"] = json!(scope.as_str());
            }
            None if METRICS_AUTH_PATHS.contains(&route.path) => {
                op["security"] = json!([{}, { "apiKey": [] }]);
            }
            None => op["security"] = json!([]),
        }
        if let Some((schema, example, status)) = route.request {
            op["x-example-status"] = json!(status);
            let example: Value = serde_json::from_str(example).unwrap_or(Value::Null);
            op["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{schema}")},
                "example": example}}});
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Postrider REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Submit mail, follow its delivery, manage the queue and the suppression list. Every error is `{\"error\": {\"code\", \"message\", \"field\"?}}`. Request bodies must be sent with `Content-Type: application/json` (else 415) and must not repeat a key within an object (else 400). Without configured keys, requests must name `localhost` or a loopback address as their host (else 421) and carry no `Origin` of another site (else 403).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <key>`; scopes send, read, admin. Without configured keys only loopback clients are served."}},
            "schemas": schemas(),
        },
    })
}
