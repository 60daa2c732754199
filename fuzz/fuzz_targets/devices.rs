//! libFuzzer target `devices`: the body is `pinlab::fuzzing::devices` (see its module for the rules it
//! checks), the same code `tests/fuzz.rs` runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pinlab::fuzzing::devices(data));
