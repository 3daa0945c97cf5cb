//! The machine's shared services (PostgreSQL, NATS) for scale-out tests.
//!
//! When `CI` is set a missing service fails the test; elsewhere the test is
//! skipped with a printed reason, so a laptop without PostgreSQL can still
//! run the rest of the suite.

use std::time::Duration;

use redoubt_server::config::PostgresConfig;

/// The PostgreSQL URL tests use: `REDOUBT_TEST_PG_URL`, or this machine's
/// trust-auth database `test`.
pub fn pg_url() -> String {
    std::env::var("REDOUBT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The NATS URL tests use: `REDOUBT_TEST_NATS_URL`, or 127.0.0.1:4222.
pub fn nats_url() -> String {
    std::env::var("REDOUBT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn unavailable(what: &str, why: &str) -> Option<std::convert::Infallible> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required when CI is set, but it is unreachable: {why}");
    }
    eprintln!("skipping: {what} is unreachable ({why}); set CI=1 to make this a failure");
    None
}

/// A fresh schema in the test database, dropped when the guard is.
pub struct PgSchema {
    /// Settings that put every table in the schema.
    pub config: PostgresConfig,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Some(schema) = &self.config.schema {
            redoubt_server::storage::postgres::drop_schema_blocking(&self.config.url, schema);
        }
    }
}

/// A schema of its own for one test, or `None` (after printing why) when
/// PostgreSQL is unreachable outside CI.
pub async fn pg_schema() -> Option<PgSchema> {
    let url = pg_url();
    let reachable = tokio::time::timeout(Duration::from_secs(5), sqlx::PgPool::connect(&url)).await;
    match reachable {
        Ok(Ok(pool)) => pool.close().await,
        Ok(Err(e)) => {
            unavailable("PostgreSQL", &e.to_string())?;
        }
        Err(_) => {
            unavailable("PostgreSQL", "connection timed out")?;
        }
    }
    let schema = format!("t_{}", uuid_like());
    Some(PgSchema {
        config: PostgresConfig {
            url,
            schema: Some(schema),
            max_connections: 8,
        },
    })
}

/// Whether NATS answers; `false` (after printing why) outside CI.
pub async fn nats_available() -> bool {
    let addr = nats_url().trim_start_matches("nats://").to_owned();
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => unavailable("NATS", &e.to_string()).is_some(),
        Err(_) => unavailable("NATS", "connection timed out").is_some(),
    }
}

fn uuid_like() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The schemathesis command-line tool (`st`): `REDOUBT_SCHEMATHESIS`, else
/// `st` on the `PATH`, else the virtual environment `.ci/run` installs it
/// into. `None` (after printing why) when it is missing outside CI.
pub fn schemathesis() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("HOME")
        .map(|home| std::path::Path::new(&home).join(".cache/redoubt-venv/bin/st"));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("st"))
            .find(|p| p.is_file())
    });
    let found = std::env::var_os("REDOUBT_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .or(on_path)
        .or(venv.filter(|p| p.is_file()));
    if found.is_none() {
        unavailable(
            "schemathesis",
            "no `st` command; `bash .ci/run` installs it, or `python3 -m pip install -r ci/requirements.txt`",
        )?;
    }
    found
}
