//! Log output. The same formatting serves the binary (to stderr) and the
//! tests (to a buffer they scan for leaked user data).

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

/// Installs the global subscriber for the `redoubtd` binary.
pub fn init(config: &LogConfig) {
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(config.format, std::io::stderr).with_filter(filter(config)))
        .try_init();
}
