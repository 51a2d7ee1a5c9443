//! The documented way to declare a message compiles in a crate that depends
//! on `ipc` alone: this crate has no `zerocopy` dependency, so a derive that
//! named `::zerocopy` would fail here with E0433.

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    ipc::zerocopy::FromBytes,
    ipc::zerocopy::IntoBytes,
    ipc::zerocopy::Immutable,
    ipc::Message,
)]
#[zerocopy(crate = "ipc::zerocopy")]
#[repr(C)]
struct Put {
    key: u64,
    len: u32,
    flags: u32,
    value: [u8; 16],
}

#[derive(
    Clone,
    Copy,
    ipc::zerocopy::FromBytes,
    ipc::zerocopy::IntoBytes,
    ipc::zerocopy::Immutable,
    ipc::zerocopy::Unaligned,
    ipc::Message,
)]
#[zerocopy(crate = "ipc::zerocopy")]
#[repr(C)]
struct Wrapped<T>(T, [u8; 2]);

#[test]
fn derived_layout_lists_every_field_by_offset() {
    use ipc::Message;
    assert_eq!(
        Put::LAYOUT.canonical(),
        "struct(32, 8) { 0: u64, 8: u32, 12: u32, 16: [u8; 16] }"
    );
    assert_eq!(Put::LAYOUT.name, "Put");
    assert_eq!(
        Wrapped::<ipc::zerocopy::big_endian::U64>::LAYOUT.canonical(),
        "struct(10, 1) { 0: u64be, 8: [u8; 2] }"
    );
}
