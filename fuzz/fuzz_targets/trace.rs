//! libFuzzer target `trace`: the body is `pinlab::fuzzing::trace` (see its module for the rules
//! it checks), the same code `tests/fuzz.rs` runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pinlab::fuzzing::trace(data));
