//! The real `redoubtd` binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `redoubtd` process. Its stderr is collected for inspection.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `binary` on `127.0.0.1:0` with `data_dir`, extra arguments and
    /// extra environment, and waits until it reports its address.
    pub fn spawn(binary: &Path, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("REDOUBTD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("redoubtd starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(addr) = text
                .lines()
                .find(|l| l.contains("redoubtd listening"))
                .and_then(|l| l.split("address=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse().ok())
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redoubtd exited early with {status}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "redoubtd did not report its address:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { child, addr, logs }
    }

    /// The path of the workspace's `redoubtd` binary, given the path of the
    /// calling test's own executable directory (`CARGO_BIN_EXE_redoubtd`).
    pub fn binary(path: &str) -> PathBuf {
        PathBuf::from(path)
    }

    /// The base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything it has written to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Kills it with SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks it to stop with SIGTERM and waits for it to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("redoubtd exits")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
