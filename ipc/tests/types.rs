//! Message types are compared field by field at connect, across processes:
//! the server is `ipc-peer serve --pair`, whose `Pair` is
//! `{ a: u64, b: u32, c: u32 }` declared in that binary.

mod common;

use common::{name, spawn_server};
use ipc::{Client, ClientConfig, Error};

mod elsewhere {
    /// `ipc-peer`'s `Pair` field for field, under other names, in another
    /// crate and module.
    #[derive(
        Clone,
        Copy,
        Debug,
        PartialEq,
        Eq,
        ipc::zerocopy::FromBytes,
        ipc::zerocopy::IntoBytes,
        ipc::zerocopy::Immutable,
        ipc::Message,
    )]
    #[zerocopy(crate = "ipc::zerocopy")]
    #[repr(C)]
    pub struct Twin {
        pub key: u64,
        pub len: u32,
        pub flags: u32,
    }

    /// The same fields as `Pair`, `a` moved last: same size, same alignment.
    #[derive(
        Clone,
        Copy,
        Debug,
        ipc::zerocopy::FromBytes,
        ipc::zerocopy::IntoBytes,
        ipc::zerocopy::Immutable,
        ipc::Message,
    )]
    #[zerocopy(crate = "ipc::zerocopy")]
    #[repr(C)]
    pub struct Pair {
        pub b: u32,
        pub c: u32,
        pub a: u64,
    }

    /// Same offsets and widths as `Pair`, but `c` is a float.
    #[derive(
        Clone,
        Copy,
        Debug,
        ipc::zerocopy::FromBytes,
        ipc::zerocopy::IntoBytes,
        ipc::zerocopy::Immutable,
        ipc::Message,
    )]
    #[zerocopy(crate = "ipc::zerocopy")]
    #[repr(C)]
    pub struct Floaty {
        pub a: u64,
        pub b: u32,
        pub c: f32,
    }
}

use elsewhere::{Floaty, Pair, Twin};

#[test]
fn an_identical_struct_declared_elsewhere_connects_and_gets_right_answers() {
    let name = name("twin");
    let _server = spawn_server(&["serve", &name, "--pair"]);
    let mut c = Client::<Twin, Twin>::connect(&name, ClientConfig::new()).unwrap();
    for i in 0..100u32 {
        let r = c
            .call(&Twin {
                key: u64::from(i) << 40,
                len: i,
                flags: 7,
            })
            .unwrap();
        let want = Twin {
            key: (u64::from(i) << 40) + 1,
            len: i * 2,
            flags: 6,
        };
        assert_eq!(r, want);
    }
}

#[test]
fn a_struct_with_reordered_fields_is_refused_naming_both_types() {
    let name = name("reordered");
    let _server = spawn_server(&["serve", &name, "--pair"]);
    let err = Client::<Pair, Twin>::connect(&name, ClientConfig::new())
        .err()
        .expect("a reordered struct connected");
    let Error::Mismatch {
        what,
        found,
        expected,
        ..
    } = &err
    else {
        panic!("expected a mismatch, got {err}");
    };
    assert_eq!(*what, "request type");
    // Both type names and both layouts, not raw hashes.
    assert!(found.contains("ipc_peer::Pair"), "{found}");
    assert!(
        found.contains("{ 0: u64, 8: u32, 12: u32 }"),
        "server layout: {found}"
    );
    assert!(expected.contains("types::elsewhere::Pair"), "{expected}");
    assert!(
        expected.contains("{ 0: u32, 4: u32, 8: u64 }"),
        "client layout: {expected}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&name) && text.contains("request type"),
        "{text}"
    );
}

#[test]
fn a_field_of_another_kind_at_the_same_offset_is_refused() {
    let name = name("floaty");
    let _server = spawn_server(&["serve", &name, "--pair"]);
    match Client::<Twin, Floaty>::connect(&name, ClientConfig::new()) {
        Err(Error::Mismatch {
            what: "response type",
            expected,
            ..
        }) => assert!(expected.contains("12: f32"), "{expected}"),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn mismatched_sizes_and_primitives_are_refused() {
    let name = name("types");
    let _server = spawn_server(&["serve", &name]);
    let what = |e: Option<Error>| match e {
        Some(Error::Mismatch { what, .. }) => what,
        other => panic!("expected a mismatch, got {other:?}"),
    };
    type Msg = [u64; 4];
    let cfg = ClientConfig::new;
    assert_eq!(
        what(Client::<[u64; 2], Msg>::connect(&name, cfg()).err()),
        "request type"
    );
    assert_eq!(
        what(Client::<[u32; 8], Msg>::connect(&name, cfg()).err()),
        "request type"
    );
    assert_eq!(
        what(Client::<[i64; 4], Msg>::connect(&name, cfg()).err()),
        "request type"
    );
    assert_eq!(
        what(Client::<Msg, [f64; 4]>::connect(&name, cfg()).err()),
        "response type"
    );
    let msg = Client::<Msg, u8>::connect(&name, cfg())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("response type") && msg.contains("[u64; 4]") && msg.contains(&name),
        "{msg}"
    );
}
