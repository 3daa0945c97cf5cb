//! The HTTP and WebSocket API.

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use tracing::Instrument;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
use crate::metrics::{HttpLabels, RouteLabels};
use crate::AppState;

pub mod devices;
pub mod extract;
pub mod identity;
pub mod keypackages;
pub mod kt;
pub mod messages;
pub mod ops;
pub mod registration;
pub mod ws;

/// The OpenAPI description of every route, served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Redoubt relay API",
        description = "Accounts, devices, key packages and mailboxes of opaque MLS ciphertext. \
                       Every error is `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    paths(
        registration::request_code, registration::verify_code,
        devices::list_own, devices::revoke, devices::lookup, devices::peer_devices,
        keypackages::upload, keypackages::count, keypackages::claim,
        messages::send, messages::fetch, messages::ack, ws::upgrade,
        identity::publish_device_list, identity::device_lists, identity::query_device_lists,
        identity::create_link,
        identity::put_link_message, identity::get_link_message, identity::approve_link,
        identity::claim_link,
        kt::keys, kt::latest, kt::epoch, kt::audit, kt::consistency, kt::lookup, kt::history,
        ops::healthz, ops::service_key, ops::metrics, ops::openapi,
    ),
    components(schemas(
        redoubt_proto::ErrorBody, redoubt_proto::ErrorDetail, redoubt_proto::ErrorCode, redoubt_proto::MarketNotice,
        redoubt_proto::api::Envelope, redoubt_proto::api::EnvelopeKind,
        redoubt_proto::SignedDocument,
    )),
    modifiers(&BearerAuth, &StandardErrors)
)]
pub struct ApiDoc;

/// The error answers every operation can give, written into each
/// operation's responses where its own annotation did not name them: the
/// schemathesis run of issue 16 found most 400, 415 and 422 answers
/// undocumented. A body that is not JSON is 400 `invalid_json`, one with
/// another content type 415, one too large 413, one that is JSON but not
/// the request 422 `invalid_request`, as are path and query parameters
/// that do not parse; a route behind a token answers 401 without one.
struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let mut wanted = Vec::new();
                if has_body {
                    wanted.push(("400", "The body is not JSON (`invalid_json`)"));
                    wanted.push(("413", "The body is larger than the server accepts"));
                    wanted.push(("415", "The body is not `application/json`"));
                }
                if has_body || has_params {
                    wanted.push((
                        "422",
                        "The body or a parameter does not fit the request (`invalid_request`)",
                    ));
                }
                if secured {
                    wanted.push(("401", "No token, or not a valid one"));
                }
                for (status, description) in wanted {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Builds the router over a ready state.
pub fn router(state: AppState) -> Router {
    let max_body = state.config().http.max_body_bytes;
    Router::new()
        .route("/v1/registration/code", post(registration::request_code))
        .route("/v1/registration/verify", post(registration::verify_code))
        .route("/v1/devices", get(devices::list_own))
        .route("/v1/devices/{device_id}", delete(devices::revoke))
        .route("/v1/accounts/lookup", post(devices::lookup))
        .route(
            "/v1/accounts/{account_id}/devices",
            get(devices::peer_devices),
        )
        .route("/v1/keypackages", post(keypackages::upload))
        .route("/v1/keypackages/count", get(keypackages::count))
        .route("/v1/keypackages/claim", post(keypackages::claim))
        .route("/v1/messages", post(messages::send).get(messages::fetch))
        .route("/v1/messages/ack", post(messages::ack))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/device-list", put(identity::publish_device_list))
        .route(
            "/v1/accounts/{account_id}/device-lists",
            get(identity::device_lists),
        )
        .route("/v1/device-lists/query", post(identity::query_device_lists))
        .route("/v1/links", post(identity::create_link))
        .route("/v1/links/{link_id}/approve", post(identity::approve_link))
        .route("/v1/links/{link_id}/claim", post(identity::claim_link))
        .route(
            "/v1/links/{link_id}/{slot}",
            put(identity::put_link_message).get(identity::get_link_message),
        )
        .route("/v1/service-key", get(ops::service_key))
        .route("/v1/kt/keys", get(kt::keys))
        .route("/v1/kt/epochs/latest", get(kt::latest))
        .route("/v1/kt/epochs/{epoch}", get(kt::epoch))
        .route("/v1/kt/audit", get(kt::audit))
        .route("/v1/kt/consistency", get(kt::consistency))
        .route("/v1/kt/lookup/{phone}", get(kt::lookup))
        .route("/v1/kt/history/{phone}", get(kt::history))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body))
        // A body sent a byte at a time must not hold a task and a
        // connection for ever (issue 16).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.config().http.body_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts a request against rate limits (`limits`: what is limited, the
/// limit, the events this request counts for), refusing it with 429 and
/// the wait when any would go over.
pub(crate) async fn rate_limited(
    state: &AppState,
    limits: &[(&str, Vec<u8>, crate::config::RateLimit, u32)],
) -> Result<(), ApiError> {
    let keys = rate_keys(state, limits);
    match state.store().rate_limit(&keys, state.clock().now()).await? {
        None => Ok(()),
        Some(wait) => {
            state.metrics().rate_limited.inc();
            Err(ApiError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            })
        }
    }
}

/// The store's form of rate limits given as (what is limited, the id of
/// the one limited, the limit, the events counted): each bucket keyed so
/// that the table of events names nobody.
pub(crate) fn rate_keys(
    state: &AppState,
    limits: &[(&str, Vec<u8>, crate::config::RateLimit, u32)],
) -> Vec<crate::storage::RateKey> {
    limits
        .iter()
        .map(|(kind, id, limit, cost)| crate::storage::RateKey {
            key: state.phone_keyer().bucket(kind, id),
            max: limit.max,
            window: limit.window,
            cost: *cost,
        })
        .collect()
}

/// The bytes a client address is limited by: the IPv4 address, or the
/// IPv6 /64 (see `conn::Holder`).
pub(crate) fn address_bucket(ip: std::net::IpAddr) -> Vec<u8> {
    match crate::conn::Holder::of(ip) {
        crate::conn::Holder::V4(a) => a.to_be_bytes().to_vec(),
        crate::conn::Holder::V6(p) => p.to_be_bytes().to_vec(),
    }
}

/// A request method as a metric label: one of the methods the API uses, or
/// "other". The method is the client's to choose (any token up to the
/// header limit), and each distinct label value is a new time series kept
/// for the life of the process: taken verbatim, invented methods grew the
/// metrics by megabytes (issue 16).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Gives every request an id, a span, a metric and one log line. Only the
/// route template is recorded, never the concrete path, headers or body.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method()).to_owned();
    let request_id = uuid::Uuid::new_v4();
    let span = tracing::info_span!("request", %request_id, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    state
        .metrics()
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route: route.clone(),
            status,
        })
        .inc();
    state
        .metrics()
        .http_latency
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    response
}
