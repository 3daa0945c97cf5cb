//! What a run does: how many devices, who sends to whom, how fast, and the
//! named scenarios that `BENCHMARKS.md` reports.

use std::time::Duration;

use serde::Serialize;

/// Who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Pattern {
    /// Devices in pairs, each sending to its partner.
    OneToOne,
    /// Groups of `size` devices; a message goes to every other member (one
    /// upload, fan-out on the server).
    Group {
        /// Members per group.
        size: usize,
    },
}

/// How simulated devices send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Binary frames on the open delivery WebSocket (`redoubt.bin.1`), as
    /// the CLI and TUI send.
    Websocket,
    /// One `POST /v1/messages` per message, with a JSON body, and JSON
    /// frames on the socket: the path of simple clients.
    Http,
}

/// A workload.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// How devices send (and which frames their sockets use).
    pub transport: Transport,
    /// Simulated devices.
    pub devices: usize,
    /// Who sends to whom.
    pub pattern: Pattern,
    /// Devices that send (the first of each pair or group member list);
    /// `None` means every device.
    pub senders: Option<usize>,
    /// Payload bytes per message.
    pub message_size: usize,
    /// Total messages per second across senders; `None` is a closed loop in
    /// which each sender keeps `window` messages undelivered at most.
    pub rate: Option<f64>,
    /// Closed loop: messages in flight per sender.
    pub window: usize,
    /// How long senders send.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Stop after this many messages instead (whichever comes first).
    pub messages: Option<u64>,
    /// Fraction of recipient devices kept offline while senders send; they
    /// connect afterwards and drain.
    pub offline: f64,
    /// Only hold connections for `duration` (memory per connection).
    pub idle: bool,
    /// Queue this many envelopes for one offline device, then time its
    /// drain (the offline backlog scenario).
    pub backlog: Option<u64>,
    /// Loopback source addresses to spread connections over
    /// (127.0.0.1 ..= 127.0.0.N), to avoid running out of ports.
    pub source_addresses: u8,
    /// Concurrent registrations.
    pub register_concurrency: usize,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            transport: Transport::Websocket,
            devices: 100,
            pattern: Pattern::OneToOne,
            senders: None,
            message_size: 256,
            rate: None,
            window: 1,
            duration: Duration::from_secs(20),
            messages: None,
            offline: 0.0,
            idle: false,
            backlog: None,
            source_addresses: 50,
            register_concurrency: 16,
        }
    }
}

/// The scenarios of `BENCHMARKS.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 50 pairs, closed loop, 256-byte messages.
    OneToOne,
    /// One group of 100; 10 members send, each message to 99 devices.
    Group100,
    /// 10,000 idle connections held (memory per connection).
    Idle10k,
    /// 100,000 envelopes queued for one offline device, then drained.
    Backlog100k,
}

impl Scenario {
    /// The scenario's workload.
    pub fn workload(self) -> Workload {
        let base = Workload::default();
        match self {
            Self::OneToOne => base,
            Self::Group100 => Workload {
                devices: 100,
                pattern: Pattern::Group { size: 100 },
                senders: Some(10),
                ..base
            },
            Self::Idle10k => Workload {
                devices: 10_000,
                idle: true,
                duration: Duration::from_secs(10),
                ..base
            },
            Self::Backlog100k => Workload {
                devices: 2,
                backlog: Some(100_000),
                ..base
            },
        }
    }
}

/// The recipients of device `i`'s messages under `pattern`.
pub fn recipients_of(i: usize, devices: usize, pattern: Pattern) -> Vec<usize> {
    match pattern {
        Pattern::OneToOne => {
            let peer = i ^ 1;
            if peer < devices {
                vec![peer]
            } else {
                Vec::new()
            }
        }
        Pattern::Group { size } => {
            let size = size.max(2);
            let start = i / size * size;
            (start..(start + size).min(devices))
                .filter(|&j| j != i)
                .collect()
        }
    }
}

/// The devices that send: in each pair or group, members in order, up to
/// `senders` overall.
pub fn senders(w: &Workload) -> Vec<usize> {
    let all: Vec<usize> = match w.pattern {
        Pattern::OneToOne => (0..w.devices).collect(),
        Pattern::Group { size } => {
            let size = size.max(2);
            // Spread senders over groups: first member of every group, then
            // the second, and so on.
            let groups = w.devices.div_ceil(size);
            (0..size)
                .flat_map(|m| (0..groups).map(move |g| g * size + m))
                .filter(|&i| i < w.devices)
                .collect()
        }
    };
    let n = w.senders.unwrap_or(all.len()).min(all.len());
    all.into_iter()
        .filter(|&i| !recipients_of(i, w.devices, w.pattern).is_empty())
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_groups_address_the_right_devices() {
        assert_eq!(recipients_of(0, 4, Pattern::OneToOne), vec![1]);
        assert_eq!(recipients_of(3, 4, Pattern::OneToOne), vec![2]);
        assert!(recipients_of(4, 5, Pattern::OneToOne).is_empty());
        assert_eq!(recipients_of(4, 7, Pattern::Group { size: 3 }), vec![3, 5]);
        assert_eq!(
            recipients_of(6, 7, Pattern::Group { size: 3 }),
            Vec::<usize>::new()
        );
        let w = Workload {
            devices: 9,
            pattern: Pattern::Group { size: 3 },
            senders: Some(4),
            ..Workload::default()
        };
        assert_eq!(senders(&w), vec![0, 3, 6, 1]);
    }
}
