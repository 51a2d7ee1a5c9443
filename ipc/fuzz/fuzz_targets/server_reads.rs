//! A real server, a correct client and a hostile one whose hello, region
//! words and connection bytes come from the input (`ipc::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc::fuzzing::server_reads(data));
