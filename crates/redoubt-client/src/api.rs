//! The relay's HTTP API, as the client calls it.

use redoubt_proto::api::*;
use redoubt_proto::{AccountId, AuthToken, DeviceId, EnvelopeId, ErrorBody, PhoneNumber};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ClientError, Result};

/// A connection to one relay, optionally authenticated.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<AuthToken>,
}

impl Api {
    /// An unauthenticated client for `base` (such as `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        Self::bound(base, None)
    }

    /// The same, with connections made from `local` (one address of a
    /// multi-homed machine; tests use several loopback addresses).
    pub fn bound(base: &str, local: Option<std::net::IpAddr>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            // Well under the relay's idle deadline (`http.header_timeout`,
            // 30 s by default): a pooled connection the relay is closing
            // just as a request goes out on it is reset, not retried.
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .local_address(local)
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: None,
        }
    }

    /// The same relay, authenticated with `token`.
    pub fn with_token(mut self, token: AuthToken) -> Self {
        self.token = Some(token);
        self
    }

    /// The relay's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token, if any.
    pub fn token(&self) -> Option<&AuthToken> {
        self.token.as_ref()
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            let text = if bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(text)
                .map_err(|_| ClientError::BadResponse(status.as_u16()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(ErrorBody { error }) if error.market.is_some() => Err(ClientError::MarketExited {
                code: error.code,
                notice: Box::new(error.market.unwrap_or_else(|| unreachable!())),
            }),
            Ok(body) => Err(ClientError::Server {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
                devices: body.error.devices,
            }),
            Err(_) => Err(ClientError::BadResponse(status.as_u16())),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            cause: without_url(e),
        }
    }

    /// The operator's public service key, which signs notices to users.
    pub async fn service_key(&self) -> Result<ServiceKeyResponse> {
        self.call::<(), _>(Method::GET, "/v1/service-key", None)
            .await
    }

    /// The key-transparency directory's public keys.
    pub async fn kt_keys(&self) -> Result<redoubt_proto::kt::KtKeysResponse> {
        self.call::<(), _>(Method::GET, "/v1/kt/keys", None).await
    }

    /// The directory's newest signed epoch.
    pub async fn kt_latest(&self) -> Result<redoubt_proto::kt::SignedEpoch> {
        self.call::<(), _>(Method::GET, "/v1/kt/epochs/latest", None)
            .await
    }

    /// The proof that the log of epoch roots up to `to` extends the log up
    /// to `from`; `None` when the relay has no such epochs.
    pub async fn kt_consistency(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Option<redoubt_proto::kt::KtConsistencyResponse>> {
        self.get_optional(&format!("/v1/kt/consistency?from={from}&to={to}"))
            .await
    }

    /// One signed epoch; `None` when the relay has no such epoch.
    pub async fn kt_epoch(&self, epoch: u64) -> Result<Option<redoubt_proto::kt::SignedEpoch>> {
        self.get_optional(&format!("/v1/kt/epochs/{epoch}")).await
    }

    /// The append-only proof from epoch `from` to `to`, with the signed
    /// epochs between.
    pub async fn kt_audit(&self, from: u64, to: u64) -> Result<redoubt_proto::kt::KtAuditResponse> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/kt/audit?from={from}&to={to}"),
            None,
        )
        .await
    }

    /// A lookup proof for a number; `None` when the directory does not
    /// hold it (yet).
    pub async fn kt_lookup(
        &self,
        phone: &PhoneNumber,
    ) -> Result<Option<redoubt_proto::kt::KtProofResponse>> {
        self.kt_proof("lookup", phone).await
    }

    /// This account's own number's key history proof; `None` when the
    /// directory does not hold it (yet).
    pub async fn kt_history(
        &self,
        phone: &PhoneNumber,
    ) -> Result<Option<redoubt_proto::kt::KtProofResponse>> {
        self.kt_proof("history", phone).await
    }

    /// A directory proof of `kind` for a number, `None` on 404 (the
    /// directory does not hold the number, or not yet).
    async fn kt_proof(
        &self,
        kind: &str,
        phone: &PhoneNumber,
    ) -> Result<Option<redoubt_proto::kt::KtProofResponse>> {
        self.get_optional(&format!("/v1/kt/{kind}/{}", phone.e164()))
            .await
    }

    /// A GET whose 404 means "there is none": `None`, not an error.
    async fn get_optional<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.call::<(), _>(Method::GET, path, None).await {
            Ok(answer) => Ok(Some(answer)),
            Err(ClientError::Server { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks for a verification code.
    pub async fn request_code(&self, phone: &PhoneNumber) -> Result<RequestCodeResponse> {
        self.call(
            Method::POST,
            "/v1/registration/code",
            Some(&RequestCodeRequest {
                phone: phone.clone(),
            }),
        )
        .await
    }

    /// Verifies a code and registers a device.
    pub async fn verify_code(&self, request: &VerifyCodeRequest) -> Result<VerifyCodeResponse> {
        self.call(Method::POST, "/v1/registration/verify", Some(request))
            .await
    }

    /// The caller's devices.
    pub async fn own_devices(&self) -> Result<OwnDevicesResponse> {
        self.call::<(), _>(Method::GET, "/v1/devices", None).await
    }

    /// Revokes one of the caller's devices.
    pub async fn revoke_device(&self, device: DeviceId) -> Result<()> {
        self.call::<(), serde_json::Value>(Method::DELETE, &format!("/v1/devices/{device}"), None)
            .await
            .map(|_| ())
    }

    /// The account behind a number.
    pub async fn lookup(&self, phone: &PhoneNumber) -> Result<AccountDevicesResponse> {
        match self
            .call(
                Method::POST,
                "/v1/accounts/lookup",
                Some(&LookupRequest {
                    phone: phone.clone(),
                }),
            )
            .await
        {
            Err(ClientError::Server { status: 404, .. }) => {
                Err(ClientError::UnknownContact(phone.to_string()))
            }
            other => other,
        }
    }

    /// An account's devices.
    pub async fn account_devices(&self, account: AccountId) -> Result<AccountDevicesResponse> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/accounts/{account}/devices"),
            None,
        )
        .await
    }

    /// Uploads key packages.
    pub async fn upload_key_packages(
        &self,
        key_packages: Vec<KeyPackageUpload>,
    ) -> Result<KeyPackageCountResponse> {
        self.call(
            Method::POST,
            "/v1/keypackages",
            Some(&UploadKeyPackagesRequest { key_packages }),
        )
        .await
    }

    /// How many key packages are left.
    pub async fn key_package_count(&self) -> Result<KeyPackageCountResponse> {
        self.call::<(), _>(Method::GET, "/v1/keypackages/count", None)
            .await
    }

    /// Claims one key package per device.
    pub async fn claim(&self, devices: Vec<DeviceId>) -> Result<ClaimKeyPackagesResponse> {
        self.call(
            Method::POST,
            "/v1/keypackages/claim",
            Some(&ClaimKeyPackagesRequest { devices }),
        )
        .await
    }

    /// Sends an envelope.
    pub async fn send(
        &self,
        id: EnvelopeId,
        recipients: Vec<DeviceId>,
        payload: Vec<u8>,
        commit: Option<CommitTag>,
    ) -> Result<SendResponse> {
        self.call(
            Method::POST,
            "/v1/messages",
            Some(&SendRequest {
                id,
                recipients,
                payload: payload.into(),
                commit,
            }),
        )
        .await
    }

    /// Fetches the oldest waiting envelopes.
    pub async fn fetch(&self) -> Result<FetchResponse> {
        self.call::<(), _>(Method::GET, "/v1/messages", None).await
    }

    /// Acknowledges envelopes.
    pub async fn ack(&self, ids: Vec<EnvelopeId>) -> Result<AckResponse> {
        self.call(Method::POST, "/v1/messages/ack", Some(&AckRequest { ids }))
            .await
    }

    /// An account's signed device lists after version `since`, oldest
    /// first, every page of them.
    pub async fn device_lists_since(
        &self,
        account: AccountId,
        since: u64,
    ) -> Result<Vec<redoubt_proto::SignedDocument>> {
        let mut out: Vec<redoubt_proto::SignedDocument> = Vec::new();
        loop {
            let page: DeviceListsResponse = self
                .call::<(), _>(
                    Method::GET,
                    &format!(
                        "/v1/accounts/{account}/device-lists?since={}",
                        since + out.len() as u64
                    ),
                    None,
                )
                .await?;
            let full = page.lists.len() >= 100;
            out.extend(page.lists);
            if !full {
                return Ok(out);
            }
        }
    }

    /// The newer signed device lists of many accounts in one request.
    pub async fn query_device_lists(
        &self,
        accounts: Vec<DeviceListQuery>,
    ) -> Result<DeviceListsQueryResponse> {
        self.call(
            Method::POST,
            "/v1/device-lists/query",
            Some(&DeviceListsQueryRequest { accounts }),
        )
        .await
    }

    /// Publishes the caller's account's next signed device list.
    pub async fn publish_device_list(
        &self,
        list: redoubt_proto::SignedDocument,
    ) -> Result<PublishDeviceListResponse> {
        self.call(
            Method::PUT,
            "/v1/device-list",
            Some(&PublishDeviceListRequest { list }),
        )
        .await
    }

    /// Opens a link rendezvous.
    pub async fn create_link(&self) -> Result<LinkCreatedResponse> {
        self.call::<(), _>(Method::POST, "/v1/links", None).await
    }

    /// Writes one message of a link.
    pub async fn put_link(&self, link: &str, slot: &str, data: Vec<u8>) -> Result<()> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("/v1/links/{link}/{slot}"),
            Some(&LinkMessage { data: data.into() }),
        )
        .await
        .map(|_| ())
    }

    /// One message of a link, once written.
    pub async fn get_link(&self, link: &str, slot: &str) -> Result<Option<Vec<u8>>> {
        let message: Option<LinkMessage> = self
            .call::<(), _>(Method::GET, &format!("/v1/links/{link}/{slot}"), None)
            .await?;
        Ok(message.map(|m| m.data.into_vec()))
    }

    /// Approves the new device of a link.
    pub async fn approve_link(
        &self,
        link: &str,
        request: &ApproveLinkRequest,
    ) -> Result<ApproveLinkResponse> {
        self.call(
            Method::POST,
            &format!("/v1/links/{link}/approve"),
            Some(request),
        )
        .await
    }

    /// Collects the token of a linked device.
    pub async fn claim_link(
        &self,
        link: &str,
        request: &ClaimLinkRequest,
    ) -> Result<VerifyCodeResponse> {
        self.call(
            Method::POST,
            &format!("/v1/links/{link}/claim"),
            Some(request),
        )
        .await
    }

    /// Whether the server status means "unavailable", for retry decisions.
    pub fn is_retryable(status: StatusCode) -> bool {
        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
    }
}

/// reqwest errors print the URL; keep only the cause.
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
