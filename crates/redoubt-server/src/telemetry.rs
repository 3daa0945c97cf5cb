//! Log output. The same formatting serves the binary (to stderr) and the
//! tests (to a buffer they scan for leaked user data).

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// A formatting layer writing to `writer` in the configured format.
pub fn fmt_layer<W>(format: LogFormat, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .with_target(true)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_target(true)
            .boxed(),
    }
}

/// The filter: `RUST_LOG` if set, else the configured one.
pub fn filter(config: &LogConfig) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Libraries that log the bytes they carry below `info`: tungstenite logs
/// whole WebSocket frames (ciphertext, and the tokens in their headers) at
/// `trace`, and the HTTP stacks log headers and bodies at `trace`.
/// Invariant 3 holds whatever `RUST_LOG` says, so their events below `info`
/// are dropped by a second filter that `RUST_LOG` cannot loosen (issue 16).
const CHATTY_LIBRARIES: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
];

/// The ceiling of [`CHATTY_LIBRARIES`]: everything else passes, to be
/// judged by [`filter`].
pub fn ceiling() -> Targets {
    CHATTY_LIBRARIES
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, lib| {
            t.with_target(*lib, LevelFilter::INFO)
        })
}

/// Installs the global subscriber for the `redoubtd` binary.
pub fn init(config: &LogConfig) {
    let _ = tracing_subscriber::registry()
        .with(
            fmt_layer(config.format, std::io::stderr)
                .with_filter(ceiling())
                .with_filter(filter(config)),
        )
        .try_init();
}
