//! The relay's integration tests: a real server on `127.0.0.1:0` with a real
//! SQLite file, driven over HTTP and WebSocket, plus the shared storage suite
//! (SQLite and PostgreSQL) and several nodes sharing PostgreSQL and NATS.

mod auth;
mod bad_input;
mod binary;
mod connections;
mod contract;
mod delivery;
mod keypackages;
mod kt;
mod legal;
mod logs;
mod ops;
mod registration;
mod retention;
mod scaleout;
mod storage;
mod ws_send;
