//! Fuzz target `jwt`: a WebSocket upgrade's token, checked by the JWT verifier. The check is `backend::fuzzing::jwt`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| backend::fuzzing::jwt(data));
