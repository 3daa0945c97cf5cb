//! `redoubt kt audit`: anyone, with no account, checks a relay's key
//! directory from one epoch to the newest: every epoch signed by the
//! directory key, consecutive, and each only adding to the one before
//! (akd's append-only proofs). A relay that rewrote, dropped or forked any
//! epoch fails here, at the first range that shows it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::api::Api;
use crate::error::{ClientError, Result};
use crate::kt::{verify_append_only, DirectoryPins};

/// Epochs per request (the relay serves at most 1000 at a time).
const STEP: u64 = 1000;

/// What an audit verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited {
    /// The first epoch checked.
    pub from: u64,
    /// The newest epoch checked.
    pub to: u64,
    /// Its root, standard base64.
    pub root: String,
}

fn broken(from: u64, to: u64, why: impl std::fmt::Display) -> ClientError {
    ClientError::Untrusted(format!(
        "the key directory fails its audit between epochs {from} and {to}: {why}"
    ))
}

/// Audits the directory at `server` from epoch `from` to the newest. The
/// directory key is `directory_key` when given (from somewhere other than
/// the relay), else the one the relay presents.
pub async fn audit(server: &str, directory_key: Option<&str>, from: u64) -> Result<Audited> {
    let api = Api::new(server);
    let keys = api.kt_keys().await?;
    if directory_key.is_some_and(|k| k != keys.directory_key) {
        return Err(ClientError::Untrusted(
            "the relay presents another directory key than the one given".into(),
        ));
    }
    let pins = DirectoryPins::new(keys.directory_key, keys.vrf_public_key);
    let latest = api.kt_latest().await?;
    let newest_root = pins
        .clone()
        .accept_epoch(&latest)
        .map_err(|failure| broken(latest.epoch, latest.epoch, failure))?;
    if from > latest.epoch {
        return Err(ClientError::Untrusted(format!(
            "epoch {from} is past the newest, {}",
            latest.epoch
        )));
    }
    // Walking forward, every epoch must be signed, and an epoch met twice
    // (the end of one range is the start of the next) must keep its root.
    let mut walk = pins;
    let mut a = from;
    while a < latest.epoch {
        let b = (a + STEP).min(latest.epoch);
        let answer = api.kt_audit(a, b).await?;
        let roots = walk
            .link_roots(a, b, &answer)
            .map_err(|failure| broken(a, b, failure))?;
        verify_append_only(roots, &answer.proof)
            .await
            .map_err(|e| broken(a, b, e))?;
        walk.linked(&answer);
        a = b;
    }
    // The walk must end at the newest epoch as first served.
    walk.accept_epoch(&latest)
        .map_err(|failure| broken(latest.epoch, latest.epoch, failure))?;
    Ok(Audited {
        from,
        to: latest.epoch,
        root: STANDARD.encode(newest_root),
    })
}
