//! How verification codes reach phones. The relay only needs "deliver this
//! code to this number"; operators plug in their SMS gateway through the
//! [`CodeSender`] trait or the `command` sender.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redoubt_proto::PhoneNumber;

use crate::config::CodeSenderConfig;

/// The `tracing` target of the development sender's marked line. It is the
/// only log line that may ever contain a phone number or a code.
pub const DEV_CODE_TARGET: &str = "redoubt_dev_code_sender";

/// The marker that starts the development sender's line.
pub const DEV_CODE_MARKER: &str = "DEV CODE SENDER";

/// Why a code could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum CodeSendError {
    /// The sender program could not be started.
    #[error("code sender program could not be started: {0}")]
    Spawn(std::io::Error),
    /// The sender program failed.
    #[error("code sender program exited with {0}")]
    Failed(std::process::ExitStatus),
    /// The sender program took too long.
    #[error("code sender program timed out")]
    Timeout,
}

/// Delivers verification codes.
#[async_trait]
pub trait CodeSender: Send + Sync + 'static {
    /// Sends `code` to `phone`. Implementations must not log either value.
    async fn send(&self, phone: &PhoneNumber, code: &str) -> Result<(), CodeSendError>;
}

/// Development sender: writes the code to the log on one marked line.
#[derive(Debug, Default)]
pub struct LogCodeSender;

#[async_trait]
impl CodeSender for LogCodeSender {
    async fn send(&self, phone: &PhoneNumber, code: &str) -> Result<(), CodeSendError> {
        // This line deliberately carries the number and the code: it stands
        // in for an SMS. It has its own target so log pipelines can drop it,
        // and `redoubtd` warns at start-up while this sender is configured.
        tracing::warn!(
            target: DEV_CODE_TARGET,
            "{DEV_CODE_MARKER} (development only): phone={} code={code}",
            phone.e164()
        );
        Ok(())
    }
}

/// Runs an operator-supplied program per code, passing the number and code
/// in the environment (never on the command line, where `ps` would show them).
#[derive(Debug)]
pub struct CommandCodeSender {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

#[async_trait]
impl CodeSender for CommandCodeSender {
    async fn send(&self, phone: &PhoneNumber, code: &str) -> Result<(), CodeSendError> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env("REDOUBT_PHONE", phone.e164())
            .env("REDOUBT_CODE", code)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(CodeSendError::Spawn)?;
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Err(_) => Err(CodeSendError::Timeout),
            Ok(Err(e)) => Err(CodeSendError::Spawn(e)),
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(CodeSendError::Failed(status)),
        }
    }
}

/// Builds the sender a configuration names.
pub fn from_config(config: &CodeSenderConfig) -> Arc<dyn CodeSender> {
    match config {
        CodeSenderConfig::Log => Arc::new(LogCodeSender),
        CodeSenderConfig::Command {
            program,
            args,
            timeout,
        } => Arc::new(CommandCodeSender {
            program: program.clone(),
            args: args.clone(),
            timeout: *timeout,
        }),
    }
}
