//! Fuzz target `api_body`: the HTTP API's request bodies and queries, extracted as its handlers do. The check is `backend::fuzzing::api_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| backend::fuzzing::api_body(data));
