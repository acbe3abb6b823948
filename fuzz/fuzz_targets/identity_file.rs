#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kvs_fuzz::run(kvs_fuzz::checks::identity_file, data);
});
