//! The key-transparency checks a client runs: a contact's keys against the
//! directory before they are pinned or changed, and this account's own
//! number's history, so a key put behind it by anyone else is shown here
//! without anyone comparing safety numbers. Each newer epoch is linked to
//! the last one seen by a consistency proof of the log of epoch roots, and
//! every application message
//! carries the newest epoch its sender saw, which receivers compare with
//! their own: a relay showing two members two directories is caught by
//! both. The verification itself is `crate::kt` (no I/O).

use std::collections::BTreeSet;

use redoubt_proto::kt::SignedEpoch;
use redoubt_proto::{EnvelopeId, PhoneNumber};
use serde::{Deserialize, Serialize};

use super::{now_ms, Client};
use crate::error::{ClientError, Result};
use crate::identity::TrustedList;
use crate::kt::{compare, Agreement, DirectoryPins, KtFailure, PeerEpoch};
use crate::model::AppMessage;
use crate::store::Changes;

/// A directory epoch another member's message carried, to compare once
/// the mailbox is processed.
#[derive(Debug, Clone)]
pub(super) struct Sighting {
    /// The chat it came in.
    pub group_id: Vec<u8>,
    /// The member's number.
    pub member: String,
    /// The epoch the member's device saw.
    pub epoch: SignedEpoch,
}

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
    /// Members' epochs found to conflict with this device's view, so each
    /// is reported once, not at every message.
    #[serde(default)]
    reported: BTreeSet<(u64, String)>,
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
            pins: DirectoryPins::new(keys.directory_key, keys.vrf_public_key),
            monitored_at_ms: None,
            reported: BTreeSet::new(),
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
            let checked = match self.link_forward(&mut doc.pins, &answer.epoch).await? {
                Ok(()) => doc.pins.verify_lookup(phone, &answer),
                Err(failure) => Err(failure),
            };
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
            let checked = match self.link_forward(&mut doc.pins, &answer.epoch).await? {
                Ok(()) => doc.pins.verify_history(&phone, &answer),
                Err(failure) => Err(failure),
            };
            let history = match checked {
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

    /// Moves this device's newest epoch to `later` when it is newer, with
    /// the relay's proof that its log of epoch roots extends the one the
    /// newest seen signs: a relay that rewrote or forked its directory
    /// since cannot produce one.
    async fn link_forward(
        &self,
        pins: &mut DirectoryPins,
        later: &SignedEpoch,
    ) -> Result<std::result::Result<(), KtFailure>> {
        if pins.newest.as_ref().is_some_and(|(n, _)| later.epoch <= *n) {
            return Ok(Ok(()));
        }
        let from = pins
            .newest_signed
            .as_ref()
            .filter(|e| !e.log_root.is_empty())
            .map_or(later.epoch, |e| e.epoch);
        match self.api.kt_consistency(from, later.epoch).await? {
            Some(proof) => Ok(pins.link(later, &proof)),
            None => Ok(Err(KtFailure::NotLinked {
                from,
                to: later.epoch,
                why: "the relay does not show this device that epoch".into(),
            })),
        }
    }

    /// The newest directory epoch this device saw, which its messages
    /// carry for the other members to compare.
    pub(super) async fn directory_epoch(&mut self) -> Result<Option<SignedEpoch>> {
        Ok(self.directory_doc().await?.pins.newest_signed)
    }

    /// Whether `theirs`, an epoch another member's device was shown, is in
    /// the history this device was shown: the relay must prove that one's
    /// log of epoch roots extends the other's. `Some(why)` when it cannot.
    async fn in_our_history(
        &self,
        pins: &mut DirectoryPins,
        theirs: &SignedEpoch,
    ) -> Result<Option<String>> {
        if pins.newest_signed.is_none() {
            let latest = self.api.kt_latest().await?;
            if let Err(failure) = self.link_forward(pins, &latest).await? {
                return Ok(Some(failure.to_string()));
            }
        }
        let Some(ours) = pins.newest_signed.clone() else {
            return Ok(Some("this device was shown no directory".into()));
        };
        if theirs.epoch > ours.epoch {
            // Their newer epoch must continue this device's history; if it
            // does, it is this device's newest now.
            return Ok(self
                .link_forward(pins, theirs)
                .await?
                .err()
                .map(|failure| failure.to_string()));
        }
        Ok(
            match self.api.kt_consistency(theirs.epoch, ours.epoch).await? {
                None => Some(format!(
                    "the relay does not show this device epoch {}",
                    ours.epoch
                )),
                Some(proof) => pins
                    .check_extends(Some(theirs), &ours, &proof)
                    .err()
                    .map(|failure| failure.to_string()),
            },
        )
    }

    /// Compares the directory epochs other members' messages carried with
    /// this device's view. A member shown another root for an epoch, or an
    /// epoch this device's directory does not link to, was shown another
    /// directory: the relay is showing people different keys. It is said
    /// in the chat, in the notices and to the user at once, and told to
    /// the chat's members with both signed epochs.
    pub(super) async fn compare_sightings(&mut self) -> Result<()> {
        let sightings = std::mem::take(&mut self.sightings);
        if sightings.is_empty() {
            return Ok(());
        }
        let mut doc = self.directory_doc().await?;
        let mut compared = BTreeSet::new();
        for sighting in sightings {
            let theirs = &sighting.epoch;
            let key = (theirs.epoch, theirs.root.clone());
            // Many messages carry the same epoch: one comparison each.
            if doc.reported.contains(&key) || !compared.insert(key.clone()) {
                continue;
            }
            let problem = match doc.pins.compare_peer(theirs) {
                PeerEpoch::Same => None,
                PeerEpoch::Differs => Some(format!(
                    "the relay signed another directory for epoch {} for this device",
                    theirs.epoch
                )),
                PeerEpoch::Unsigned => {
                    Some("its epoch is not signed by the directory key this device pinned".into())
                }
                PeerEpoch::Unknown => self.in_our_history(&mut doc.pins, theirs).await?,
            };
            let Some(problem) = problem else {
                continue;
            };
            doc.reported.insert(key);
            self.save_directory(&doc).await?;
            let member = &sighting.member;
            let text = format!(
                "⚠ KEY DIRECTORY: {member}'s device was shown another key directory than this \
                 device ({problem}). The relay is showing people different keys: neither of \
                 you can rely on what it says about anyone's keys."
            );
            self.note(&sighting.group_id, text.clone()).await?;
            self.alert(text).await?;
            // This device's own epoch of the same number, when the relay
            // signed one: two signed roots for one epoch are proof.
            let ours = match self.api.kt_epoch(theirs.epoch).await {
                Ok(Some(e)) if e != *theirs && doc.pins.check_signature(&e).is_ok() => Some(e),
                _ => None,
            }
            .or_else(|| doc.pins.newest_signed.clone());
            if let Some(ours) = ours {
                self.tell_members(
                    &sighting.group_id,
                    AppMessage::DirectoryConflict {
                        member: member.clone(),
                        theirs: theirs.clone(),
                        ours,
                    },
                )
                .await?;
            }
        }
        // Linking to a member's newer epoch moved this device's newest.
        self.save_directory(&doc).await
    }

    /// Sends `body` to a chat's other devices, best effort: a conflict
    /// report that the relay drops is found again by each member from the
    /// epochs in the messages themselves.
    async fn tell_members(&mut self, group_id: &[u8], body: AppMessage) -> Result<()> {
        let Some(epoch) = self.groups.get(group_id).map(|g| g.epoch().as_u64()) else {
            return Ok(());
        };
        let bytes = self.app_bytes(group_id, epoch, body).await?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let Some(group) = self.groups.get_mut(group_id) else {
            return Ok(());
        };
        let out = group
            .create_message(provider, signer, &bytes)
            .map_err(ClientError::mls)?;
        let recipients = match self.groups.get(group_id) {
            Some(group) => self.recipients(group)?,
            None => return Ok(()),
        };
        self.persist(Changes::default()).await?;
        use openmls::prelude::tls_codec::Serialize as _;
        let payload = out.tls_serialize_detached().map_err(ClientError::mls)?;
        match self
            .send_envelope(EnvelopeId::time_ordered(), recipients, payload)
            .await
        {
            Ok(()) | Err(ClientError::Server { .. }) | Err(ClientError::Unreachable { .. }) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// What a member's device reports of a conflict, as shown here: proof
    /// when the two epochs are one epoch with two signed roots.
    pub(super) async fn conflict_report(
        &mut self,
        reporter: &str,
        member: &str,
        theirs: &SignedEpoch,
        ours: &SignedEpoch,
    ) -> Result<String> {
        let doc = self.directory_doc().await?;
        let signed =
            doc.pins.check_signature(theirs).is_ok() && doc.pins.check_signature(ours).is_ok();
        Ok(
            if signed && theirs.epoch == ours.epoch && theirs.root != ours.root {
                format!(
                    "⚠ KEY DIRECTORY: {reporter}'s device and {member}'s device were shown two \
                 different key directories, both signed by the relay for epoch {}. This is \
                 proof that the relay shows people different keys.",
                    theirs.epoch
                )
            } else {
                format!(
 "⚠ KEY DIRECTORY: {reporter}'s device reports that the relay showed it another \
                 key directory than {member}'s device (epochs {} and {}).",
                ours.epoch, theirs.epoch
            )
            },
        )
    }
}
