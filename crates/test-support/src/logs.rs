//! In-process log capture. The first call installs a global subscriber that
//! formats events exactly as `redoubtd` does and appends them to a buffer.
//! Set `REDOUBT_TEST_LOG=1` to also see them on stderr.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use redoubt_server::config::LogFormat;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        if std::env::var_os("REDOUBT_TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the capturing subscriber (once per process). Everything from
/// `trace` up is captured for Redoubt's crates and `debug` up for the
/// libraries, so leak scans see more than production would print.
pub fn init() {
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let filter = EnvFilter::new(
            "debug,redoubt_server=trace,redoubt_legal=trace,hyper=info,hyper_util=info,h2=info",
        );
        let layer = redoubt_server::telemetry::fmt_layer(LogFormat::Text, Capture(buffer.clone()))
            .with_filter(filter);
        let _ = tracing_subscriber::registry().with(layer).try_init();
        buffer
    });
}

/// Everything captured so far.
pub fn captured() -> String {
    init();
    let buffer = BUFFER.get().expect("initialised above");
    String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// The most recent code the development code sender logged for `e164`.
pub fn dev_code_for(logs: &str, e164: &str) -> Option<String> {
    let needle = format!("phone={e164} code=");
    logs.lines()
        .rev()
        .filter(|l| l.contains(redoubt_server::code_sender::DEV_CODE_MARKER))
        .filter_map(|l| l.split(&needle).nth(1))
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .next()
}

/// The captured lines that are not the development code sender's, which are
/// the lines that must never contain user data.
pub fn lines_outside_dev_sender(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| !l.contains(redoubt_server::code_sender::DEV_CODE_MARKER))
        .collect()
}
