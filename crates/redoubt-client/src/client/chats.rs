//! Starting chats, sending to them, and changing who is in them. Every
//! device added comes from a signed device list and a key package whose
//! certificate its account's identity key made; every device removed is
//! one a newer signed list dropped, or a member the user removed.

use super::commits::{self, after_races};
use super::*;

/// A chat's description as its members are told it: its kind, and its name
/// for a group (a direct chat is named after the other person by each).
pub(super) fn chat_info(kind: ChatKind, name: &str) -> AppMessage {
    AppMessage::ChatInfo {
        kind,
        name: if kind == ChatKind::Group {
            name.to_owned()
        } else {
            String::new()
        },
    }
}

impl Client {
    /// Claims a key package for each listed device of `accounts` and
    /// checks each: its certificate verifies under the account's identity
    /// key and names the very device and key the signed list names. A
    /// package that fails is refused and nothing is added.
    async fn claim_for(
        &self,
        accounts: &[AccountDevices],
    ) -> Result<(Vec<KeyPackage>, Vec<ContactDevice>)> {
        let devices: Vec<DeviceId> = accounts
            .iter()
            .flat_map(|a| a.devices.iter().map(|(id, _)| *id))
            .collect();
        if devices.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let claimed = self.api.claim(devices).await?;
        let mut packages = Vec::new();
        let mut contacts = Vec::new();
        for c in claimed.key_packages {
            let kp = mls::parse_key_package(&self.provider, c.data.as_slice())?;
            let leaf_key = kp.leaf_node().signature_key().as_slice().to_vec();
            let account = accounts
                .iter()
                .find(|a| a.devices.iter().any(|(d, _)| *d == c.device_id))
                .ok_or_else(|| {
                    ClientError::Untrusted("the relay answered for a device not asked for".into())
                })?;
            let refused = |why: String| {
                ClientError::Untrusted(format!(
                    "a key package the relay served for {} {why}; nothing was added",
                    account.phone
                ))
            };
            let certified = crate::identity::check_leaf(
                &mls::credential_bytes(kp.leaf_node().credential())?,
                &leaf_key,
            )
            .map_err(|e| refused(format!("failed its check: {e}")))?;
            let listed_key = account
                .devices
                .iter()
                .find(|(d, _)| *d == c.device_id)
                .map(|(_, k)| k.as_slice());
            if certified.identity_key != account.identity_key
                || certified.account != account.account
                || certified.device != c.device_id
                || listed_key != Some(leaf_key.as_slice())
            {
                return Err(refused(
                    "is not the key their identity key vouches for".into(),
                ));
            }
            contacts.push(ContactDevice {
                account_id: account.account,
                device_id: c.device_id,
                signature_key: leaf_key,
                phone: account.phone.to_string(),
            });
            packages.push(kp);
        }
        Ok((packages, contacts))
    }

    /// Creates a chat with the accounts behind `phones` (all their devices
    /// and this account's other devices).
    async fn create_chat(
        &mut self,
        kind: ChatKind,
        name: String,
        phones: &[PhoneNumber],
    ) -> Result<ChatRecord> {
        let mut accounts = Vec::new();
        for phone in phones {
            if *phone == self.identity.phone {
                return Err(ClientError::Invalid(
                    "you cannot start a chat with your own number".into(),
                ));
            }
            let account = self.trusted_devices(phone, None).await?;
            if self
                .pinned(phone)
                .await?
                .is_some_and(|c| c.pending.is_some())
            {
                return Err(ClientError::IdentityChanged(vec![phone.to_string()]));
            }
            if account.devices.is_empty() {
                return Err(ClientError::UnknownContact(phone.to_string()));
            }
            accounts.push(account);
        }
        let own = self.own_trusted_devices().await?;
        if !own.devices.is_empty() {
            accounts.push(own);
        }
        let (packages, contacts) = self.claim_for(&accounts).await?;
        let mut group = MlsGroup::new(
            &self.provider,
            &self.identity.signer,
            &mls::create_config(),
            self.credential()?,
        )
        .map_err(ClientError::mls)?;
        let group_id = group.group_id().as_slice().to_vec();
        let recipients: Vec<DeviceId> = contacts.iter().map(|c| c.device_id).collect();
        let (_commit, welcome, _) = group
            .add_members(&self.provider, &self.identity.signer, &packages)
            .map_err(ClientError::mls)?;
        group
            .merge_pending_commit(&self.provider)
            .map_err(ClientError::mls)?;
        let epoch = group.epoch().as_u64();
        self.joined_chat(&group_id, epoch).await?;
        let info = self
            .app_bytes(&group_id, epoch, chat_info(kind, &name))
            .await?;
        let info = group
            .create_message(&self.provider, &self.identity.signer, &info)
            .map_err(ClientError::mls)?;
        // The Welcome goes first: the same mailbox order makes every new
        // device join before it reads the chat's name.
        self.send_envelope(
            EnvelopeId::time_ordered(),
            recipients.clone(),
            welcome.tls_serialize_detached().map_err(ClientError::mls)?,
        )
        .await?;
        self.send_envelope(
            EnvelopeId::time_ordered(),
            recipients,
            info.tls_serialize_detached().map_err(ClientError::mls)?,
        )
        .await?;

        let chat = ChatRecord {
            group_id: group_id.clone(),
            kind,
            name,
            peer: (kind == ChatKind::Direct).then(|| accounts[0].account),
            state: ChatState::Active,
            created_at: now_ms(),
        };
        let messages = vec![system_message(&group_id, "You created this chat.".into())];
        self.groups.insert(group_id.clone(), group);
        self.note_epoch(&group_id).await?;
        let mut changes = Changes {
            chats: vec![chat.clone()],
            messages,
            ..Default::default()
        };
        self.keep_transcript(&mut changes)?;
        self.persist(changes).await?;
        Ok(chat)
    }

    /// Starts (or returns the existing) direct chat with the account behind `phone`.
    pub async fn start_direct(&mut self, phone: &PhoneNumber) -> Result<ChatRecord> {
        let _held = self.hold().await?;
        let existing = self.chats().await?.into_iter().find(|c| {
            c.kind == ChatKind::Direct && c.state == ChatState::Active && c.name == phone.e164()
        });
        if let Some(chat) = existing {
            return Ok(chat);
        }
        self.create_chat(
            ChatKind::Direct,
            phone.to_string(),
            std::slice::from_ref(phone),
        )
        .await
    }

    /// Creates a named group with the accounts behind `phones`.
    pub async fn create_group(&mut self, name: &str, phones: &[PhoneNumber]) -> Result<ChatRecord> {
        let _held = self.hold().await?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || PhoneNumber::parse(name).is_ok() {
            return Err(ClientError::Invalid(
                "a group name must be 1 to 100 characters and not a phone number".into(),
            ));
        }
        self.create_chat(ChatKind::Group, name.to_owned(), phones)
            .await
    }

    pub(super) fn active_group(&self, chat: &ChatRecord) -> Result<&MlsGroup> {
        if chat.state != ChatState::Active {
            return Err(ClientError::NotAMember);
        }
        self.groups
            .get(&chat.group_id)
            .ok_or(ClientError::NotAMember)
    }

    /// Sends a text message. It is encrypted and stored first, then sent;
    /// when the relay cannot take it now (unreachable, say) it waits in the
    /// outbox and the returned record says `Queued`: any later command that
    /// reaches the relay sends it. A refusal for good is an error.
    pub async fn send_text(&mut self, chat: &ChatRecord, text: &str) -> Result<MessageRecord> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(ClientError::TooLarge {
                len: text.len(),
                max: MAX_TEXT_BYTES,
            });
        }
        if text.trim().is_empty() {
            return Err(ClientError::Invalid("an empty message is not sent".into()));
        }
        let _held = self.hold().await?;
        // A change of this device's the relay has not confirmed goes first
        // (no message can be written in the chat until it has).
        self.confirm_commits(Some(&chat.group_id)).await?;
        // A chat follows its members' devices as their signed lists change.
        // Offline, the message goes to the devices the chat has.
        // In a group, every send checks the members' signed lists in one
        // request (an identity change holds the message); the designated
        // member also applies device changes.
        match chat.kind {
            ChatKind::Direct => match self.reconcile(chat).await {
                Err(e) if e.is_transient() => {}
                other => other?,
            },
            ChatKind::Group => {
                let applied = after_races!(self, {
                    match self.wanted_devices(chat).await {
                        Err(e) if e.is_transient() => Ok(()),
                        Err(e) => Err(e),
                        Ok(wanted) if self.designated(chat)? => {
                            self.apply_wanted(chat, wanted).await
                        }
                        Ok(_) => Ok(()),
                    }
                });
                applied?;
            }
        }
        // Nothing goes to a chat where someone's identity changed until the
        // user accepted it.
        let changed = self.pending_changes(chat).await?;
        if !changed.is_empty() {
            return Err(ClientError::IdentityChanged(changed));
        }
        let id = Uuid::new_v4();
        let sent_at = now_ms();
        // Messages from a later epoch are waiting for a commit this device
        // has not seen (perhaps one removing a member, withheld so that
        // member could go on reading): hold until it comes.
        let epoch = self.active_group(chat)?.epoch().as_u64();
        if self.store.parked_ahead(&chat.group_id, epoch).await? {
            return Err(ClientError::ChatBehind);
        }
        let body = self
            .app_bytes(
                &chat.group_id,
                epoch,
                AppMessage::Text {
                    id,
                    text: text.to_owned(),
                    sent_at,
                },
            )
            .await?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .filter(|_| chat.state == ChatState::Active)
            .ok_or(ClientError::NotAMember)?;
        let out = group
            .create_message(provider, signer, &body)
            .map_err(ClientError::mls)?;
        let recipients = self.recipients(
            self.groups
                .get(&chat.group_id)
                .ok_or(ClientError::NotAMember)?,
        )?;
        let mut record = MessageRecord {
            message_id: id,
            group_id: chat.group_id.clone(),
            author: Author::Member {
                account: self.identity.account,
                device: self.identity.device,
                phone: self.identity.phone.to_string(),
                me: true,
            },
            text: text.to_owned(),
            sent_at,
            received_at: sent_at,
            delivery: Delivery::Queued,
        };
        let envelope = self
            .enqueue(
                &record,
                recipients,
                out.tls_serialize_detached().map_err(ClientError::mls)?,
            )
            .await?;
        let flushed = self.flush_outbox().await?;
        if let Some((_, e)) = flushed.failed.into_iter().find(|(id, _)| *id == envelope) {
            return Err(e);
        }
        if flushed.sent.contains(&envelope) {
            record.delivery = Delivery::Sent;
        }
        Ok(record)
    }

    /// Adds the account behind `phone` (all its devices) to a group.
    pub async fn add_member(&mut self, chat: &ChatRecord, phone: &PhoneNumber) -> Result<()> {
        let _held = self.hold().await?;
        self.confirm_commits(Some(&chat.group_id)).await?;
        after_races!(self, self.add_member_once(chat, phone).await)
    }

    async fn add_member_once(&mut self, chat: &ChatRecord, phone: &PhoneNumber) -> Result<()> {
        if chat.kind != ChatKind::Group {
            return Err(ClientError::Invalid(
                "members can only be added to groups".into(),
            ));
        }
        let account = self.trusted_devices(phone, Some(&chat.group_id)).await?;
        if self
            .pinned(phone)
            .await?
            .is_some_and(|c| c.pending.is_some())
        {
            return Err(ClientError::IdentityChanged(vec![phone.to_string()]));
        }
        let current = self.members(chat)?;
        let new_devices: Vec<(DeviceId, Vec<u8>)> = account
            .devices
            .iter()
            .filter(|(d, _)| !current.iter().any(|m| m.device == *d))
            .cloned()
            .collect();
        if new_devices.is_empty() {
            return Err(ClientError::Invalid(format!("{phone} is already a member")));
        }
        self.add_devices(
            chat,
            &[AccountDevices {
                devices: new_devices,
                ..account
            }],
        )
        .await?;
        self.note(&chat.group_id, format!("You added {phone}."))
            .await
    }

    /// Commits the addition of these accounts' devices, sends the commit to
    /// the current members and the Welcome to the new devices, then the
    /// chat's description to everyone.
    async fn add_devices(&mut self, chat: &ChatRecord, accounts: &[AccountDevices]) -> Result<()> {
        let (packages, contacts) = self.claim_for(accounts).await?;
        let existing = self.recipients(self.active_group(chat)?)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        let (commit, welcome, _) = group
            .add_members(provider, signer, &packages)
            .map_err(ClientError::mls)?;
        let new_recipients: Vec<DeviceId> = contacts.iter().map(|c| c.device_id).collect();
        self.send_commit(
            &chat.group_id,
            existing,
            commit,
            Some((new_recipients, welcome)),
        )
        .await?;
        self.persist(Changes::default()).await
    }

    /// Removes these leaves. The removed devices get the commit too, so they
    /// learn they are out.
    async fn remove_leaves(&mut self, chat: &ChatRecord, leaves: &[LeafNodeIndex]) -> Result<()> {
        let recipients = self.recipients(self.active_group(chat)?)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        let (commit, _, _) = group
            .remove_members(provider, signer, leaves)
            .map_err(ClientError::mls)?;
        self.send_commit(&chat.group_id, recipients, commit, None)
            .await
    }

    /// Removes the account behind `phone` (all its devices) from a group.
    pub async fn remove_member(&mut self, chat: &ChatRecord, phone: &PhoneNumber) -> Result<()> {
        let _held = self.hold().await?;
        self.confirm_commits(Some(&chat.group_id)).await?;
        after_races!(self, self.remove_member_once(chat, phone).await)
    }

    async fn remove_member_once(&mut self, chat: &ChatRecord, phone: &PhoneNumber) -> Result<()> {
        if chat.kind != ChatKind::Group {
            return Err(ClientError::Invalid(
                "members can only be removed from groups".into(),
            ));
        }
        if *phone == self.identity.phone {
            return Err(ClientError::Invalid(
                "use `redoubt group leave` to leave".into(),
            ));
        }
        let group = self.active_group(chat)?;
        let mut leaves = Vec::new();
        for m in group.members() {
            if mls::identity_of(&m.credential)?.phone == *phone {
                leaves.push(m.index);
            }
        }
        if leaves.is_empty() {
            return Err(ClientError::NotInChat(phone.to_string()));
        }
        self.remove_leaves(chat, &leaves).await?;
        self.note(&chat.group_id, format!("You removed {phone}."))
            .await
    }

    /// Brings the chat's devices in line with the device lists its members'
    /// identity keys signed (this account's own included): devices a newer
    /// list dropped are removed, devices it added are added, and an
    /// accepted identity change replaces the old identity's devices with
    /// the new one's. What the relay lists or stops listing changes
    /// nothing; a list that does not verify is refused and said.
    pub async fn reconcile(&mut self, chat: &ChatRecord) -> Result<()> {
        let _held = self.hold().await?;
        self.confirm_commits(Some(&chat.group_id)).await?;
        after_races!(self, {
            let wanted = self.wanted_devices(chat).await?;
            self.apply_wanted(chat, wanted).await
        })
    }

    /// What each number in the chat should have, as the identity keys say:
    /// this account's own list, and the members' lists (one request for a
    /// group, a lookup per number for a direct chat, which also notices a
    /// number re-homed to another account). Numbers with an identity change
    /// not yet accepted are left out: their devices stay as they are.
    async fn wanted_devices(
        &mut self,
        chat: &ChatRecord,
    ) -> Result<Vec<(PhoneNumber, AccountDevices)>> {
        let mut wanted = vec![(
            self.identity.phone.clone(),
            self.own_trusted_devices().await?,
        )];
        let others = if chat.kind == ChatKind::Group {
            self.check_members(chat).await?
        } else {
            let mut phones: Vec<PhoneNumber> = Vec::new();
            for m in self.members(chat)? {
                let phone = PhoneNumber::parse(&m.phone)?;
                if phone != self.identity.phone && !phones.contains(&phone) {
                    phones.push(phone);
                }
            }
            let mut out = Vec::new();
            for phone in phones {
                out.push(self.trusted_devices(&phone, Some(&chat.group_id)).await?);
            }
            out
        };
        // One read of the pins, not one per member.
        let pending = self.pending_phones().await?;
        wanted.extend(
            others
                .into_iter()
                .filter(|devices| !pending.contains(devices.phone.e164()))
                .map(|devices| (devices.phone.clone(), devices)),
        );
        Ok(wanted)
    }

    /// Removes the devices the lists dropped and adds the ones they added.
    async fn apply_wanted(
        &mut self,
        chat: &ChatRecord,
        wanted: Vec<(PhoneNumber, AccountDevices)>,
    ) -> Result<()> {
        let members = self.members(chat)?;
        let mut stale = Vec::new();
        let mut fresh = Vec::new();
        for (phone, wanted) in wanted {
            let group = self.active_group(chat)?;
            for m in group.members() {
                let id = mls::identity_of(&m.credential)?;
                let listed = wanted.account == id.account
                    && wanted.devices.iter().any(|(d, k)| {
                        *d == id.device && k.as_slice() == m.signature_key.as_slice()
                    });
                if id.phone == phone && id.device != self.identity.device && !listed {
                    stale.push(m.index);
                }
            }
            let new: Vec<(DeviceId, Vec<u8>)> = wanted
                .devices
                .iter()
                .filter(|(d, _)| !members.iter().any(|m| m.device == *d))
                .cloned()
                .collect();
            if !new.is_empty() {
                fresh.push(AccountDevices {
                    devices: new,
                    ..wanted
                });
            }
        }
        if !stale.is_empty() {
            self.remove_leaves(chat, &stale).await?;
        }
        if !fresh.is_empty() {
            self.add_devices(chat, &fresh).await?;
        }
        if !stale.is_empty() && fresh.is_empty() {
            self.persist(Changes::default()).await?;
        }
        Ok(())
    }

    /// Whether this device makes a group's device changes: the member with
    /// the lowest leaf index, as for leave proposals, so members who meet
    /// the same new list do not race each other's commits.
    fn designated(&self, chat: &ChatRecord) -> Result<bool> {
        let group = self.active_group(chat)?;
        Ok(group.members().map(|m| m.index).min() == Some(group.own_leaf_index()))
    }

    /// Leaves a group: proposes this device's removal; another member commits it.
    pub async fn leave(&mut self, chat: &ChatRecord) -> Result<()> {
        let _held = self.hold().await?;
        self.confirm_commits(Some(&chat.group_id)).await?;
        let recipients = self.recipients(self.active_group(chat)?)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        let proposal = group
            .leave_group(provider, signer)
            .map_err(ClientError::mls)?;
        self.send_envelope(
            EnvelopeId::time_ordered(),
            recipients,
            proposal
                .tls_serialize_detached()
                .map_err(ClientError::mls)?,
        )
        .await?;
        self.forget_group(&chat.group_id)?;
        let mut left = chat.clone();
        left.state = ChatState::Left;
        let messages = vec![system_message(&chat.group_id, "You left this chat.".into())];
        self.persist(Changes {
            chats: vec![left],
            messages,
            ..Default::default()
        })
        .await
    }
}
