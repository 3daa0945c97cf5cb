//! `redoubt kt audit`: anyone, with no account, checks a relay's key
//! directory from one epoch to the newest: every epoch signed by the
//! directory key, consecutive, each only adding to the one before (akd's
//! append-only proofs), and each signing the right root of the log of epoch
//! roots (recomputed from epoch 0; with `--from`, checked by consistency
//! proofs at each range's ends). A relay that rewrote, dropped or forked
//! any epoch fails here, at the first range that shows it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::api::Api;
use crate::error::{ClientError, Result};
use crate::kt::DirectoryPins;
use redoubt_proto::kt::{epoch_leaf, SignedEpoch};
use redoubt_proto::merkle::MerkleLog;

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

/// Verifies akd's append-only proof (protobuf, base64) over `roots`,
/// consecutive epochs' roots. Devices do not run it (most of a megabyte
/// per busy epoch); auditors do.
async fn verify_append_only(roots: Vec<[u8; 32]>, proof: &str) -> std::result::Result<(), String> {
    use protobuf::Message as _;
    let bytes = STANDARD.decode(proof).map_err(|e| e.to_string())?;
    let proof = akd::proto::specs::types::AppendOnlyProof::parse_from_bytes(&bytes)
        .map_err(|e| e.to_string())?;
    let proof = akd::AppendOnlyProof::try_from(&proof).map_err(|e| format!("{e:?}"))?;
    akd::auditor::audit_verify::<akd::WhatsAppV1Configuration>(roots, proof)
        .await
        .map_err(|e| e.to_string())
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
        .check_signature(&latest)
        .map_err(|failure| broken(latest.epoch, latest.epoch, failure))?;
    if from > latest.epoch {
        return Err(ClientError::Untrusted(format!(
            "epoch {from} is past the newest, {}",
            latest.epoch
        )));
    }
    // From epoch 0 the log of epoch roots is rebuilt here and every
    // epoch's log root compared with it.
    let mut log = (from == 0).then(MerkleLog::new);
    // `root` is the epoch's root, its signature already checked.
    let check_log = |log: &mut Option<MerkleLog>, e: &SignedEpoch, root: [u8; 32]| -> Result<()> {
        let Some(log) = log else { return Ok(()) };
        if e.epoch != log.len() {
            return Ok(());
        }
        log.push(epoch_leaf(e.epoch, &root));
        match log.root(log.len()) {
            Some(r) if STANDARD.encode(r) == e.log_root => Ok(()),
            _ => Err(broken(
                e.epoch,
                e.epoch,
                "its log root is not the log of the epochs before it",
            )),
        }
    };
    if from == latest.epoch {
        check_log(&mut log, &latest, newest_root)?;
    }
    // Walking forward, every epoch must be signed, consecutive, and an
    // epoch met twice (the end of one range is the start of the next) must
    // be the same.
    let mut last: Option<SignedEpoch> = None;
    let mut a = from;
    while a < latest.epoch {
        let b = (a + STEP).min(latest.epoch);
        let answer = api.kt_audit(a, b).await?;
        if !answer.epochs.iter().map(|e| e.epoch).eq(a..=b) {
            return Err(broken(a, b, "the relay did not serve every epoch in order"));
        }
        if last.as_ref().is_some_and(|l| *l != answer.epochs[0]) {
            return Err(broken(a, b, "an epoch changed between two answers"));
        }
        let mut roots = Vec::with_capacity(answer.epochs.len());
        for e in &answer.epochs {
            let root = pins
                .check_signature(e)
                .map_err(|failure| broken(a, b, failure))?;
            check_log(&mut log, e, root)?;
            roots.push(root);
        }
        verify_append_only(roots, &answer.proof)
            .await
            .map_err(|e| broken(a, b, e))?;
        let (first, end) = (&answer.epochs[0], &answer.epochs[answer.epochs.len() - 1]);
        if log.is_none() {
            let proof = api
                .kt_consistency(a, b)
                .await?
                .ok_or_else(|| broken(a, b, "the relay serves no consistency proof"))?;
            pins.check_extends(Some(first), end, &proof)
                .map_err(|failure| broken(a, b, failure))?;
        }
        last = Some(end.clone());
        a = b;
    }
    // The walk must end at the newest epoch as first served.
    if last.as_ref().is_some_and(|l| *l != latest) {
        return Err(broken(
            latest.epoch,
            latest.epoch,
            "the newest epoch changed during the audit",
        ));
    }
    Ok(Audited {
        from,
        to: latest.epoch,
        root: STANDARD.encode(newest_root),
    })
}
