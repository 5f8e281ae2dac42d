#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiercache_fuzz::config::run(data));
