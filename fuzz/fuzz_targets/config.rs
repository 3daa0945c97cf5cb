//! The relay's configuration file: TOML parsing and every rule `validate`
//! checks. Whatever it says, the answer is a config or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(config) = redoubt_server::Config::from_toml(text) {
            // A valid config writes out and reads back as itself.
            let again = redoubt_server::Config::from_toml(&config.to_toml())
                .expect("a valid config's own TOML is valid");
            assert_eq!(again, config);
        }
    }
});
