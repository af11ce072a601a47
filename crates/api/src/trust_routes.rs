//! Sender-domain checks and address verification over HTTP (backed by `postrider-trust`).
//!
//! - `GET /v1/domains/{domain}/check` (scope `read`): SPF, DKIM, DMARC and MX of a sender
//!   domain as a JSON `DomainReport`, each failing check with the record to publish.
//! - `POST /v1/verify` `{"address": "..."}` (scope `send`): SMTP callout verification, answering
//!   `{address, result: deliverable|undeliverable|unknown, reply?, mx_host?, cached, reason?}`;
//!   `429` with `Retry-After` when the recipient domain's callout budget is used up.
//!
//! Both answer `501 not_configured` when the binary did not attach [`TrustServices`]
//! ([`crate::ApiState::with_trust`]), and `/v1/verify` also when verification is disabled.
//!
//! Caveats of `/v1/verify`: catch-all domains accept every address (`deliverable` is not proof
//! that a mailbox exists); greylisting and temporary errors give `unknown`; some providers block
//! callouts; verifying lists in bulk can get the relay's IP listed, hence the per-domain limit.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get, post};
use postrider_core::Domain;
use postrider_trust::{DomainReport, TrustServices, VerifyError, VerifyResult};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::openapi::{Param, Resp, Route};
use crate::{ApiState, Scope};
use axum::Router;

/// The trust endpoints, in the format of [`crate::openapi::ROUTES`] (so they can be added to
/// the OpenAPI document by chaining this table).
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/v1/domains/{domain}/check",
        scope: Some(Scope::Read),
        operation_id: "checkDomain",
        summary: "Check SPF (are the relay's egress IPs authorised?), DKIM (do the published keys match the configured ones?), DMARC and MX of a sender domain; every failing check carries the fix.",
        params: &[Param {
            name: "domain",
            location: "path",
            kind: "string",
            description: "The sender domain, e.g. `example.com`.",
        }],
        request: None,
        responses: &[
            Resp {
                status: 200,
                description: "The report: `{domain, status, checks: [{name, status: pass|warn|fail, detail, fix?}]}`.",
                schema: Some("Object"),
            },
            Resp {
                status: 400,
                description: "Not a valid domain.",
                schema: Some("Error"),
            },
            Resp {
                status: 501,
                description: "Domain checks are not configured on this relay.",
                schema: Some("Error"),
            },
        ],
        handler: || get(check_domain),
    },
    Route {
        method: "post",
        path: "/v1/verify",
        scope: Some(Scope::Send),
        operation_id: "verifyAddress",
        summary: "Verify an address by SMTP callout (MAIL FROM:<>, RCPT TO, QUIT; nothing is sent). `deliverable` only means the MX would accept it (catch-all domains accept everything); greylisting and temporary errors give `unknown`. Answers are cached; callouts are rate limited per recipient domain.",
        params: &[],
        request: Some(("Object", r#"{"address": "someone@example.net"}"#, 200)),
        responses: &[
            Resp {
                status: 200,
                description: "`{address, result: deliverable|undeliverable|unknown, reply?: {code, enhanced?, text}, mx_host?, cached, reason?}`.",
                schema: Some("Object"),
            },
            Resp {
                status: 400,
                description: "Missing or invalid address.",
                schema: Some("Error"),
            },
            Resp {
                status: 429,
                description: "Too many verifications for the recipient domain; see `Retry-After`.",
                schema: Some("Error"),
            },
            Resp {
                status: 501,
                description: "Address verification is not configured on this relay.",
                schema: Some("Error"),
            },
        ],
        handler: || post(verify_address),
    },
];

/// The routes of [`ROUTES`] needing `scope`.
pub(crate) fn routes(scope: Scope) -> Router<ApiState> {
    ROUTES
        .iter()
        .filter(|r| r.scope == Some(scope))
        .fold(Router::new(), |router, r| {
            let handler: MethodRouter<ApiState> = (r.handler)();
            router.route(r.path, handler)
        })
}

fn not_configured(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_configured",
        format!("{what} is not configured on this relay"),
    )
}

fn services(state: &ApiState, what: &str) -> Result<Arc<TrustServices>, ApiError> {
    state.trust.clone().ok_or_else(|| not_configured(what))
}

/// `GET /v1/domains/{domain}/check`.
async fn check_domain(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DomainReport>, ApiError> {
    let Ok(Path(raw)) = path else {
        return Err(ApiError::invalid(
            "invalid_domain",
            "domain",
            "the path must name a domain",
        ));
    };
    let domain = Domain::parse(&raw)
        .ok()
        .filter(|d| d.address_literal().is_none())
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_domain",
                "domain",
                format!("{raw:?} is not a domain"),
            )
        })?;
    let trust = services(&state, "domain checking")?;
    let report = postrider_trust::check_domain(
        &trust.resolver,
        &domain,
        &trust.egress_ips,
        &trust.dkim_keys,
    )
    .await;
    Ok(Json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    address: String,
}

/// `POST /v1/verify`.
async fn verify_address(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Json<VerifyResult>, ApiError> {
    let request: VerifyRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::invalid(
            "invalid_request",
            "address",
            format!("expected {{\"address\": \"...\"}}: {e}"),
        )
    })?;
    let trust = services(&state, "address verification")?;
    let verifier = trust
        .verifier
        .as_ref()
        .ok_or_else(|| not_configured("address verification"))?;
    match verifier.verify(&request.address).await {
        Ok(result) => Ok(Json(result)),
        Err(VerifyError::InvalidAddress(why)) => Err(ApiError::invalid(
            "invalid_address",
            "address",
            format!("not a valid address: {why}"),
        )),
        Err(VerifyError::RateLimited {
            domain,
            retry_after,
        }) => {
            let secs = retry_after.as_secs().max(1);
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many verifications for {domain}; retry in {secs}s"),
            );
            err.retry_after = Some(secs);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Method, Request, header};
    use postrider_metrics::Metrics;
    use postrider_store::Store;
    use postrider_testkit::{Behaviour, DnsServer, SmtpSink, Zone};
    use postrider_trust::{Verifier, VerifierSettings};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::{ApiKey, ApiSettings, generate_api_key, router};

    async fn call(
        app: &axum::Router,
        method: Method,
        uri: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Option<String>, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(
            "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        ));
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            retry,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn state(settings: ApiSettings) -> ApiState {
        let metrics = Metrics::new();
        ApiState::new(
            Store::temporary(metrics.clone()).unwrap(),
            metrics,
            settings,
        )
    }

    #[tokio::test]
    async fn not_configured_is_501() {
        let app = router(state(ApiSettings::default()));
        let (status, _, json) = call(
            &app,
            Method::GET,
            "/v1/domains/example.test/check",
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(json["error"]["code"], "not_configured");
        let (status, _, _) = call(
            &app,
            Method::POST,
            "/v1/verify",
            Some(r#"{"address":"a@example.test"}"#),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    }

    #[tokio::test]
    async fn check_and_verify_over_http() {
        let sink = SmtpSink::builder()
            .bind(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
            .behaviour(Behaviour::with_standard_rules())
            .start()
            .await
            .unwrap();
        let dns = DnsServer::start([Zone::new("test.")
            .txt("example.test", "v=spf1 ip4:192.0.2.10 -all")
            .txt("_dmarc.example.test", "v=DMARC1; p=none")
            .mx("example.test", 10, "mx.example.test")
            .a("mx.example.test", Ipv4Addr::LOCALHOST)])
        .await
        .unwrap();
        let resolver = postrider_dns::HickoryMxResolver::with_nameservers(
            &[dns.addr()],
            Duration::from_secs(2),
        )
        .unwrap();
        let verifier = Verifier::new(
            VerifierSettings {
                smtp_port: sink.port(),
                per_domain_per_minute: 2,
                ..VerifierSettings::default()
            },
            resolver.clone(),
        );
        let trust = TrustServices {
            resolver,
            egress_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))],
            dkim_keys: Vec::new(),
            verifier: Some(Arc::new(verifier)),
        };
        let (read_key, read_hash) = generate_api_key();
        let (send_key, send_hash) = generate_api_key();
        let settings = ApiSettings {
            api_keys: vec![
                ApiKey {
                    name: "reader".into(),
                    key_hash: read_hash,
                    scopes: vec![Scope::Read],
                    sandbox: false,
                    unsubscribe: false,
                },
                ApiKey {
                    name: "sender".into(),
                    key_hash: send_hash,
                    scopes: vec![Scope::Send],
                    sandbox: false,
                    unsubscribe: false,
                },
            ],
            ..ApiSettings::default()
        };
        let app = router(state(settings).with_trust(Arc::new(trust)));

        let (status, _, json) = call(
            &app,
            Method::GET,
            "/v1/domains/Example.Test/check",
            None,
            Some(&read_key),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["domain"], "example.test");
        assert_eq!(json["status"], "pass", "{json}");
        assert_eq!(json["checks"][0]["name"], "spf");

        let (status, _, json) = call(
            &app,
            Method::GET,
            "/v1/domains/not_a_domain!/check",
            None,
            Some(&read_key),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], "invalid_domain");

        // Scopes: checking needs read, verifying needs send.
        let (status, _, _) = call(
            &app,
            Method::GET,
            "/v1/domains/example.test/check",
            None,
            Some(&send_key),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let body = r#"{"address":"good@example.test"}"#;
        let (status, _, _) = call(
            &app,
            Method::POST,
            "/v1/verify",
            Some(body),
            Some(&read_key),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let (status, _, json) = call(
            &app,
            Method::POST,
            "/v1/verify",
            Some(body),
            Some(&send_key),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["result"], "deliverable");
        assert_eq!(json["reply"]["code"], 250);
        assert_eq!(json["cached"], false);

        let (status, _, json) = call(
            &app,
            Method::POST,
            "/v1/verify",
            Some(r#"{"address":"bad@example.test"}"#),
            Some(&send_key),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["result"], "undeliverable");
        assert_eq!(json["reply"]["enhanced"], "5.1.1");

        // Third callout to the domain within the minute: 429 with Retry-After.
        let (status, retry, json) = call(
            &app,
            Method::POST,
            "/v1/verify",
            Some(r#"{"address":"third@example.test"}"#),
            Some(&send_key),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
        assert_eq!(json["error"]["code"], "rate_limited");
        let secs: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&secs));

        // A cached answer is still served.
        let (status, _, json) = call(
            &app,
            Method::POST,
            "/v1/verify",
            Some(body),
            Some(&send_key),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["cached"], true);
        assert_eq!(sink.connection_count(), 2);

        for bad in [r#"{"address":"nope"}"#, r#"{"email":"a@b.test"}"#] {
            let (status, _, json) =
                call(&app, Method::POST, "/v1/verify", Some(bad), Some(&send_key)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
            assert_eq!(json["error"]["field"], "address");
        }
    }
}
