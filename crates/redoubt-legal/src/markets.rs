//! Market states: where the service operates, is leaving, or has left.
//! Rather than weaken encryption anywhere, an operator can leave a market:
//! announce the exit with an effective date and a notice, then, after a
//! grace period, purge what it holds for that market's accounts.
//!
//! This module is the policy (a JSON file in the legal directory, every
//! change also recorded in the audit log by the caller); the relay enforces
//! it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::verify::MarketPolicy;
use crate::LegalError;

/// One market's exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketExit {
    /// ISO 3166-1 alpha-2 code.
    pub jurisdiction: String,
    /// When the exit was announced.
    #[serde(with = "time::serde::rfc3339")]
    pub announced_at: OffsetDateTime,
    /// From when the service refuses the market (HTTP 451).
    #[serde(with = "time::serde::rfc3339")]
    pub effective_at: OffsetDateTime,
    /// After the effective date, how long before everything held for the
    /// market's accounts is purged.
    #[serde(with = "time::serde::rfc3339")]
    pub purge_at: OffsetDateTime,
    /// The notice users see.
    pub notice: String,
}

/// Where a market stands at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarketState {
    /// Served.
    Active,
    /// Leaving: registrations are refused, users are told.
    ExitAnnounced(MarketExit),
    /// Left: every request gets 451; purge once `purge_at` passes.
    Exited(MarketExit),
}

/// Why a market change was refused. A refused change changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    /// Not a country code the numbering plans know.
    #[error("{0:?} is not a known ISO 3166-1 alpha-2 country code")]
    UnknownCountry(String),
    /// The effective date is not in the future.
    #[error("the effective date must be in the future")]
    DateInPast,
    /// An exit is already announced or done for this market.
    #[error("an exit from {0} is already announced or complete")]
    AlreadyAnnounced(String),
    /// No exit is announced for this market.
    #[error("no exit from {0} is announced")]
    NotAnnounced(String),
    /// The exit already took effect and can no longer be cancelled.
    #[error("the exit from {0} has already taken effect")]
    AlreadyEffective(String),
    /// The notice text is empty or too long.
    #[error("the notice must be 1 to 4000 characters")]
    BadNotice,
}

/// An exit that was announced and then called off. Kept so the relay can
/// tell everyone who was told of the exit that the service stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelledExit {
    /// The exit as it was announced.
    pub exit: MarketExit,
    /// When it was called off.
    #[serde(with = "time::serde::rfc3339")]
    pub cancelled_at: OffsetDateTime,
}

/// Every market exit, past and pending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketBook {
    /// The exits.
    pub exits: Vec<MarketExit>,
    /// Exits called off before they took effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<CancelledExit>,
}

/// Checks a country code against the numbering plans' list of regions.
pub fn known_country(code: &str) -> Result<String, MarketError> {
    let upper = code.trim().to_ascii_uppercase();
    if upper.len() == 2 && upper.parse::<phonenumber::country::Id>().is_ok() {
        Ok(upper)
    } else {
        Err(MarketError::UnknownCountry(code.to_owned()))
    }
}

impl MarketBook {
    /// Reads the book; missing means every market is active.
    pub fn load(path: &Path) -> Result<Self, LegalError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| LegalError::Malformed {
                what: "the market book",
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the book atomically.
    pub fn save(&self, path: &Path) -> Result<(), LegalError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(|e| LegalError::Malformed {
                what: "the market book",
                detail: e.to_string(),
            })?,
        )?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Announces an exit.
    pub fn announce_exit(
        &mut self,
        jurisdiction: &str,
        effective_at: OffsetDateTime,
        grace: Duration,
        notice: &str,
        now: OffsetDateTime,
    ) -> Result<MarketExit, MarketError> {
        let jurisdiction = known_country(jurisdiction)?;
        if effective_at <= now {
            return Err(MarketError::DateInPast);
        }
        if notice.trim().is_empty() || notice.chars().count() > 4000 {
            return Err(MarketError::BadNotice);
        }
        if self.exits.iter().any(|e| e.jurisdiction == jurisdiction) {
            return Err(MarketError::AlreadyAnnounced(jurisdiction));
        }
        let exit = MarketExit {
            jurisdiction,
            announced_at: now,
            effective_at,
            purge_at: effective_at + grace.max(Duration::ZERO),
            notice: notice.trim().to_owned(),
        };
        self.exits.push(exit.clone());
        Ok(exit)
    }

    /// Cancels an announced exit that has not yet taken effect.
    pub fn cancel_exit(
        &mut self,
        jurisdiction: &str,
        now: OffsetDateTime,
    ) -> Result<MarketExit, MarketError> {
        let jurisdiction = known_country(jurisdiction)?;
        let i = self
            .exits
            .iter()
            .position(|e| e.jurisdiction == jurisdiction)
            .ok_or_else(|| MarketError::NotAnnounced(jurisdiction.clone()))?;
        if self.exits[i].effective_at <= now {
            return Err(MarketError::AlreadyEffective(jurisdiction));
        }
        let exit = self.exits.remove(i);
        self.cancelled.push(CancelledExit {
            exit: exit.clone(),
            cancelled_at: now,
        });
        Ok(exit)
    }

    /// A market's state at `now`.
    pub fn state(&self, jurisdiction: &str, now: OffsetDateTime) -> MarketState {
        match self.exits.iter().find(|e| e.jurisdiction == jurisdiction) {
            None => MarketState::Active,
            Some(e) if e.effective_at <= now => MarketState::Exited(e.clone()),
            Some(e) => MarketState::ExitAnnounced(e.clone()),
        }
    }

    /// The policy the legal desk applies at `now`: orders from exited
    /// markets are refused.
    pub fn policy(&self, now: OffsetDateTime) -> MarketPolicy {
        MarketPolicy {
            served: Vec::new(),
            exited: self
                .exits
                .iter()
                .filter(|e| e.effective_at <= now)
                .map(|e| e.jurisdiction.clone())
                .collect(),
        }
    }

    /// The exits as the transparency report lists them.
    pub fn report_lines(&self) -> Vec<crate::report::MarketExitLine> {
        self.exits
            .iter()
            .map(|e| crate::report::MarketExitLine {
                jurisdiction: e.jurisdiction.clone(),
                announced: e.announced_at.date().to_string(),
                effective: e.effective_at.date().to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    #[test]
    fn an_exit_is_announced_takes_effect_and_can_be_cancelled_only_before() {
        let mut book = MarketBook::default();
        let effective = datetime!(2027-01-15 0:00 UTC);
        let exit = book
            .announce_exit(
                "fr",
                effective,
                Duration::days(30),
                "We are leaving France.",
                NOW,
            )
            .unwrap();
        assert_eq!(exit.jurisdiction, "FR");
        assert_eq!(exit.purge_at, datetime!(2027-02-14 0:00 UTC));
        assert!(matches!(
            book.state("FR", NOW),
            MarketState::ExitAnnounced(_)
        ));
        assert!(matches!(
            book.state("FR", effective),
            MarketState::Exited(_)
        ));
        assert_eq!(book.state("DE", effective), MarketState::Active);
        assert!(book.policy(NOW).exited.is_empty());
        assert_eq!(book.policy(effective).exited, vec!["FR"]);
        assert_eq!(book.report_lines()[0].effective, "2027-01-15");
        assert_eq!(
            book.cancel_exit("FR", effective),
            Err(MarketError::AlreadyEffective("FR".into()))
        );
        assert!(book.cancel_exit("FR", NOW).is_ok());
        assert_eq!(
            book.cancelled.len(),
            1,
            "the cancellation is kept for the relay"
        );
        assert_eq!(book.state("FR", NOW), MarketState::Active);
        assert_eq!(book.state("FR", effective), MarketState::Active);
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let mut book = MarketBook::default();
        let later = datetime!(2027-01-15 0:00 UTC);
        assert_eq!(
            book.announce_exit("XX", later, Duration::ZERO, "n", NOW),
            Err(MarketError::UnknownCountry("XX".into()))
        );
        assert_eq!(
            book.announce_exit("France", later, Duration::ZERO, "n", NOW),
            Err(MarketError::UnknownCountry("France".into()))
        );
        assert_eq!(
            book.announce_exit("FR", NOW - Duration::days(1), Duration::ZERO, "n", NOW),
            Err(MarketError::DateInPast)
        );
        assert_eq!(
            book.announce_exit("FR", later, Duration::ZERO, "  ", NOW),
            Err(MarketError::BadNotice)
        );
        assert!(book.exits.is_empty());
        book.announce_exit("FR", later, Duration::ZERO, "n", NOW)
            .unwrap();
        assert_eq!(
            book.announce_exit("FR", later, Duration::ZERO, "n", NOW),
            Err(MarketError::AlreadyAnnounced("FR".into()))
        );
        assert_eq!(
            book.cancel_exit("DE", NOW),
            Err(MarketError::NotAnnounced("DE".into()))
        );
        assert_eq!(book.exits.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("markets.json");
        book.save(&path).unwrap();
        assert_eq!(MarketBook::load(&path).unwrap(), book);
    }
}
