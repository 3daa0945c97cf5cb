//! Court orders for tests: a trusted court of Paris and orders it signs,
//! built the way a real authority would build them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use redoubt_legal::order::*;
use redoubt_legal::trust::{Authority, AuthorityKey, AuthorityKind};
use time::{Duration, OffsetDateTime};

/// The signed JSON document of `order`, signed with `key` as
/// `fr-tj-paris#1`.
pub fn signed_order(key: &SigningKey, order: CourtOrder) -> Vec<u8> {
    let signature = STANDARD.encode(key.sign(&canonical_json(&order)).to_bytes());
    serde_json::to_vec(&SignedOrder {
        order,
        signature: OrderSignature {
            alg: "Ed25519".into(),
            key_id: "fr-tj-paris#1".into(),
            value: signature,
        },
        validation: None,
    })
    .unwrap()
}

/// A court of Paris, trusted for a year either side of `now`.
pub fn court(name: &str, key: &SigningKey, now: OffsetDateTime) -> Authority {
    Authority {
        id: "fr-tj-paris".into(),
        name: name.into(),
        jurisdiction: "FR".into(),
        kind: AuthorityKind::Court,
        keys: vec![AuthorityKey {
            key_id: "fr-tj-paris#1".into(),
            public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        }],
        valid_from: now - Duration::days(365),
        valid_until: now + Duration::days(365),
        revoked_at: None,
    }
}

/// An order of the Paris court for `phone`, over the last day.
pub fn order(
    id: &str,
    phone: &str,
    categories: Vec<DataCategory>,
    now: OffsetDateTime,
) -> CourtOrder {
    CourtOrder {
        order_id: id.into(),
        issuing_authority: "fr-tj-paris".into(),
        validating_authority: None,
        jurisdiction: "FR".into(),
        legal_instrument: "national".into(),
        legal_basis: "Code de procédure pénale, art. 60-1".into(),
        case_reference: "CASE-1".into(),
        offence: "Fraud".into(),
        target: Target::Phone(phone.into()),
        categories,
        window: TimeWindow {
            from: now - Duration::days(1),
            to: now,
        },
        issued_at: now - Duration::minutes(5),
        deadline: now + Duration::days(10),
        emergency: false,
        notify_user_after: None,
        reasons: "Needed for the investigation.".into(),
    }
}

/// The desk's staff in tests: operators with their own keys (olga and
/// pierre are the first two; victor is known to nobody until added), who
/// sign every action as `redoubtd legal` would.
pub struct Staff {
    keys: Vec<redoubt_legal::operators::OperatorKey>,
}

impl Default for Staff {
    fn default() -> Self {
        Self::new()
    }
}

impl Staff {
    /// Fresh keys for olga, pierre and victor.
    pub fn new() -> Self {
        Self {
            keys: ["olga", "pierre", "victor"]
                .into_iter()
                .map(|n| redoubt_legal::operators::OperatorKey::generate(n).unwrap())
                .collect(),
        }
    }

    /// The key of the operator called `name`.
    pub fn key(&self, name: &str) -> &redoubt_legal::operators::OperatorKey {
        self.keys
            .iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| panic!("no operator {name} in the staff"))
    }

    /// Makes olga and pierre the desk's first operators.
    pub async fn bootstrap<R, S>(&self, desk: &redoubt_legal::desk::Desk<R, S>, now: OffsetDateTime)
    where
        R: redoubt_legal::records::SubscriberRecords,
        S: redoubt_legal::store::DeskStore,
    {
        let action = redoubt_legal::operators::OperatorKey::bootstrap(
            self.key("olga"),
            self.key("pierre"),
            now,
        );
        desk.bootstrap(&action, now).await.unwrap();
    }

    /// `by` proposes a change and `confirmer` confirms it.
    pub async fn change<R, S>(
        &self,
        desk: &redoubt_legal::desk::Desk<R, S>,
        change: redoubt_legal::operators::Change,
        by: &str,
        confirmer: &str,
        now: OffsetDateTime,
    ) -> Result<(), redoubt_legal::desk::DeskError>
    where
        R: redoubt_legal::records::SubscriberRecords,
        S: redoubt_legal::store::DeskStore,
    {
        use redoubt_legal::operators::ActionKind;
        let proposal = desk
            .propose(&self.key(by).sign(ActionKind::Propose { change }, now), now)
            .await?;
        desk.confirm(
            &self
                .key(confirmer)
                .sign(ActionKind::Confirm { proposal }, now),
            now,
        )
        .await?;
        Ok(())
    }

    /// Bootstraps the desk and has it trust `authority` (olga proposes,
    /// pierre confirms).
    pub async fn open_with<R, S>(
        &self,
        desk: &redoubt_legal::desk::Desk<R, S>,
        authority: Authority,
        now: OffsetDateTime,
    ) where
        R: redoubt_legal::records::SubscriberRecords,
        S: redoubt_legal::store::DeskStore,
    {
        self.bootstrap(desk, now).await;
        self.change(
            desk,
            redoubt_legal::operators::Change::AddAuthority { authority },
            "olga",
            "pierre",
            now,
        )
        .await
        .unwrap();
    }

    /// `name` takes in `document`.
    pub async fn intake<R, S>(
        &self,
        desk: &redoubt_legal::desk::Desk<R, S>,
        document: &[u8],
        name: &str,
        now: OffsetDateTime,
    ) -> Result<redoubt_legal::desk::Intake, redoubt_legal::desk::DeskError>
    where
        R: redoubt_legal::records::SubscriberRecords,
        S: redoubt_legal::store::DeskStore,
    {
        desk.intake(document, &self.key(name).intake(document, now), now)
            .await
    }

    /// `name` approves the Paris court's order `order_id`.
    pub async fn approve<R, S>(
        &self,
        desk: &redoubt_legal::desk::Desk<R, S>,
        order_id: &str,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<redoubt_legal::disclosure::SignedPackage, redoubt_legal::desk::DeskError>
    where
        R: redoubt_legal::records::SubscriberRecords,
        S: redoubt_legal::store::DeskStore,
    {
        desk.approve(&self.key(name).approve("fr-tj-paris", order_id, now), now)
            .await
    }
}
