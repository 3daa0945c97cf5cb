//! Fan-out between nodes over NATS.
//!
//! Every node publishes small events on `<prefix>.events` and subscribes to
//! it: "envelope E was queued for devices D…" (wake), "device D was
//! revoked", "device D connected at node N" (so an older session of D on
//! another node closes). Events carry device and envelope ids only: never
//! ciphertext, never a phone number. They are hints: the mailbox in the
//! shared database is the truth, a session reads it on every wake-up and on
//! every ping, so a lost event costs latency, never a message.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use redoubt_proto::{DeviceId, EnvelopeId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ServerError;
use crate::sessions::{CloseReason, Fanout, Sessions};

/// One event between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Event {
    /// New envelope for these devices.
    Wake {
        /// The envelope.
        e: EnvelopeId,
        /// Its recipients.
        d: Vec<DeviceId>,
    },
    /// The device was revoked.
    Revoked {
        /// The device.
        d: DeviceId,
    },
    /// The device opened a session on node `n`.
    Attached {
        /// The device.
        d: DeviceId,
        /// The node.
        n: uuid::Uuid,
    },
}

/// Fan-out over NATS, also waking this node's own sessions directly.
pub struct NatsFanout {
    client: async_nats::Client,
    subject: String,
    node: uuid::Uuid,
    sessions: Arc<Sessions>,
}

impl NatsFanout {
    /// Connects, subscribes, and starts the task that applies other nodes'
    /// events to this node's sessions (tracked by `tasks`, stopped by
    /// `shutdown`).
    pub async fn connect(
        url: &str,
        prefix: &str,
        sessions: Arc<Sessions>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, ServerError> {
        let client = async_nats::ConnectOptions::new()
            .name("redoubtd")
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| {
                ServerError::ConfigInvalid(format!("fanout.url: cannot reach NATS: {e}"))
            })?;
        let subject = format!("{prefix}.events");
        let mut subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| ServerError::ConfigInvalid(format!("fanout: cannot subscribe: {e}")))?;
        // A node must be subscribed before it serves, or it could miss the
        // wake-ups for sessions it accepts; flush makes the server confirm.
        client
            .flush()
            .await
            .map_err(|e| ServerError::ConfigInvalid(format!("fanout: NATS did not answer: {e}")))?;
        let fanout = Arc::new(Self {
            client,
            subject,
            node: uuid::Uuid::new_v4(),
            sessions,
        });
        let me = fanout.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = subscriber.next() => {
                        let Some(message) = message else { break };
                        match serde_json::from_slice::<Event>(&message.payload) {
                            Ok(event) => me.apply(event),
                            Err(_) => tracing::warn!("ignored a malformed fan-out event"),
                        }
                    }
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        tracing::info!(node = %fanout.node, "fan-out over NATS ready");
        Ok(fanout)
    }

    fn apply(&self, event: Event) {
        match event {
            Event::Wake { d, .. } => {
                for device in &d {
                    self.sessions.wake(device);
                }
            }
            Event::Revoked { d } => self.sessions.close(&d, CloseReason::Revoked),
            Event::Attached { d, n } if n != self.node => {
                self.sessions.close(&d, CloseReason::Replaced)
            }
            Event::Attached { .. } => {}
        }
    }

    async fn publish(&self, event: &Event) {
        let Ok(bytes) = serde_json::to_vec(event) else {
            return;
        };
        if let Err(e) = self
            .client
            .publish(self.subject.clone(), bytes.into())
            .await
        {
            // Sessions re-read their mailbox on every ping, so this costs
            // latency only.
            tracing::warn!(error = %e, "fan-out publish failed");
        }
    }
}

#[async_trait]
impl Fanout for NatsFanout {
    async fn wake(&self, envelope: EnvelopeId, devices: &[DeviceId]) {
        // Own sessions at once; others through NATS (this node also gets
        // its own event back, and a second wake-up is harmless).
        for d in devices {
            self.sessions.wake(d);
        }
        self.publish(&Event::Wake {
            e: envelope,
            d: devices.to_vec(),
        })
        .await;
    }

    async fn revoked(&self, device: DeviceId) {
        self.sessions.close(&device, CloseReason::Revoked);
        self.publish(&Event::Revoked { d: device }).await;
    }

    fn may_lose_wakeups(&self) -> bool {
        true
    }

    async fn attached(&self, device: DeviceId) {
        self.publish(&Event::Attached {
            d: device,
            n: self.node,
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_ids_only() {
        let e = Event::Wake {
            e: EnvelopeId::random(),
            d: vec![DeviceId::random()],
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.starts_with(r#"{"t":"wake","e":""#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
}
