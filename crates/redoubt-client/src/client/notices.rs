//! Notices from the service itself, and the market-exit banner.
//!
//! The relay delivers them, so the relay could forge them: a fake exit
//! with a phishing link, or a fake cancellation that hides a real exit.
//! A notice is trusted only when it verifies under the service key this
//! profile pinned and names this account; anything else is filed as an
//! unverified message from the relay, with its links defanged and never
//! as a banner. Among trusted notices about one market, the latest issued
//! wins, so an old announcement replayed after a cancellation changes
//! nothing.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use redoubt_proto::{MarketNotice, NoticeKind, ServiceNotice, SignedNotice};
use serde::{Deserialize, Serialize};

use super::{now_ms, system_message, Client, NOTICES_CHAT};
use crate::error::{ClientError, Result};
use crate::model::{ChatKind, ChatRecord, ChatState};
use crate::store::Changes;

/// The banner document: per market, the latest trusted notice.
const BANNERS: &str = "market_banners";
/// Where profiles from before signed notices kept their one banner.
const LEGACY_BANNER: &str = "market_notice";

/// The latest trusted word about one market.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Banner {
    /// When that notice was issued (seconds since the epoch).
    issued_at: i64,
    /// The exit, or `None` once it was called off.
    exit: Option<MarketNotice>,
}

/// Checks a notice from the service against the service key a profile
/// pinned (standard base64), and decodes it: why it is not trusted
/// otherwise. Pure, so that it is fuzzed as it runs (`fuzz/`).
pub fn verify_notice(
    signed: &SignedNotice,
    key: Option<&str>,
) -> std::result::Result<ServiceNotice, &'static str> {
    let key = key.ok_or("this profile has no service key pinned")?;
    let key: [u8; 32] = STANDARD
        .decode(key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("the pinned service key is malformed")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| "the pinned service key is malformed")?;
    let signature = STANDARD
        .decode(&signed.signature)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or("its signature is malformed")?;
    key.verify_strict(&SignedNotice::signing_input(&signed.notice), &signature)
        .map_err(|_| "it is not signed by the service key this profile pinned")?;
    serde_json::from_str(&signed.notice).map_err(|_| "it does not decode")
}

/// Breaks URLs so terminals and browsers do not offer them as links: an
/// unverified notice must not be one click from a phishing page.
fn defang(text: &str) -> String {
    text.replace("://", "[:]//")
}

impl Client {
    /// Handles an envelope from the service itself.
    pub(super) async fn service_notice(
        &mut self,
        payload: &[u8],
        changes: &mut Changes,
    ) -> Result<()> {
        self.ensure_notices_chat(changes).await?;
        let signed = serde_json::from_slice::<SignedNotice>(payload).ok();
        let verdict = match &signed {
            Some(signed) => verify_notice(signed, self.pinned_service_key()).and_then(|n| {
                if n.account == self.identity.account {
                    Ok(n)
                } else {
                    Err("it was issued to another account")
                }
            }),
            None => Err("it is not signed"),
        };
        let notice = match verdict {
            Ok(notice) => notice,
            Err(why) => {
                // Show what it says, so nothing is silently hidden, but
                // never as the service's word.
                let claimed = signed
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s.notice).ok())
                    .or_else(|| serde_json::from_slice::<serde_json::Value>(payload).ok())
                    .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned());
                changes.messages.push(system_message(
                    NOTICES_CHAT,
                    format!(
                        "Unverified message from the relay ({why}; it may be forged, \
                         and nothing in it comes from the service): {}",
                        defang(&claimed)
                    ),
                ));
                return Ok(());
            }
        };
        let mut banners = self.banners(changes).await?;
        let text = match &notice.kind {
            NoticeKind::MarketExit { market, .. } => {
                if self.supersedes(&banners, &market.jurisdiction, notice.issued_at) {
                    banners.insert(
                        market.jurisdiction.clone(),
                        Banner {
                            issued_at: notice.issued_at,
                            exit: Some(market.clone()),
                        },
                    );
                    format!("IMPORTANT: {}", notice.text)
                } else {
                    format!("(An earlier notice, since superseded.) {}", notice.text)
                }
            }
            NoticeKind::MarketExitCancelled { jurisdiction } => {
                if self.supersedes(&banners, jurisdiction, notice.issued_at) {
                    banners.insert(
                        jurisdiction.clone(),
                        Banner {
                            issued_at: notice.issued_at,
                            exit: None,
                        },
                    );
                }
                notice.text.clone()
            }
            NoticeKind::DisclosureNotice { .. } => notice.text.clone(),
        };
        let doc = serde_json::to_vec(&banners).map_err(|_| ClientError::Corrupt("banners"))?;
        changes.documents.retain(|(name, _)| *name != BANNERS);
        changes.documents.push((BANNERS, doc));
        changes.messages.push(system_message(NOTICES_CHAT, text));
        Ok(())
    }

    fn supersedes(&self, banners: &BTreeMap<String, Banner>, market: &str, issued_at: i64) -> bool {
        banners.get(market).is_none_or(|b| issued_at >= b.issued_at)
    }

    /// The service key notices must verify under: the user's configured
    /// one, else the one pinned in the profile.
    fn pinned_service_key(&self) -> Option<&str> {
        self.config
            .service_key
            .as_deref()
            .or(self.identity.service_key.as_deref())
    }

    /// Pins the relay's service key on a profile made before keys were
    /// pinned at registration: trust on this first contact, as a new
    /// profile would have.
    pub(super) async fn pin_service_key_if_missing(&mut self) -> Result<()> {
        if self.identity.service_key.is_some() || self.config.service_key.is_some() {
            return Ok(());
        }
        self.identity.service_key = Some(self.api.service_key().await?.public_key);
        self.save_identity().await
    }

    async fn banners(&self, changes: &Changes) -> Result<BTreeMap<String, Banner>> {
        let pending = changes
            .documents
            .iter()
            .rev()
            .find(|(name, _)| *name == BANNERS)
            .map(|(_, doc)| doc.clone());
        let doc = match pending {
            Some(doc) => Some(doc),
            None => self.store.document(BANNERS).await?,
        };
        if let Some(doc) = doc {
            return serde_json::from_slice(&doc).map_err(|_| ClientError::Corrupt("banners"));
        }
        // A profile from before signed notices: its one banner stands until
        // a trusted notice about that market says otherwise.
        let legacy = self
            .store
            .document(LEGACY_BANNER)
            .await?
            .and_then(|doc| serde_json::from_slice::<MarketNotice>(&doc).ok());
        Ok(legacy
            .map(|m| {
                (
                    m.jurisdiction.clone(),
                    Banner {
                        issued_at: i64::MIN,
                        exit: Some(m),
                    },
                )
            })
            .into_iter()
            .collect())
    }

    /// The market exit the service announced for this account, if one
    /// stands: the service is leaving the user's market. Only notices that
    /// verified under the pinned service key count, and a cancellation
    /// clears it.
    pub async fn market_notice(&self) -> Result<Option<MarketNotice>> {
        Ok(self
            .banners(&Changes::default())
            .await?
            .into_values()
            .find_map(|b| b.exit))
    }

    pub(super) async fn ensure_notices_chat(&self, changes: &mut Changes) -> Result<()> {
        let exists = self
            .store
            .chats()
            .await?
            .iter()
            .any(|c| c.group_id == NOTICES_CHAT)
            || changes.chats.iter().any(|c| c.group_id == NOTICES_CHAT);
        if !exists {
            changes.chats.push(ChatRecord {
                group_id: NOTICES_CHAT.to_vec(),
                kind: ChatKind::Group,
                name: "Redoubt notices".into(),
                peer: None,
                state: ChatState::Active,
                created_at: now_ms(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defanged_links_are_not_links() {
        assert_eq!(
            defang("see https://evil.example/x now"),
            "see https[:]//evil.example/x now"
        );
    }
}
