//! Fuzzes the config loader that `gatehouse check` and `gatehouse run` use on
//! a file's bytes: no input may panic; a file that is not UTF-8 is refused
//! before parsing (as `config::load` does); every error names a line of the
//! text (1 ..= lines + 1) and says something; `${VAR}` substitution sees a
//! fixed environment.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "FUZZ_SET").then(|| "127.0.0.1:1".to_owned());
    if let Err(errors) = gatehouse::config::parse("fuzz.toml", text, &env) {
        assert!(!errors.0.is_empty());
        let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
        for e in &errors.0 {
            assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
            assert!(!e.message.is_empty());
        }
    }
});
