#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ckan_vault_fuzz::access_file(data));
