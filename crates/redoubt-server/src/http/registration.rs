//! Phone-number verification and device registration.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;
use ed25519_dalek::{Signature, VerifyingKey};
use rand::Rng;
use redoubt_proto::api::{
    RequestCodeRequest, RequestCodeResponse, VerifyCodeRequest, VerifyCodeResponse,
};
use redoubt_proto::{AccountId, AuthToken, DeviceId, ErrorBody, PhoneNumber, VerificationSession};
use sha2::{Digest as _, Sha256};

use super::extract::{token_hash, ApiJson, ClientAddr};
use crate::error::ApiError;
use crate::storage::{CodeIssue, Digest, IssueOutcome, NewDevice, Verification, VerifyOutcome};
use crate::AppState;

/// Device names are shown to their owner; keep them short and printable.
const MAX_DEVICE_NAME_CHARS: usize = 64;

/// A device name as given, trimmed: 1 to 64 printable characters, with no
/// invisible or text-direction characters.
///
/// Why: names are how people tell their devices apart in the device list
/// and in warnings. A name of one zero-width space shows as blank, and a
/// right-to-left override makes "enohp" read as something else; an
/// attacker who got a device onto an account used such a name to pass
/// unseen (issue 16, item 8).
pub(crate) fn device_name(raw: &str) -> Result<&str, ApiError> {
    let name = raw.trim();
    let chars: Vec<char> = name.chars().collect();
    // Joiners (ZWNJ, ZWJ) shape Persian and Indic script and build emoji
    // such as 👩‍💻, so they may stand between two visible characters.
    let joins = |i: usize| {
        let visible = |c: Option<&char>| c.is_some_and(|c| !c.is_whitespace() && !is_invisible(*c));
        matches!(chars[i], '\u{200C}' | '\u{200D}')
            && i > 0
            && visible(chars.get(i - 1))
            && visible(chars.get(i + 1))
    };
    if name.is_empty()
        || chars.len() > MAX_DEVICE_NAME_CHARS
        || (0..chars.len()).any(|i| chars[i].is_control() || (is_invisible(chars[i]) && !joins(i)))
    {
        return Err(ApiError::InvalidRequest(format!(
            "device_name must be 1 to {MAX_DEVICE_NAME_CHARS} printable characters, \
             with no invisible or text-direction characters"
        )));
    }
    Ok(name)
}

/// Characters that draw nothing or change the direction of the text around
/// them: Unicode's format characters (general category Cf: zero-width
/// spaces and joiners, bidirectional marks, embeddings, overrides and
/// isolates, the byte-order mark, tags) and the blank letters and fillers
/// that render as nothing. Variation selectors stay allowed: emoji need
/// them.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Checks that `signature` over `message` was made by the Ed25519 key
/// `key`: a device proving it holds the key it registers. Returns the key.
pub(crate) fn verify_possession(
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<[u8; 32], ApiError> {
    let key_bytes: [u8; 32] = key.try_into().map_err(|_| ApiError::InvalidSignatureKey)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| ApiError::InvalidSignatureKey)?;
    let signature = Signature::from_slice(signature).map_err(|_| ApiError::InvalidProof)?;
    key.verify_strict(message, &signature)
        .map_err(|_| ApiError::InvalidProof)?;
    Ok(key_bytes)
}

fn code_hash(phone_key: &Digest, code: &str) -> Digest {
    let mut h = Sha256::new();
    h.update(b"redoubt/code/v1\0");
    h.update(phone_key);
    h.update(code.as_bytes());
    h.finalize().into()
}

/// Refuses registration from a market being left: new accounts from the
/// announcement on, everyone from the effective date. Checked before a code
/// is issued or consumed, so a refused request leaves nothing behind.
async fn check_market(state: &AppState, phone: &PhoneNumber, ip: IpAddr) -> Result<(), ApiError> {
    let markets = state.markets().place(phone.region().as_deref(), ip);
    if markets.is_empty() {
        return Ok(());
    }
    let existing = state.store().account_by_phone(phone).await?.is_some();
    state
        .markets()
        .check_registration(&markets, existing, state.clock().now())
}

/// Request a verification code.
#[utoipa::path(
    post, path = "/v1/registration/code", tag = "registration",
    request_body = RequestCodeRequest,
    responses(
        (status = 202, description = "Code sent", body = RequestCodeResponse),
        (status = 400, description = "Invalid phone number", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 451, description = "The service has left, or is leaving, this market", body = ErrorBody),
        (status = 503, description = "The code could not be sent", body = ErrorBody),
    )
)]
pub async fn request_code(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    ApiJson(req): ApiJson<RequestCodeRequest>,
) -> Result<(StatusCode, ApiJson<RequestCodeResponse>), ApiError> {
    check_market(&state, &req.phone, addr.ip()).await?;
    if !req.phone.is_mobile() {
        return Err(ApiError::InvalidPhoneNumber(
            redoubt_proto::PhoneError::NotMobile,
        ));
    }
    let config = &state.config().registration;
    let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
    let key = state.phone_keyer().key(&req.phone);
    let now = state.clock().now();
    // The requester's session (issue 16, item 4): the code verifies only
    // with its secret, and guesses count against it alone.
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill(&mut secret);
    let session = VerificationSession::from_random_bytes(&secret);
    // Every limit at once, in the transaction that stores the code: a
    // refused request counts against none of them (one abuser hammering a
    // number does not spend everyone's SMS budget). The address is counted
    // per IPv6 /64; the per-number limit per number and asking address, so
    // that strangers asking for codes to a number cannot use up its owner's
    // requests (the block of 10,000 numbers, the number without its last
    // four digits, bounds what one number gets from many addresses) (issue
    // 16, item 4).
    let address = super::address_bucket(addr.ip());
    let e164 = req.phone.e164();
    let block = e164.as_bytes()[..e164.len().saturating_sub(4)].to_vec();
    let country = req.phone.region().unwrap_or_default().into_bytes();
    let limits = [
        (
            "code-number",
            [key.as_slice(), &address].concat(),
            config.per_number,
            1,
        ),
        ("code-address", address, config.per_ip, 1),
        ("sms-block", block, config.per_number_block, 1),
        ("sms-country", country, config.per_country, 1),
        ("sms-budget", Vec::new(), config.sms_budget, 1),
    ];
    let outcome = state
        .store()
        .issue_code(CodeIssue {
            session_hash: session_hash(&session),
            phone_key: key,
            code_hash: code_hash(&key, &code),
            now,
            expires_at: now.plus(config.code_ttl),
            limits: super::rate_keys(&state, &limits),
        })
        .await?;
    if let IssueOutcome::RateLimited { retry_after } = outcome {
        return Err(ApiError::RateLimited {
            retry_after_secs: retry_after.as_secs().max(1),
        });
    }
    if let Err(e) = state.code_sender().send(&req.phone, &code).await {
        tracing::error!(error = %e, "verification code could not be sent");
        return Err(ApiError::Unavailable(
            "the verification code could not be sent; try again later",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(RequestCodeResponse {
            expires_in_seconds: config.code_ttl.as_secs(),
            session,
        }),
    ))
}

/// Verify a code and register this device.
#[utoipa::path(
    post, path = "/v1/registration/verify", tag = "registration",
    request_body = VerifyCodeRequest,
    responses(
        (status = 201, description = "Device registered", body = VerifyCodeResponse),
        (status = 400, description = "No code pending for this session and number, bad key or proof", body = ErrorBody),
        (status = 401, description = "Wrong code", body = ErrorBody),
        (status = 410, description = "Code expired", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
        (status = 451, description = "The service has left, or is leaving, this market", body = ErrorBody),
    )
)]
pub async fn verify_code(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    ApiJson(req): ApiJson<VerifyCodeRequest>,
) -> Result<(StatusCode, ApiJson<VerifyCodeResponse>), ApiError> {
    check_market(&state, &req.phone, addr.ip()).await?;
    if req.code.len() != 6 || !req.code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidRequest("code must be 6 digits".into()));
    }
    let name = device_name(&req.device_name)?;
    let challenge = VerifyCodeRequest::registration_challenge(&req.phone, &req.code);
    let key_bytes = verify_possession(
        req.signature_key.as_slice(),
        &challenge,
        req.proof.as_slice(),
    )?;

    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill(&mut secret);
    let token = AuthToken::from_random_bytes(&secret);
    let device_id = DeviceId::random();
    let pkey = state.phone_keyer().key(&req.phone);
    let outcome = state
        .store()
        .verify_code(Verification {
            session_hash: session_hash(&req.session),
            phone: req.phone.clone(),
            phone_key: pkey,
            code_hash: code_hash(&pkey, &req.code),
            now: state.clock().now(),
            max_attempts: state.config().registration.max_attempts,
            new_account_id: AccountId::random(),
            device: NewDevice {
                id: device_id,
                name: name.to_owned(),
                signature_key: key_bytes.to_vec(),
                token_hash: token_hash(&token),
            },
        })
        .await?;
    match outcome {
        VerifyOutcome::Registered {
            account_id,
            new_account,
        } => {
            state.metrics().registrations.inc();
            tracing::info!(new_account, "device registered");
            Ok((
                StatusCode::CREATED,
                ApiJson(VerifyCodeResponse {
                    account_id,
                    device_id,
                    token,
                    new_account,
                }),
            ))
        }
        VerifyOutcome::NoCodePending => Err(ApiError::NoCodePending),
        VerifyOutcome::Incorrect => Err(ApiError::CodeIncorrect),
        VerifyOutcome::Expired => Err(ApiError::CodeExpired),
        VerifyOutcome::AttemptsExceeded => Err(ApiError::CodeAttemptsExceeded),
    }
}

/// The key a session's code is stored under: the secret's hash, so the
/// database alone cannot be used to verify.
fn session_hash(session: &VerificationSession) -> Digest {
    Sha256::digest(session.expose().as_bytes()).into()
}

#[cfg(test)]
mod name_tests {
    use super::device_name;

    #[test]
    fn names_may_be_any_script_and_emoji_but_not_invisible() {
        for ok in ["laptop", "Téléphone 📱\u{FE0F}", "هاتف", "電話", "👩‍💻 work"] {
            assert!(device_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "\u{200B}",
            "x\u{202E}",
            "\u{2067}x",
            "\u{00AD}",
            "x\u{200D}",
            "a\u{200D} b",
        ] {
            assert!(device_name(bad).is_err(), "{bad:?}");
        }
    }
}
