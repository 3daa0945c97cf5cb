//! Request extractors: JSON bodies with our error format, the client's
//! address (proxy-aware), and bearer-token authentication.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use redoubt_proto::{AccountId, AuthToken, DeviceId, PhoneError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::storage::{Digest, TokenStatus};
use crate::AppState;

/// A JSON body whose rejections use the API's error format.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(axum::extract::rejection::JsonRejection::JsonDataError(e)) => {
                // A phone number that fails validation inside an otherwise
                // well-formed body gets its own code, as clients expect.
                let text = e.body_text();
                for err in [PhoneError::Unparseable, PhoneError::Invalid] {
                    if text.contains(&err.to_string()) {
                        return Err(ApiError::InvalidPhoneNumber(err));
                    }
                }
                Err(ApiError::InvalidRequest(text))
            }
            Err(rejection) => Err(rejection.into()),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A path parameter whose rejection uses the API's error format.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A query string whose rejection uses the API's error format.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy,
/// the address the proxy reports in `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0)
            .ok_or_else(|| ApiError::Unavailable("client address unknown"))?;
        let http = &state.config().http;
        if !http.trusted_proxies.contains(&peer.ip()) {
            return Ok(Self(peer));
        }
        // The right-most entry not added by one of our own proxies is the
        // client; entries further left could be forged by the client.
        let forwarded: Vec<IpAddr> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let Some(ip) = forwarded
            .iter()
            .rev()
            .find(|ip| !http.trusted_proxies.contains(ip))
        else {
            return Ok(Self(peer));
        };
        let port = http
            .client_port_header
            .as_deref()
            .and_then(|h| parts.headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self(SocketAddr::new(*ip, port)))
    }
}

/// Hashes a bearer token for lookup; only hashes are stored.
pub fn token_hash(token: &AuthToken) -> Digest {
    Sha256::digest(token.expose().as_bytes()).into()
}

/// An authenticated device. Extracting it also records the sighting in the
/// IP-address log, and refuses (451) a request placed in a market the
/// service has left.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The caller's account.
    pub account_id: AccountId,
    /// The caller's device.
    pub device_id: DeviceId,
    /// Where the call came from.
    pub addr: SocketAddr,
    /// The markets the call is placed in (phone region and address).
    pub markets: Vec<String>,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let text = header.to_str().map_err(|_| ApiError::InvalidToken)?;
        let raw = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(ApiError::MissingToken)?;
        let token = AuthToken::parse(raw.trim()).map_err(|_| ApiError::InvalidToken)?;
        let auth = match state.store().token_status(&token_hash(&token)).await? {
            TokenStatus::Active(auth) => auth,
            TokenStatus::Revoked => return Err(ApiError::TokenRevoked),
            TokenStatus::Unknown => return Err(ApiError::InvalidToken),
        };
        let ClientAddr(addr) = ClientAddr::from_request_parts(parts, state).await?;
        let markets = state.markets().place(auth.region.as_deref(), addr.ip());
        // Refused before the sighting is logged: a market the service has
        // left gets nothing from it, not even a new IP-log row.
        state.markets().check(&markets, state.clock().now())?;
        state
            .ip_recorder()
            .observe(auth.account_id, addr, false)
            .await;
        Ok(Self {
            account_id: auth.account_id,
            device_id: auth.device_id,
            addr,
            markets,
        })
    }
}
