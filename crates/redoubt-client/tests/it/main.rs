//! Client integration tests: real relay on `127.0.0.1:0`, real client
//! profiles in temporary directories, real OpenMLS.

mod chats;
mod cli;
mod groups;
mod hostile;
mod kt;
mod markets;
mod privacy;
mod profile;
mod rejoin;
mod scaleout;
mod support;
mod transcript;
mod tui;
