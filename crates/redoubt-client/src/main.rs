//! `redoubt`: the Redoubt command-line client.

fn main() {}
