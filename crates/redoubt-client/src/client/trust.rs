//! What this device trusts about other accounts and its own: pinned
//! identity keys and device lists, and the checks every key, list and
//! member the relay serves goes through before it is used.
//!
//! Key memory is per phone number: the identity key and the account the
//! number had when first met, and the latest device list that verified
//! under that key. A list under another key, or the number at another
//! account, is an identity change: kept apart (`pending`), shown, and acted
//! on only once the user accepts it.

use std::collections::BTreeMap;

use openmls::prelude::Credential;
use redoubt_proto::{AccountId, DeviceId, PhoneNumber};
use serde::{Deserialize, Serialize};

use super::{system_message, AccountDevices, Client};
use crate::error::{ClientError, Result};
use crate::identity::{self, ListUpdate, TrustedList};
use crate::mls;
use crate::model::{ChatRecord, MemberIdentity};
use crate::store::Changes;

const CONTACTS: &str = "contacts";

/// What this device remembers of one number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinnedContact {
    /// The pinned identity: its account, key and latest verified list.
    pub list: TrustedList,
    /// Whether the user compared safety numbers and said so.
    #[serde(default)]
    pub verified: bool,
    /// An identity change seen and not yet accepted.
    #[serde(default)]
    pub pending: Option<TrustedList>,
}

/// Every pinned number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Contacts {
    by_phone: BTreeMap<String, PinnedContact>,
}

impl Contacts {
    fn by_account(&self, account: AccountId) -> Option<&PinnedContact> {
        self.by_phone.values().find(|c| c.list.account == account)
    }
}

fn device_changes(phone: &PhoneNumber, old: &TrustedList, new: &TrustedList) -> Vec<String> {
    let mut out = Vec::new();
    let added = new
        .devices
        .iter()
        .filter(|d| !old.devices.contains(d))
        .count();
    let removed = old
        .devices
        .iter()
        .filter(|d| !new.devices.contains(d))
        .count();
    if added > 0 {
        out.push(format!(
            "{phone} linked {added} new device{} (vouched for by their identity key).",
            if added == 1 { "" } else { "s" }
        ));
    }
    if removed > 0 {
        out.push(format!(
            "{phone} removed {removed} device{}.",
            if removed == 1 { "" } else { "s" }
        ));
    }
    out
}

impl Client {
    async fn contacts(&self) -> Result<Contacts> {
        match self.store.document(CONTACTS).await? {
            Some(doc) => serde_json::from_slice(&doc).map_err(|_| ClientError::Corrupt("contacts")),
            None => Ok(Contacts::default()),
        }
    }

    async fn save_contacts(&self, contacts: &Contacts) -> Result<()> {
        let doc = serde_json::to_vec(contacts).map_err(|_| ClientError::Corrupt("contacts"))?;
        self.record(Changes {
            documents: vec![(CONTACTS, doc)],
            ..Default::default()
        })
        .await
    }

    /// What this device pins for a number, if it met it.
    pub async fn pinned(&self, phone: &PhoneNumber) -> Result<Option<PinnedContact>> {
        Ok(self.contacts().await?.by_phone.remove(phone.e164()))
    }

    /// Tells the user something before anything is sent, in the chat too
    /// when there is one.
    async fn announce(&mut self, chat: Option<&[u8]>, text: String) -> Result<()> {
        if let Some(group_id) = chat {
            self.note(group_id, text.clone()).await?;
        }
        self.announcements.push(text);
        Ok(())
    }

    /// The devices a number's account has, as its identity key says:
    /// fetches the lists after the pinned one and moves the pin along a
    /// chain that verifies. A new identity is kept pending and the pinned
    /// devices stay in use; a list that does not verify is refused, said,
    /// and changes nothing. On first contact the latest list is pinned.
    pub(super) async fn trusted_devices(
        &mut self,
        phone: &PhoneNumber,
        chat: Option<&[u8]>,
    ) -> Result<AccountDevices> {
        let account = self.api.lookup(phone).await?.account_id;
        let since = self.pinned_since(phone, account).await?;
        let served = self.api.device_lists_since(account, since).await?;
        self.check_lists(phone, account, &served, chat).await
    }

    /// The version after which lists are new for a number at an account:
    /// the pinned one, or 0 when nothing (or another account) is pinned.
    async fn pinned_since(&self, phone: &PhoneNumber, account: AccountId) -> Result<u64> {
        Ok(self
            .contacts()
            .await?
            .by_phone
            .get(phone.e164())
            .filter(|p| p.list.account == account)
            .map_or(0, |p| p.list.version))
    }

    /// Checks the lists served for a number's account after its pinned
    /// version, moves the pin, and returns the devices to use.
    pub(super) async fn check_lists(
        &mut self,
        phone: &PhoneNumber,
        account: AccountId,
        served: &[redoubt_proto::SignedDocument],
        chat: Option<&[u8]>,
    ) -> Result<AccountDevices> {
        let mut contacts = self.contacts().await?;
        let pinned = contacts.by_phone.get(phone.e164()).cloned();
        let same_account = pinned.as_ref().is_some_and(|p| p.list.account == account);
        let checked = if same_account {
            identity::advance(pinned.as_ref().map(|p| &p.list), account, phone, served)
        } else {
            // A number met before now at another account: whatever that
            // account's lists say, it is another identity.
            identity::advance(None, account, phone, served).map(|u| match u {
                ListUpdate::Advanced(t) if pinned.is_some() => ListUpdate::IdentityChanged(t),
                other => other,
            })
        };
        // A new identity is used (pinned, or offered for acceptance) only
        // if the key-transparency directory lists it for this number: the
        // relay cannot show this device a key it does not show everyone,
        // the number's owner included.
        let new_identity = match (&checked, &pinned) {
            (Ok(ListUpdate::Advanced(new)), None) | (Ok(ListUpdate::IdentityChanged(new)), _) => {
                Some(new.clone())
            }
            _ => None,
        };
        if let Some(new) = new_identity {
            if let Err(why) = self.directory_agrees(phone, &new).await? {
                let text = format!(
                    "⚠ KEY DIRECTORY: the relay's keys for {phone} are not the ones the \
                     key-transparency directory lists ({why}). They are refused: nothing is \
                     sent with them."
                );
                self.announce(chat, text).await?;
                return match pinned {
                    Some(contact) => Ok(AccountDevices {
                        phone: phone.clone(),
                        account: contact.list.account,
                        identity_key: contact.list.identity_key.clone(),
                        devices: contact.list.devices,
                    }),
                    None => Err(ClientError::Untrusted(format!(
                        "{phone}: the relay's keys are not in the key-transparency directory ({why})"
                    ))),
                };
            }
        }
        let list = match (checked, pinned) {
            (Ok(ListUpdate::Advanced(new)), None) => {
                contacts.by_phone.insert(
                    phone.e164().to_owned(),
                    PinnedContact {
                        list: new.clone(),
                        verified: false,
                        pending: None,
                    },
                );
                self.save_contacts(&contacts).await?;
                new
            }
            (Ok(ListUpdate::Advanced(new)), Some(mut contact)) => {
                for text in device_changes(phone, &contact.list, &new) {
                    self.announce(chat, text).await?;
                }
                contact.list = new.clone();
                contacts.by_phone.insert(phone.e164().to_owned(), contact);
                self.save_contacts(&contacts).await?;
                new
            }
            (Ok(ListUpdate::IdentityChanged(new)), Some(mut contact)) => {
                let first_time = contact.pending.as_ref() != Some(&new);
                contact.pending = Some(new);
                let old = contact.list.clone();
                contacts.by_phone.insert(phone.e164().to_owned(), contact);
                if first_time {
                    self.save_contacts(&contacts).await?;
                    self.announce(
                        chat,
                        format!(
                            "⚠ SAFETY NUMBER CHANGED for {phone}: the number now has a new \
                             identity key (their account was reset, or the number moved to \
                             another account). Nothing more is sent to them until you accept \
                             it: compare with `redoubt verify {phone}`, then send with \
                             --accept-changes."
                        ),
                    )
                    .await?;
                }
                old
            }
            (Ok(ListUpdate::Unchanged), Some(contact)) => contact.list,
            (Ok(_), None) => {
                return Err(ClientError::Untrusted(format!(
                    "{phone} has no device list signed by an identity key (their app may \
                     predate identity keys)"
                )))
            }
            (Err(e), pinned) => {
                self.announce(
                    chat,
                    format!(
                        "⚠ The relay served a device list for {phone} that was refused: {e}. \
                         Their devices stay as this device last verified them."
                    ),
                )
                .await?;
                match pinned {
                    Some(contact) => contact.list,
                    None => return Err(ClientError::Untrusted(format!("{phone}: {e}"))),
                }
            }
        };
        Ok(AccountDevices {
            phone: phone.clone(),
            account: list.account,
            identity_key: list.identity_key.clone(),
            devices: list.devices,
        })
    }

    /// Checks the signed device lists of every other account in a group in
    /// one request: pins move, identity changes are kept pending (and so
    /// hold the next send), refused lists are said. Returns each member
    /// number's devices as their identity keys list them.
    pub(super) async fn check_members(&mut self, chat: &ChatRecord) -> Result<Vec<AccountDevices>> {
        let mut members: Vec<(PhoneNumber, AccountId)> = Vec::new();
        for m in self.members(chat)? {
            let phone = PhoneNumber::parse(&m.phone)?;
            if m.account != self.identity.account && !members.iter().any(|(p, _)| *p == phone) {
                members.push((phone, m.account));
            }
        }
        // One read of the pins for the whole group: in the common case
        // nothing is newer, and each member's pinned list is the answer.
        let contacts = self.contacts().await?;
        let pinned = |phone: &PhoneNumber, account: AccountId| {
            contacts
                .by_phone
                .get(phone.e164())
                .filter(|p| p.list.account == account)
        };
        let queries = members
            .iter()
            .map(|(phone, account)| redoubt_proto::api::DeviceListQuery {
                account_id: *account,
                since: pinned(phone, *account).map_or(0, |p| p.list.version),
            })
            .collect::<Vec<_>>();
        let mut served = if queries.is_empty() {
            Default::default()
        } else {
            self.api.query_device_lists(queries).await?.lists
        };
        let mut out = Vec::new();
        for (phone, account) in members {
            let lists = served.remove(&account).unwrap_or_default();
            match pinned(&phone, account) {
                Some(p) if lists.is_empty() => out.push(AccountDevices {
                    phone: phone.clone(),
                    account,
                    identity_key: p.list.identity_key.clone(),
                    devices: p.list.devices.clone(),
                }),
                _ => out.push(
                    self.check_lists(&phone, account, &lists, Some(&chat.group_id))
                        .await?,
                ),
            }
        }
        Ok(out)
    }

    /// This account's other devices, as its own identity key says: the
    /// pinned own list moved along lists that verify (devices linked from
    /// a sibling). A list under another key means someone reset the
    /// account by SMS; it is shown loudly and changes nothing here.
    pub(super) async fn own_trusted_devices(&mut self) -> Result<AccountDevices> {
        let pinned = self.identity.own_list.clone();
        let since = pinned.as_ref().map_or(0, |l| l.version);
        let served = self
            .api
            .device_lists_since(self.identity.account, since)
            .await?;
        let list = match identity::advance(
            pinned.as_ref(),
            self.identity.account,
            &self.identity.phone,
            &served,
        ) {
            Ok(ListUpdate::Advanced(new)) if pinned.is_some() => {
                self.set_own_list(new.clone()).await?;
                new
            }
            Ok(ListUpdate::IdentityChanged(other)) => {
                let text = format!(
                    "⚠ YOUR ACCOUNT WAS RESET: {} now has an identity key this device did not \
                     create (version {} of your device list). Someone registered your number \
                     again, by SMS. If it was not you, whoever controls your SMS or the relay \
                     has taken your number; your contacts are being told your safety number \
                     changed.",
                    self.identity.phone, other.version
                );
                self.alert(text).await?;
                pinned.ok_or(ClientError::ProfileTooOld)?
            }
            Err(e) => {
                self.alert(format!(
                    "⚠ The relay served your own account's device list and it was refused: {e}."
                ))
                .await?;
                pinned.ok_or(ClientError::ProfileTooOld)?
            }
            Ok(_) => pinned.ok_or(ClientError::ProfileTooOld)?,
        };
        Ok(AccountDevices {
            phone: self.identity.phone.clone(),
            account: self.identity.account,
            identity_key: list.identity_key.clone(),
            devices: list
                .devices
                .into_iter()
                .filter(|(d, _)| *d != self.identity.device)
                .collect(),
        })
    }

    /// A warning about this account itself, in the notices chat and
    /// announced.
    pub(super) async fn alert(&mut self, text: String) -> Result<()> {
        let mut changes = Changes::default();
        self.ensure_notices_chat(&mut changes).await?;
        let already = self
            .store
            .messages(super::NOTICES_CHAT, 20)
            .await?
            .iter()
            .any(|m| m.text == text);
        if !already {
            changes
                .messages
                .push(system_message(super::NOTICES_CHAT, text.clone()));
            self.record(changes).await?;
        }
        self.announcements.push(text);
        Ok(())
    }

    pub(super) async fn set_own_list(&mut self, list: TrustedList) -> Result<()> {
        self.identity.own_list = Some(list);
        self.save_identity().await
    }

    /// Signs and publishes this account's next device list with `devices`,
    /// after moving the pin to the latest published (a sibling may have
    /// published since).
    pub(super) async fn publish_own_devices(
        &mut self,
        change: impl Fn(&mut Vec<(DeviceId, Vec<u8>)>),
    ) -> Result<TrustedList> {
        for _ in 0..3 {
            self.own_trusted_devices().await?;
            let pinned = self.identity.own_list.clone();
            let mut devices = pinned
                .as_ref()
                .map(|l| l.devices.clone())
                .unwrap_or_default();
            let before = devices.clone();
            change(&mut devices);
            if devices == before {
                return pinned.ok_or(ClientError::ProfileTooOld);
            }
            let version = pinned.as_ref().map_or(1, |l| l.version + 1);
            let (doc, trusted) = self.identity.identity_key()?.sign_list(
                self.identity.account,
                &self.identity.phone,
                version,
                pinned.as_ref(),
                &devices,
                super::now_ms() / 1000,
            );
            match self.api.publish_device_list(doc).await {
                Ok(_) => {
                    self.set_own_list(trusted.clone()).await?;
                    return Ok(trusted);
                }
                Err(ClientError::Server {
                    code: redoubt_proto::ErrorCode::DeviceListConflict,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Invalid(
            "another device keeps changing the device list; try again".into(),
        ))
    }

    /// Checks a member's leaf met in a Welcome or a commit: its certificate
    /// verifies, names its key, and comes from the identity key this device
    /// pins for the account (its own included). An account never met is
    /// pinned now from its lists, and must agree.
    pub(super) async fn vouch(
        &mut self,
        credential: &Credential,
        signature_key: &[u8],
    ) -> std::result::Result<MemberIdentity, String> {
        let bytes = mls::credential_bytes(credential).map_err(|e| e.to_string())?;
        let certified =
            identity::check_leaf(&bytes, signature_key).map_err(|e| format!("a device's {e}"))?;
        let who = certified.phone.to_string();
        let expected = if certified.account == self.identity.account {
            self.identity
                .identity_key()
                .map_err(|e| e.to_string())?
                .public()
        } else {
            let known = self
                .contacts()
                .await
                .map_err(|e| e.to_string())?
                .by_account(certified.account)
                .map(|c| c.list.clone());
            match known {
                Some(list) if list.key_of(certified.device) == Some(signature_key) => {
                    list.identity_key
                }
                _ => {
                    // Not known yet (a new member, or a device linked since):
                    // the account's lists decide.
                    let devices = self
                        .trusted_devices(&certified.phone, None)
                        .await
                        .map_err(|e| e.to_string())?;
                    if devices.account != certified.account
                        || !devices
                            .devices
                            .iter()
                            .any(|(d, k)| *d == certified.device && k == signature_key)
                    {
                        return Err(format!(
                            "a device presented for {who} is not in the device list their \
                             identity key signed"
                        ));
                    }
                    devices.identity_key
                }
            }
        };
        if certified.identity_key != expected {
            return Err(format!(
                "a device presented for {who} is certified by an identity key that is not theirs"
            ));
        }
        Ok(MemberIdentity {
            account: certified.account,
            device: certified.device,
            phone: certified.phone,
        })
    }

    /// Numbers in a chat whose identity changed and was not accepted.
    pub async fn pending_changes(&self, chat: &ChatRecord) -> Result<Vec<String>> {
        let pending = self.pending_phones().await?;
        let mut out = Vec::new();
        let Ok(members) = self.members(chat) else {
            return Ok(out);
        };
        for m in members {
            if pending.contains(&m.phone) && !out.contains(&m.phone) {
                out.push(m.phone.clone());
            }
        }
        Ok(out)
    }

    /// Every number with an identity change not yet accepted, from one read
    /// of the pins.
    pub(super) async fn pending_phones(&self) -> Result<std::collections::BTreeSet<String>> {
        Ok(self
            .contacts()
            .await?
            .by_phone
            .into_iter()
            .filter(|(_, c)| c.pending.is_some())
            .map(|(phone, _)| phone)
            .collect())
    }

    /// Accepts the identity changes of these numbers: their new identity
    /// is pinned (unverified), and their chats move to its devices on the
    /// next send.
    pub async fn accept_changes(&mut self, phones: &[String]) -> Result<()> {
        let _held = self.hold().await?;
        let mut contacts = self.contacts().await?;
        for phone in phones {
            if let Some(contact) = contacts.by_phone.get_mut(phone) {
                if let Some(new) = contact.pending.take() {
                    contact.list = new;
                    contact.verified = false;
                }
            }
        }
        self.save_contacts(&contacts).await
    }

    /// Marks a contact verified, after the user compared safety numbers.
    pub async fn mark_verified(&mut self, phone: &PhoneNumber) -> Result<()> {
        let _held = self.hold().await?;
        self.trusted_devices(phone, None).await?;
        let mut contacts = self.contacts().await?;
        let contact = contacts
            .by_phone
            .get_mut(phone.e164())
            .ok_or_else(|| ClientError::UnknownContact(phone.to_string()))?;
        if contact.pending.is_some() {
            return Err(ClientError::IdentityChanged(vec![phone.to_string()]));
        }
        contact.verified = true;
        self.save_contacts(&contacts).await
    }

    /// The safety number with a contact and how many devices their
    /// identity key lists. It is made from the two accounts' identity keys
    /// and numbers as this device pinned them, never from a fresh relay
    /// answer, so it changes only when an identity does, not when devices
    /// come and go.
    pub async fn safety_number(&mut self, phone: &PhoneNumber) -> Result<(String, usize)> {
        let _held = self.hold().await?;
        if self.pinned(phone).await?.is_none() {
            self.trusted_devices(phone, None).await?;
        }
        let contact = self
            .pinned(phone)
            .await?
            .ok_or_else(|| ClientError::UnknownContact(phone.to_string()))?;
        let mine = self.identity.identity_key()?.public();
        let number = crate::safety::safety_number(
            &crate::safety::fingerprint(self.identity.phone.e164(), &[mine.into_bytes()]),
            &crate::safety::fingerprint(phone.e164(), &[contact.list.identity_key.into_bytes()]),
        );
        Ok((number, contact.list.devices.len()))
    }
}
