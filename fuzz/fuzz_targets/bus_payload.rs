//! Fuzz target `bus_payload`: what the Redis bus reads back from Redis: channel payloads, stream entries, message states. The check is `backend::fuzzing::bus_payload`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| backend::fuzzing::bus_payload(data));
