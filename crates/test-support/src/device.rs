//! A device registered through the real API.

use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use rand::RngCore;
use redoubt_proto::api::*;
use redoubt_proto::ws::binary::{self, ClientMessage, ServerMessage};
use redoubt_proto::ws::{ClientFrame, ServerFrame};
use redoubt_proto::{
    AccountId, AuthToken, DeviceId, EnvelopeId, ErrorBody, KeyPackageRef, PhoneNumber,
};
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long helpers wait for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Reads an error response into its status and body, failing the test if the
/// body is not the API's JSON error format.
pub async fn api_error(response: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = response.status();
    let text = response.text().await.expect("error body");
    let body: ErrorBody = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not an ErrorBody ({e}): {text}"));
    (status, body)
}

/// A registered device.
#[derive(Clone)]
pub struct TestDevice {
    /// The server's base URL.
    pub base: String,
    /// The HTTP client (keeps connections alive, like a real client).
    pub http: reqwest::Client,
    /// The account's number.
    pub phone: PhoneNumber,
    /// The account.
    pub account_id: AccountId,
    /// This device.
    pub device_id: DeviceId,
    /// Its bearer token.
    pub token: AuthToken,
    /// Its Ed25519 key.
    pub signing_key: SigningKey,
}

impl TestDevice {
    /// Registers with codes read from this process's captured log.
    pub async fn register(base: &str, phone: &str, name: &str) -> Self {
        Self::register_with(base, phone, name, || {
            crate::logs::dev_code_for(
                &crate::logs::captured(),
                &PhoneNumber::parse(phone).ok()?.to_string(),
            )
        })
        .await
    }

    /// Registers, polling `code` for the code the server sent.
    pub async fn register_with(
        base: &str,
        phone: &str,
        name: &str,
        code: impl Fn() -> Option<String>,
    ) -> Self {
        Self::register_from(reqwest::Client::new(), base, phone, name, code).await
    }

    /// Registers using a given HTTP client (for example one bound to a
    /// particular local address).
    pub async fn register_from(
        http: reqwest::Client,
        base: &str,
        phone: &str,
        name: &str,
        code: impl Fn() -> Option<String>,
    ) -> Self {
        let phone = PhoneNumber::parse(phone).expect("test phone numbers are valid");
        let before = code();
        let response = http
            .post(format!("{base}/v1/registration/code"))
            .json(&RequestCodeRequest {
                phone: phone.clone(),
            })
            .send()
            .await
            .expect("request code");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let session = response
            .json::<redoubt_proto::api::RequestCodeResponse>()
            .await
            .expect("code response")
            .session;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let code = loop {
            // A code equal to an earlier one for the same number would be a
            // one-in-a-million coincidence; waiting for a change keeps
            // re-registration tests honest.
            if let Some(c) = code().filter(|c| Some(c) != before.as_ref()) {
                break c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no code logged for the test number"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let signing_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let challenge = VerifyCodeRequest::registration_challenge(&phone, &code);
        let request = VerifyCodeRequest {
            session,
            phone: phone.clone(),
            code,
            device_name: name.into(),
            signature_key: signing_key.verifying_key().to_bytes().to_vec().into(),
            proof: signing_key.sign(&challenge).to_bytes().to_vec().into(),
        };
        let response = http
            .post(format!("{base}/v1/registration/verify"))
            .json(&request)
            .send()
            .await
            .expect("verify code");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: VerifyCodeResponse = response.json().await.expect("registration response");
        Self {
            base: base.to_owned(),
            http,
            phone,
            account_id: body.account_id,
            device_id: body.device_id,
            token: body.token,
            signing_key,
        }
    }

    /// A request with this device's token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(self.token.expose())
    }

    /// An authenticated GET.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    /// An authenticated POST of a JSON body.
    pub async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> reqwest::Response {
        self.request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// Uploads `n` random one-time key packages (and a last-resort one if
    /// asked), returning the count the server reports.
    pub async fn upload_key_packages(
        &self,
        n: usize,
        last_resort: bool,
    ) -> KeyPackageCountResponse {
        let mut key_packages: Vec<KeyPackageUpload> = (0..n)
            .map(|_| KeyPackageUpload {
                id: random_ref(),
                data: random_bytes(200).into(),
                last_resort: false,
            })
            .collect();
        if last_resort {
            key_packages.push(KeyPackageUpload {
                id: random_ref(),
                data: random_bytes(200).into(),
                last_resort: true,
            });
        }
        let response = self
            .post(
                "/v1/keypackages",
                &UploadKeyPackagesRequest { key_packages },
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("count")
    }

    /// Sends `payload` to `recipients` with a fresh envelope id.
    pub async fn send(&self, recipients: &[DeviceId], payload: &[u8]) -> reqwest::Response {
        self.send_with_id(EnvelopeId::random(), recipients, payload)
            .await
    }

    /// Sends with a chosen envelope id.
    pub async fn send_with_id(
        &self,
        id: EnvelopeId,
        recipients: &[DeviceId],
        payload: &[u8],
    ) -> reqwest::Response {
        let request = SendRequest {
            id,
            recipients: recipients.to_vec(),
            payload: payload.to_vec().into(),
            commit: None,
        };
        self.post("/v1/messages", &request).await
    }

    /// Publishes version `version` of this account's device list, naming
    /// `devices`, signed by `identity` (as a client holding the account's
    /// identity key does); returns the response.
    pub async fn publish_device_list(
        &self,
        identity: &SigningKey,
        version: u64,
        devices: &[DeviceId],
    ) -> reqwest::Response {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let list = redoubt_proto::DeviceList {
            account: self.account_id,
            phone: self.phone.clone(),
            identity_key: b64.encode(identity.verifying_key().as_bytes()),
            version,
            previous: String::new(),
            devices: devices
                .iter()
                .map(|d| redoubt_proto::ListedDevice {
                    device: *d,
                    signature_key: b64.encode([7u8; 32]),
                })
                .collect(),
            issued_at: 1_800_000_000 + version as i64,
        };
        let body = serde_json::to_string(&list).expect("a list serialises");
        let signature = identity.sign(&redoubt_proto::SignedDocument::signing_input(
            redoubt_proto::identity::DEVICE_LIST_CONTEXT,
            &body,
        ));
        self.request(reqwest::Method::PUT, "/v1/device-list")
            .json(&serde_json::json!({
                "list": { "body": body, "signature": b64.encode(signature.to_bytes()) }
            }))
            .send()
            .await
            .expect("device list request")
    }

    /// Sends and asserts it was queued; returns the envelope id.
    pub async fn send_ok(&self, recipients: &[DeviceId], payload: &[u8]) -> EnvelopeId {
        let response = self.send(recipients, payload).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: SendResponse = response.json().await.expect("send response");
        assert!(!body.duplicate);
        assert!(body.full.is_empty(), "queued for every recipient");
        body.id
    }

    /// Fetches one page of the mailbox.
    pub async fn fetch(&self) -> FetchResponse {
        let response = self.get("/v1/messages").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("fetch response")
    }

    /// Acknowledges envelopes; returns how many the server removed.
    pub async fn ack(&self, ids: &[EnvelopeId]) -> u64 {
        let response = self
            .post("/v1/messages/ack", &AckRequest { ids: ids.to_vec() })
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: AckResponse = response.json().await.expect("ack response");
        body.removed
    }

    /// Opens the delivery WebSocket.
    pub async fn ws(&self) -> WsClient {
        WsClient::connect(&self.base, &self.token).await
    }

    /// Opens the delivery WebSocket with the binary subprotocol.
    pub async fn ws_binary(&self) -> BinaryWs {
        BinaryWs::connect(&self.base, &self.token).await
    }

    /// [`TestDevice::ws_binary`] on version 2 of the subprotocol, which
    /// names the recipients a send was not queued for.
    pub async fn ws_binary_v2(&self) -> BinaryWs {
        BinaryWs::connect_with(&self.base, &self.token, binary::PROTOCOL_V2).await
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut v);
    v
}

fn random_ref() -> KeyPackageRef {
    KeyPackageRef::new(random_bytes(32)).expect("32 bytes is a valid reference")
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A delivery WebSocket, as a client sees it.
pub struct WsClient {
    stream: WsStream,
    /// Every text frame received, verbatim (for leak scans).
    pub raw: Vec<String>,
}

/// What [`WsClient::next`] saw.
#[derive(Debug)]
pub enum WsEvent {
    /// A frame.
    Frame(ServerFrame),
    /// The server closed the socket with this code and reason.
    Closed(Option<(u16, String)>),
}

/// The upgrade request for the delivery WebSocket, with the bearer token.
fn ws_request(
    base: &str,
    token: &AuthToken,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let mut request = url.into_client_request().expect("ws request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token.expose())
            .parse()
            .expect("header"),
    );
    request
}

impl WsClient {
    /// Opens the delivery WebSocket of the relay at `base` with `token`.
    pub async fn connect(base: &str, token: &AuthToken) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(ws_request(base, token))
            .await
            .expect("websocket connects");
        WsClient {
            stream,
            raw: Vec::new(),
        }
    }

    /// The same, connecting from the local address `local` (tests place
    /// clients in countries by loopback address).
    pub async fn connect_from(base: &str, token: &AuthToken, local: std::net::IpAddr) -> Self {
        let request = ws_request(base, token);
        let server: std::net::SocketAddr = base
            .trim_start_matches("http://")
            .parse()
            .expect("base is http://IP:PORT");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::new(local, 0))
            .expect("bind local address");
        let tcp = socket.connect(server).await.expect("tcp connects");
        let (stream, _) =
            tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                .await
                .expect("websocket connects");
        WsClient {
            stream,
            raw: Vec::new(),
        }
    }

    /// The next frame or close, within [`PATIENCE`].
    pub async fn next(&mut self) -> WsEvent {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("websocket event within the patience window");
            match message {
                Some(Ok(Message::Text(text))) => {
                    self.raw.push(text.to_string());
                    let frame = serde_json::from_str(text.as_str()).expect("server frames parse");
                    return WsEvent::Frame(frame);
                }
                Some(Ok(Message::Close(frame))) => {
                    return WsEvent::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return WsEvent::Closed(None),
            }
        }
    }

    /// The next frame, failing the test on a close.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.next().await {
            WsEvent::Frame(f) => f,
            WsEvent::Closed(c) => panic!("websocket closed unexpectedly: {c:?}"),
        }
    }

    /// The next envelope, skipping `Drained` markers.
    pub async fn envelope(&mut self) -> Envelope {
        loop {
            if let ServerFrame::Envelope(e) = self.frame().await {
                return e;
            }
        }
    }

    /// Envelopes up to the next `Drained` marker.
    pub async fn until_drained(&mut self) -> Vec<Envelope> {
        let mut out = Vec::new();
        loop {
            match self.frame().await {
                ServerFrame::Envelope(e) => out.push(e),
                ServerFrame::Drained => return out,
            }
        }
    }

    /// Acknowledges envelopes over the socket.
    pub async fn ack(&mut self, ids: &[EnvelopeId]) {
        let text = serde_json::to_string(&ClientFrame::Ack { ids: ids.to_vec() }).expect("frame");
        self.stream
            .send(Message::text(text))
            .await
            .expect("send ack");
    }

    /// Sends raw text (for protocol-violation tests).
    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Sends raw bytes as a binary frame (for protocol-violation tests).
    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::binary(bytes))
            .await
            .expect("send");
    }

    /// Sends one frame as given, even one that breaks RFC 6455 (a text
    /// frame that is not UTF-8, reserved bits set).
    pub async fn send_frame(
        &mut self,
        frame: tokio_tungstenite::tungstenite::protocol::frame::Frame,
    ) {
        self.stream.send(Message::Frame(frame)).await.expect("send");
    }

    /// Waits for the server to close the socket, skipping frames.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            if let WsEvent::Closed(c) = self.next().await {
                return c;
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// A delivery WebSocket in the binary subprotocol (`redoubt.bin.1`), which
/// can also send.
pub struct BinaryWs {
    stream: WsStream,
}

/// What [`BinaryWs::next`] saw.
#[derive(Debug)]
pub enum BinaryEvent {
    /// A frame.
    Frame(ServerMessage),
    /// The server closed the socket with this code and reason.
    Closed(Option<(u16, String)>),
}

impl BinaryWs {
    /// Opens the socket, offering the binary subprotocol, and checks that
    /// the relay chose it.
    pub async fn connect(base: &str, token: &AuthToken) -> Self {
        Self::connect_with(base, token, binary::PROTOCOL).await
    }

    /// [`BinaryWs::connect`] offering only `protocol` (a version of the
    /// binary subprotocol).
    pub async fn connect_with(base: &str, token: &AuthToken, protocol: &str) -> Self {
        let mut request = ws_request(base, token);
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().expect("header"));
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(protocol.as_bytes()),
            "the relay chose the binary subprotocol"
        );
        Self { stream }
    }

    /// Sends an envelope on the socket.
    pub async fn send(&mut self, send: binary::Send) {
        self.send_raw(ClientMessage::Send(send).encode()).await;
    }

    /// Acknowledges envelopes on the socket.
    pub async fn ack(&mut self, ids: &[EnvelopeId]) {
        self.send_raw(ClientMessage::Ack(ids.to_vec()).encode())
            .await;
    }

    /// Sends raw bytes as one binary frame.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::binary(bytes))
            .await
            .expect("send frame");
    }

    /// Sends raw text as one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .expect("send frame");
    }

    /// The next frame or close, within [`PATIENCE`].
    pub async fn next(&mut self) -> BinaryEvent {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("websocket event within the patience window");
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    return BinaryEvent::Frame(
                        ServerMessage::decode(&bytes).expect("server frames decode"),
                    )
                }
                Some(Ok(Message::Text(text))) => panic!("a text frame on a binary socket: {text}"),
                Some(Ok(Message::Close(frame))) => {
                    return BinaryEvent::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return BinaryEvent::Closed(None),
            }
        }
    }

    /// The next frame, failing the test on a close.
    pub async fn frame(&mut self) -> ServerMessage {
        match self.next().await {
            BinaryEvent::Frame(f) => f,
            BinaryEvent::Closed(c) => panic!("websocket closed unexpectedly: {c:?}"),
        }
    }

    /// Envelopes up to the next `Drained` marker, skipping answers to sends.
    pub async fn until_drained(&mut self) -> Vec<Envelope> {
        let mut out = Vec::new();
        loop {
            match self.frame().await {
                ServerMessage::Envelopes(e) => out.extend(e),
                ServerMessage::Drained => return out,
                ServerMessage::Accepted { .. } | ServerMessage::Refused { .. } => {}
            }
        }
    }

    /// Waits for the server to close the socket, skipping frames.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            if let BinaryEvent::Closed(c) = self.next().await {
                return c;
            }
        }
    }
}
