#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ckan_vault_fuzz::ckan_ini(data));
