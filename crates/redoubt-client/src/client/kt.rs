//! The key-transparency checks a client runs: a contact's keys against the
//! directory before they are pinned or changed, and this account's own
//! number's history, so a key put behind it by anyone else is shown here
//! without anyone comparing safety numbers. The verification itself is
//! `crate::kt` (no I/O).

use redoubt_proto::PhoneNumber;
use serde::{Deserialize, Serialize};

use super::{now_ms, Client};
use crate::error::{ClientError, Result};
use crate::identity::TrustedList;
use crate::kt::{compare, Agreement, DirectoryPins};
use crate::store::Changes;

const DIRECTORY: &str = "directory";

/// How often, and how long, to wait for the directory to publish a list
/// the relay already serves (it publishes every few seconds).
const WAITS: usize = 20;
const WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The directory document: the pins and when this account was last
/// watched.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DirectoryDoc {
    pins: DirectoryPins,
    #[serde(default)]
    monitored_at_ms: Option<i64>,
}

impl Client {
    async fn directory_doc(&mut self) -> Result<DirectoryDoc> {
        if let Some(doc) = self.store.document(DIRECTORY).await? {
            return serde_json::from_slice(&doc).map_err(|_| ClientError::Corrupt("directory"));
        }
        // Pinned on first contact, as the service key is: registration
        // pins them; a profile made before the directory pins them now.
        let keys = self.api.kt_keys().await?;
        let doc = DirectoryDoc {
            pins: DirectoryPins {
                directory_key: keys.directory_key,
                vrf_public_key: keys.vrf_public_key,
                newest: None,
            },
            monitored_at_ms: None,
        };
        self.save_directory(&doc).await?;
        Ok(doc)
    }

    async fn save_directory(&self, doc: &DirectoryDoc) -> Result<()> {
        let bytes = serde_json::to_vec(doc).map_err(|_| ClientError::Corrupt("directory"))?;
        self.record(Changes {
            documents: vec![(DIRECTORY, bytes)],
            ..Default::default()
        })
        .await
    }

    /// Pins the directory's keys now (registration does, right after the
    /// service key).
    pub(super) async fn pin_directory(&mut self) -> Result<()> {
        self.directory_doc().await.map(|_| ())
    }

    /// Whether the directory agrees with the list the relay served for
    /// `phone`: `Err(why)` when it does not, after waiting a little for a
    /// list stored just now to be published.
    pub(super) async fn directory_agrees(
        &mut self,
        phone: &PhoneNumber,
        list: &TrustedList,
    ) -> Result<std::result::Result<(), String>> {
        let mut doc = self.directory_doc().await?;
        let mut why = String::new();
        for attempt in 0..WAITS {
            if attempt > 0 {
                tokio::time::sleep(WAIT).await;
            }
            let Some(answer) = self.api.kt_lookup(phone).await? else {
                why = "the number is not in the key-transparency directory".into();
                continue;
            };
            let checked = doc.pins.verify_lookup(phone, &answer);
            self.save_directory(&doc).await?;
            match checked {
                // A proof or epoch that fails is the relay's lie, not lag.
                Err(failure) => return Ok(Err(failure.to_string())),
                Ok(value) => match compare(&value, list) {
                    Agreement::Same | Agreement::Behind => return Ok(Ok(())),
                    Agreement::Differs(text) => why = text,
                },
            }
        }
        Ok(Err(why))
    }

    /// Watches this account's own number in the directory: its newest
    /// entry must carry this account's identity key, and so must every
    /// entry since that key first appeared. Anything else (an SMS reset
    /// by someone else, a key the relay put there) is shown at once. At
    /// most once per `kt_monitor_interval`.
    pub(super) async fn monitor_own_keys(&mut self) -> Result<()> {
        let mut doc = self.directory_doc().await?;
        let now = now_ms();
        let interval =
            i64::try_from(self.config.kt_monitor_interval.as_millis()).unwrap_or(i64::MAX);
        if doc
            .monitored_at_ms
            .is_some_and(|at| now.saturating_sub(at) < interval)
        {
            return Ok(());
        }
        let phone = self.identity.phone.clone();
        let own_key = self.identity.identity_key()?.public();
        let account = self.identity.account;
        let mut problem = None;
        for attempt in 0..WAITS {
            if attempt > 0 {
                tokio::time::sleep(WAIT).await;
            }
            let Some(answer) = self.api.kt_history(&phone).await? else {
                problem = Some(format!(
                    "{phone} is not in the key-transparency directory, although this device \
                     published its keys"
                ));
                continue;
            };
            let history = match doc.pins.verify_history(&phone, &answer) {
                Ok(history) => history,
                Err(failure) => {
                    problem = Some(failure.to_string());
                    break;
                }
            };
            let ours = |v: &redoubt_proto::kt::DirectoryValue| {
                v.identity_key == own_key && v.account == account
            };
            let since = history
                .iter()
                .filter(|(_, v)| ours(v))
                .map(|(epoch, _)| *epoch)
                .min();
            let newest_ours = history.first().is_some_and(|(_, v)| ours(v));
            let foreign_since = history
                .iter()
                .find(|(epoch, v)| since.is_some_and(|s| *epoch > s) && !ours(v));
            problem = if let Some((epoch, _)) = foreign_since {
                Some(format!(
                    "the key-transparency directory listed {phone} with an identity key this \
                     device did not make (epoch {epoch})."
                ))
            } else if !newest_ours {
                Some(format!(
                    "the key-transparency directory lists {phone} with an identity key this \
                     device did not make (epoch {}).",
                    answer.epoch.epoch
                ))
            } else {
                None
            };
            if problem.is_none() || foreign_since.is_some() {
                break;
            }
        }
        doc.monitored_at_ms = Some(now);
        self.save_directory(&doc).await?;
        if let Some(text) = problem {
            self.alert(format!(
                "⚠ KEY DIRECTORY: {text} Someone registered your number again, or the relay \
                 put a key behind it: anyone who looks your number up would be given that \
                 key. If it was not you, your number has been taken over."
            ))
            .await?;
        }
        Ok(())
    }
}
