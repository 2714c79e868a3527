//! Fuzz target `client_frame`: a client's WebSocket text frame, decoded and validated as the session does. The check is `backend::fuzzing::client_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| backend::fuzzing::client_frame(data));
