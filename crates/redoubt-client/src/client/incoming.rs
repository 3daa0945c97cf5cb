//! What arrives: fetching the mailbox, and turning each envelope into
//! stored history and MLS state. Welcomes and commits are checked leaf by
//! leaf before they take effect; bad input becomes a visible notice, never
//! an error that would block the mailbox.

use super::*;

impl Client {
    /// Fetches, processes and acknowledges everything waiting, then tops up
    /// key packages.
    pub async fn sync(&mut self) -> Result<SyncReport> {
        let _held = self.hold().await?;
        let synced = self.sync_held().await;
        if synced.is_err() {
            // The MLS state in memory may have run ahead of what is stored
            // (a page processed, not stored): the next operation reloads
            // it, so the page is processed again from where the store left
            // it, not lost.
            self.forget_unstored_state();
        }
        synced
    }

    async fn sync_held(&mut self) -> Result<SyncReport> {
        self.pin_service_key_if_missing().await?;
        // What waits in the outbox goes first, in the order it was written.
        let flushed = self.flush_outbox().await?;
        // Then commits kept from an earlier operation: the others' messages
        // in the state they lead to may be in the mailbox. One the relay
        // still does not answer for stays kept; the rest of the sync goes
        // on (what arrives may be another member's commit that overtook it).
        match self.confirm_commits(None).await {
            Err(e) if e.is_transient() => {}
            other => other?,
        }
        let mut report = SyncReport {
            sent: flushed.sent.len(),
            queued: flushed.waiting,
            ..Default::default()
        };
        loop {
            let page = self.api.fetch().await?;
            if page.envelopes.is_empty() {
                break;
            }
            let mut changes = Changes::default();
            let mut acks = Vec::new();
            for envelope in page.envelopes {
                acks.push(envelope.id);
                if self.store.is_processed(envelope.id).await?
                    || changes.processed.contains(&envelope.id)
                {
                    continue;
                }
                self.process(envelope.kind, envelope.payload.as_slice(), &mut changes)
                    .await?;
                changes.processed.push(envelope.id);
                report.processed += 1;
            }
            report.messages.extend(changes.messages.iter().cloned());
            // Stored first, acknowledged second: a crash in between means a
            // redelivery, which the processed list drops.
            self.keep_transcript(&mut changes)?;
            self.persist(changes).await?;
            self.api.ack(acks).await?;
            if !page.more {
                break;
            }
            report.messages.extend(self.unpark().await?);
            self.commit_proposals().await?;
        }
        // Kept messages whose commit came in the last page, or whose wait
        // is over (even when nothing new came).
        report.messages.extend(self.unpark().await?);
        self.commit_proposals().await?;
        // Members' directory epochs against this device's.
        self.compare_sightings().await?;
        // Watch this account's own device list: a list this device's
        // identity did not sign (an SMS reset by someone else) is shown.
        self.own_trusted_devices().await?;
        // And its own number in the key-transparency directory: a key put
        // there by anyone else is shown here.
        self.monitor_own_keys().await?;
        self.top_up_key_packages().await?;
        Ok(report)
    }

    /// Processes one envelope's payload into `changes`. Bad input becomes a
    /// visible notice, never an error that would block the mailbox.
    async fn process(
        &mut self,
        kind: EnvelopeKind,
        payload: &[u8],
        changes: &mut Changes,
    ) -> Result<()> {
        if kind == EnvelopeKind::ServerNotice {
            return self.service_notice(payload, changes).await;
        }
        let Ok(message) = MlsMessageIn::tls_deserialize_exact(payload) else {
            self.ensure_notices_chat(changes).await?;
            changes.messages.push(system_message(
                NOTICES_CHAT,
                "A message that is not valid MLS was dropped.".into(),
            ));
            return Ok(());
        };
        let message: ProtocolMessage = match message.extract() {
            MlsMessageBodyIn::Welcome(welcome) => return self.join(welcome, changes).await,
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            _ => return Ok(()),
        };
        // From an epoch this device has not reached: the relay delivered it
        // before the commit that leads there. Kept until that commit comes.
        let group_id = message.group_id().as_slice().to_vec();
        let epoch = message.epoch().as_u64();
        if self
            .groups
            .get(&group_id)
            .is_some_and(|g| epoch > g.epoch().as_u64())
        {
            changes.parked_add.push(Parked {
                seq: 0,
                group_id,
                epoch,
                payload: payload.to_vec(),
                parked_at: now_ms(),
            });
            return Ok(());
        }
        // A commit from an epoch this device has left: a replay, or a
        // second commit the relay accepted from that epoch (a split).
        let commit = message.content_type() == ContentType::Commit;
        let current = self.groups.get(&group_id).map(|g| g.epoch().as_u64());
        if commit && current.is_some_and(|c| epoch < c) {
            return self.old_commit(&group_id, epoch, payload, changes).await;
        }
        self.handle_protocol(message, changes).await?;
        let now = self.groups.get(&group_id).map(|g| g.epoch().as_u64());
        if commit && now == Some(epoch + 1) {
            self.note_commit(&group_id, epoch, payload).await?;
        }
        Ok(())
    }

    /// Processes kept messages whose epoch this device has now reached (a
    /// commit that leads there arrived), until none is left that can be;
    /// those kept longer than `future_epoch_wait` are reported lost.
    async fn unpark(&mut self) -> Result<Vec<MessageRecord>> {
        let mut stored = Vec::new();
        loop {
            let parked = self.store.parked().await?;
            if parked.is_empty() {
                return Ok(stored);
            }
            let wait = i64::try_from(self.config.future_epoch_wait.as_millis()).unwrap_or(i64::MAX);
            let now = now_ms();
            let mut changes = Changes::default();
            let mut progress = false;
            for p in parked {
                let reached = match self.groups.get(&p.group_id) {
                    // A chat left since: nothing to show.
                    None => None,
                    Some(g) => Some(g.epoch().as_u64() >= p.epoch),
                };
                match reached {
                    None => changes.parked_done.push(p.seq),
                    Some(true) => {
                        changes.parked_done.push(p.seq);
                        self.process(EnvelopeKind::Mls, &p.payload, &mut changes)
                            .await?;
                        progress = true;
                    }
                    Some(false) if now.saturating_sub(p.parked_at) >= wait => {
                        changes.parked_done.push(p.seq);
                        changes.messages.push(system_message(
                            &p.group_id,
                            "⚠ A message in this chat could not be read: the change to the chat \
                             it was written after never arrived (the relay withheld it)."
                                .into(),
                        ));
                    }
                    Some(false) => {}
                }
            }
            // Nothing processed or given up on: nothing to write (a write
            // would make other processes reload for nothing).
            if changes.parked_done.is_empty() {
                return Ok(stored);
            }
            stored.extend(changes.messages.iter().cloned());
            self.keep_transcript(&mut changes)?;
            self.persist(changes).await?;
            if !progress {
                return Ok(stored);
            }
        }
    }

    async fn join(&mut self, welcome: Welcome, changes: &mut Changes) -> Result<()> {
        let staged =
            match StagedWelcome::build_from_welcome(&self.provider, &mls::join_config(), welcome)
                .and_then(|builder| {
                    let group_id = builder
                        .processed_welcome()
                        .unverified_group_info()
                        .group_id()
                        .clone();
                    // A chat this device was removed from or left may still have
                    // state from an older profile version (removal now deletes it):
                    // being added back replaces it. A Welcome into a chat this
                    // device is still in is refused by OpenMLS as a duplicate.
                    if self.groups.contains_key(group_id.as_slice()) {
                        builder.build()
                    } else {
                        builder.replace_old_group().build()
                    }
                }) {
                Ok(staged) => staged,
                Err(_) => {
                    // A Welcome for a key package this device no longer has (or a
                    // forged one) cannot be used; say so instead of failing.
                    self.ensure_notices_chat(changes).await?;
                    changes.messages.push(system_message(
                        NOTICES_CHAT,
                        "An invitation to a chat could not be opened and was dropped.".into(),
                    ));
                    return Ok(());
                }
            };
        let inviter = staged
            .welcome_sender()
            .ok()
            .and_then(|leaf| mls::identity_of(leaf.credential()).ok());
        // Every member of the whole ratchet tree must be vouched for by
        // its account's identity key before this device joins: a ghost in
        // the tree would read everything said here.
        let leaves: Vec<(Credential, Vec<u8>)> = staged
            .members()
            .map(|m| (m.credential.clone(), m.signature_key.clone()))
            .collect();
        for (credential, key) in &leaves {
            match self.vouch(credential, key).await {
                Ok(_) => {}
                Err(why) => {
                    self.ensure_notices_chat(changes).await?;
                    let from = inviter
                        .as_ref()
                        .map(|i| i.phone.to_string())
                        .unwrap_or_else(|| "someone".into());
                    changes.messages.push(system_message(
                        NOTICES_CHAT,
                        format!("⚠ An invitation to a chat from {from} was refused: {why}."),
                    ));
                    return Ok(());
                }
            }
        }
        let group = staged
            .into_group(&self.provider)
            .map_err(ClientError::mls)?;
        let group_id = group.group_id().as_slice().to_vec();
        let previous = self.chat_record(&group_id, changes).await?;
        let inviter_name = inviter
            .as_ref()
            .map(|i| i.phone.to_string())
            .unwrap_or_else(|| "someone".into());
        let back = previous.is_some();
        changes.chats.push(match previous {
            // Added back to a chat this device had left or was removed
            // from: the same chat, with its history, active again.
            Some(chat) => ChatRecord {
                state: ChatState::Active,
                ..chat
            },
            None => ChatRecord {
                group_id: group_id.clone(),
                kind: ChatKind::Group,
                name: format!("chat from {inviter_name}"),
                peer: inviter
                    .as_ref()
                    .map(|i| i.account)
                    .filter(|a| *a != self.identity.account),
                state: ChatState::Active,
                created_at: now_ms(),
            },
        });
        changes.messages.push(system_message(
            &group_id,
            if back {
                format!("{inviter_name} added you back to this chat.")
            } else {
                format!("{inviter_name} added you to this chat.")
            },
        ));
        let epoch = group.epoch().as_u64();
        self.groups.insert(group_id.clone(), group);
        self.joined_chat(&group_id, epoch).await
    }

    fn pending_chat(&self, group_id: &[u8], changes: &Changes) -> Option<ChatRecord> {
        changes
            .chats
            .iter()
            .rev()
            .find(|c| c.group_id == group_id)
            .cloned()
    }

    async fn chat_record(&self, group_id: &[u8], changes: &Changes) -> Result<Option<ChatRecord>> {
        if let Some(chat) = self.pending_chat(group_id, changes) {
            return Ok(Some(chat));
        }
        Ok(self
            .store
            .chats()
            .await?
            .into_iter()
            .find(|c| c.group_id == group_id))
    }

    async fn handle_protocol(
        &mut self,
        message: ProtocolMessage,
        changes: &mut Changes,
    ) -> Result<()> {
        let group_id = message.group_id().as_slice().to_vec();
        let epoch = message.epoch().as_u64();
        let Some(group) = self.groups.get_mut(&group_id) else {
            // A chat this device left or never joined: nothing to do.
            return Ok(());
        };
        let processed = match group.process_message(&self.provider, message) {
            Ok(p) => p,
            Err(_) => {
                changes.messages.push(system_message(
                    &group_id,
                    "⚠ A message could not be decrypted or verified and was dropped \
                     (tampered, replayed, not from a member, or written in another history \
                     of this chat)."
                        .into(),
                ));
                return Ok(());
            }
        };
        let sender = mls::identity_of(processed.credential())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let payload = app.into_bytes();
                let Ok(envelope) = serde_json::from_slice::<AppEnvelope>(&payload) else {
                    changes.messages.push(system_message(
                        &group_id,
                        "A message in an unknown format was dropped.".into(),
                    ));
                    return Ok(());
                };
                // Written in an earlier state of the chat by someone no
                // longer in it (removed by a commit this device has seen):
                // not shown as a message.
                let current = self.groups.get(&group_id).map_or(0, |g| g.epoch().as_u64());
                if epoch < current && self.member_identity(&group_id, sender.device).is_none() {
                    changes.messages.push(system_message(
                        &group_id,
                        format!(
                            "⚠ A message from {} was written in an earlier state of this chat, \
                             and they are no longer in it: it is not shown.",
                            sender.phone
                        ),
                    ));
                    return Ok(());
                }
                // The directory epoch the sender saw is compared with this
                // device's once the mailbox is in (it may need the relay).
                if let Some(epoch) = envelope.directory {
                    if sender.device != self.identity.device {
                        self.sightings.push(kt::Sighting {
                            group_id: group_id.clone(),
                            member: sender.phone.to_string(),
                            epoch,
                        });
                    }
                }
                // Its place in the sender's stream: after a gap, into the
                // gap it left, or dropped as a repeat. Messages from before
                // the stream existed have none and are appended.
                let slot = match &envelope.order {
                    Some(order) => {
                        match self
                            .place(&group_id, &sender, epoch, order, &payload, changes)
                            .await?
                        {
                            transcript::Received::Apply(slot) => slot,
                            transcript::Received::Dropped => return Ok(()),
                        }
                    }
                    None => transcript::Slot::Append,
                };
                let from = changes.messages.len();
                self.apply_app_message(&group_id, sender.clone(), envelope.body, changes)
                    .await?;
                if let transcript::Slot::Fill(placeholder) = slot {
                    self.fill(&group_id, &sender, placeholder, from, changes);
                }
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let group = self
                    .groups
                    .get_mut(&group_id)
                    .ok_or(ClientError::NotAMember)?;
                group
                    .store_pending_proposal(self.provider.storage(), *proposal)
                    .map_err(ClientError::mls)?;
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                self.apply_commit(&group_id, &sender, *staged, changes)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn apply_app_message(
        &mut self,
        group_id: &[u8],
        sender: MemberIdentity,
        body: AppMessage,
        changes: &mut Changes,
    ) -> Result<()> {
        match body {
            AppMessage::Text { id, text, sent_at } => changes.messages.push(MessageRecord {
                message_id: id,
                group_id: group_id.to_vec(),
                author: Author::Member {
                    me: sender.account == self.identity.account,
                    account: sender.account,
                    device: sender.device,
                    phone: sender.phone.to_string(),
                },
                text,
                sent_at,
                received_at: now_ms(),
                delivery: Delivery::Sent,
            }),
            AppMessage::DirectoryConflict {
                member,
                theirs,
                ours,
            } => {
                let text = self
                    .conflict_report(sender.phone.e164(), &member, &theirs, &ours)
                    .await?;
                changes
                    .messages
                    .push(system_message(group_id, text.clone()));
                self.ensure_notices_chat(changes).await?;
                changes
                    .messages
                    .push(system_message(NOTICES_CHAT, text.clone()));
                self.announcements.push(text);
            }
            AppMessage::ChatInfo { kind, name } => {
                if let Some(mut chat) = self.chat_record(group_id, changes).await? {
                    chat.kind = kind;
                    if kind == ChatKind::Direct {
                        if sender.account != self.identity.account {
                            chat.name = sender.phone.to_string();
                            chat.peer = Some(sender.account);
                        }
                    } else if !name.trim().is_empty() {
                        chat.name = name.chars().take(100).collect();
                    }
                    changes.chats.push(chat);
                }
            }
        }
        Ok(())
    }

    /// When a member proposes to leave, the remaining member with the lowest
    /// leaf index commits the proposal, so exactly one commit is made.
    fn designated_for_proposals(&self, group: &MlsGroup) -> bool {
        let leaving: BTreeSet<u32> = group
            .pending_proposals()
            .filter_map(|p| match p.proposal() {
                Proposal::Remove(r) => Some(r.removed().u32()),
                _ => None,
            })
            .collect();
        let designated = group
            .members()
            .map(|m| m.index.u32())
            .find(|i| !leaving.contains(i));
        designated == Some(group.own_leaf_index().u32())
    }

    /// Commits the proposals this device is designated to commit, in every
    /// chat that has some. Run once the page they came in is stored (a
    /// commit kept for a later attempt stores the MLS state, which must not
    /// run ahead of the history it belongs with), and found from the stored
    /// MLS state, so a crash or a failure loses none. A commit another
    /// member's beat is no loss: theirs carries the proposals.
    async fn commit_proposals(&mut self) -> Result<()> {
        let due: Vec<Vec<u8>> = self
            .groups
            .iter()
            .filter(|(_, g)| {
                g.pending_proposals().next().is_some()
                    && g.pending_commit().is_none()
                    && self.designated_for_proposals(g)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for group_id in due {
            let group = self.groups.get(&group_id).ok_or(ClientError::NotAMember)?;
            let recipients = self.recipients(group)?;
            let (provider, signer) = (&self.provider, &self.identity.signer);
            let group = self
                .groups
                .get_mut(&group_id)
                .ok_or(ClientError::NotAMember)?;
            let (commit, _, _) = group
                .commit_to_pending_proposals(provider, signer)
                .map_err(ClientError::mls)?;
            match self.send_commit(&group_id, recipients, commit, None).await {
                Err(ClientError::ChatChanged) => continue,
                other => other?,
            }
            self.persist(Changes {
                messages: vec![system_message(&group_id, "A member left.".into())],
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    async fn apply_commit(
        &mut self,
        group_id: &[u8],
        sender: &MemberIdentity,
        staged: StagedCommit,
        changes: &mut Changes,
    ) -> Result<()> {
        // Every leaf the commit brings in or changes must be vouched for by
        // its account's identity key. A commit that fails is not merged:
        // the chat stops here, loudly, rather than let a ghost read on.
        let mut added = Vec::new();
        let mut changed_leaves: Vec<(Credential, Vec<u8>)> = staged
            .update_proposals()
            .map(|u| {
                let leaf = u.update_proposal().leaf_node();
                (
                    leaf.credential().clone(),
                    leaf.signature_key().as_slice().to_vec(),
                )
            })
            .collect();
        if let Some(leaf) = staged.update_path_leaf_node() {
            changed_leaves.push((
                leaf.credential().clone(),
                leaf.signature_key().as_slice().to_vec(),
            ));
        }
        let new_leaves: Vec<(Credential, Vec<u8>)> = staged
            .add_proposals()
            .map(|add| {
                let leaf = add.add_proposal().key_package().leaf_node();
                (
                    leaf.credential().clone(),
                    leaf.signature_key().as_slice().to_vec(),
                )
            })
            .collect();
        for (i, (credential, key)) in new_leaves.iter().chain(&changed_leaves).enumerate() {
            match self.vouch(credential, key).await {
                Ok(id) if i < new_leaves.len() => added.push(ContactDevice {
                    account_id: id.account,
                    device_id: id.device,
                    signature_key: key.clone(),
                    phone: id.phone.to_string(),
                }),
                Ok(_) => {}
                Err(why) => {
                    changes.messages.push(system_message(
                        group_id,
                        format!(
                            "⚠ A change to this chat by {} was refused: {why}. Nothing more \
                             can be read or sent here until the chat is created anew.",
                            sender.phone
                        ),
                    ));
                    return Ok(());
                }
            }
        }
        let group = self.groups.get(group_id).ok_or(ClientError::NotAMember)?;
        let mut removed = BTreeSet::new();
        for remove in staged.remove_proposals() {
            if let Some(member) = group.member_at(remove.remove_proposal().removed()) {
                removed.insert(mls::identity_of(&member.credential)?.phone.to_string());
            }
        }
        let self_removed = staged.self_removed();
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClientError::NotAMember)?;
        group
            .merge_staged_commit(&self.provider, staged)
            .map_err(ClientError::mls)?;
        let who = if sender.account == self.identity.account {
            "You".to_owned()
        } else {
            sender.phone.to_string()
        };
        for phone in BTreeSet::from_iter(added.iter().map(|a| a.phone.clone())) {
            changes
                .messages
                .push(system_message(group_id, format!("{who} added {phone}.")));
        }
        for phone in removed {
            if phone != sender.phone.to_string() {
                changes
                    .messages
                    .push(system_message(group_id, format!("{who} removed {phone}.")));
            }
        }
        if self_removed {
            self.forget_group(group_id)?;
            if let Some(mut chat) = self.chat_record(group_id, changes).await? {
                if chat.state == ChatState::Active {
                    chat.state = ChatState::Removed;
                    changes.messages.push(system_message(
                        group_id,
                        format!("{who} removed you from this chat."),
                    ));
                }
                changes.chats.push(chat);
            }
        }
        Ok(())
    }

    /// Deletes a group's MLS state once this device is out of it: its
    /// secrets must not outlive membership, and a device added back later
    /// must be able to join afresh.
    pub(super) fn forget_group(&mut self, group_id: &[u8]) -> Result<()> {
        if let Some(mut group) = self.groups.remove(group_id) {
            group
                .delete(self.provider.storage())
                .map_err(ClientError::mls)?;
        }
        Ok(())
    }
}
