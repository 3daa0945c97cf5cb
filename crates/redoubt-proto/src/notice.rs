//! Notices from the service itself: a market exit, its cancellation, a
//! disclosure notice once a gag ends.
//!
//! The relay queues them in mailboxes like any envelope, so a hostile or
//! compelled relay could forge one (a fake exit notice with a phishing
//! link, or a fake cancellation). Each notice is therefore signed by the
//! operator's service key, the key that also signs disclosure packages and
//! transparency reports, and names the account it was issued to and when.
//! A client pins that key when it registers (or takes it from its
//! configuration) and shows anything that does not verify under it as an
//! unverified message from the relay, never as an important notice.

use serde::{Deserialize, Serialize};

use crate::error::MarketNotice;
use crate::ids::AccountId;

/// The domain-separation prefix of a notice signature.
pub const NOTICE_CONTEXT: &[u8] = b"redoubt/v1/service-notice\0";

/// A notice as it travels: the notice's JSON text exactly as signed, and
/// the signature. Signing the text (not a re-encoding of it) means the
/// client verifies the very bytes it then parses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedNotice {
    /// A [`ServiceNotice`] as JSON text.
    pub notice: String,
    /// Ed25519 over [`NOTICE_CONTEXT`] followed by `notice`, standard base64.
    pub signature: String,
}

impl SignedNotice {
    /// The bytes the signature covers.
    pub fn signing_input(notice: &str) -> Vec<u8> {
        let mut input = NOTICE_CONTEXT.to_vec();
        input.extend_from_slice(notice.as_bytes());
        input
    }
}

/// What the service tells one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNotice {
    /// The account it was issued to: a notice replayed into another
    /// account's mailbox does not verify as theirs.
    pub account: AccountId,
    /// When it was issued, in seconds since the Unix epoch. A later notice
    /// about the same market supersedes an earlier one, so an old
    /// announcement replayed after its cancellation changes nothing.
    pub issued_at: i64,
    /// The text for people.
    pub text: String,
    /// What it is about.
    #[serde(flatten)]
    pub kind: NoticeKind,
}

/// The kinds of notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NoticeKind {
    /// The service is leaving the account's market (`phase` is
    /// `announced` or `reminder`).
    MarketExit {
        /// Which notice of the exit this is.
        phase: String,
        /// The exit.
        market: MarketNotice,
    },
    /// An announced exit was called off: the service stays.
    MarketExitCancelled {
        /// The market, an ISO 3166-1 alpha-2 code.
        jurisdiction: String,
    },
    /// Data about the account was disclosed under a court order whose gag
    /// period has ended.
    DisclosureNotice {
        /// The order's reference.
        order_id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_round_trips_with_its_kind_flattened() {
        let notice = ServiceNotice {
            account: AccountId::random(),
            issued_at: 1_700_000_000,
            text: "Redoubt stays in FR.".into(),
            kind: NoticeKind::MarketExitCancelled {
                jurisdiction: "FR".into(),
            },
        };
        let json = serde_json::to_string(&notice).unwrap();
        assert!(json.contains(r#""type":"market_exit_cancelled""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ServiceNotice>(&json).unwrap(),
            notice
        );
        assert!(SignedNotice::signing_input(&json).starts_with(NOTICE_CONTEXT));
    }
}
