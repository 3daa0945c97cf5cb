//! The operator's IP-to-country table (CSV), and lookups in whatever it
//! parses to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_legal::jurisdiction::IpTable;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(table) = IpTable::parse(text) {
            for ip in [
                "0.0.0.0",
                "192.0.2.1",
                "255.255.255.255",
                "::",
                "2001:db8::1",
                "::ffff:10.0.0.1",
            ] {
                let _ = table.country(ip.parse().unwrap());
            }
        }
    }
});
