//! Every parser of the connection protocol on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc::fuzzing::wire(data));
