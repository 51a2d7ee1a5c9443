//! Sizes that cannot be honoured: the `try_` constructors refuse them with a
//! [`CapacityError`], the others panic with a message that names the size
//! and the reason, in debug and release builds alike (run this file with
//! `cargo test -p inproc --release --test capacity` too: wrapping
//! arithmetic once made release builds return a queue that was always full,
//! or abort in a destructor).

use std::panic::catch_unwind;

use inproc::flux::{self, FluxConfig};
use inproc::rpc::{self, MAX_IN_FLIGHT};
use inproc::{CapacityError, FastForward, Lamport, Onesided, Sender, Transport};

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let payload = catch_unwind(f).expect_err("expected a panic");
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map_or_else(|| "<not a string>".into(), |s| (*s).to_string()),
    }
}

fn a_capacity_no_power_of_two_can_hold_is_refused<T: Transport>() {
    for cap in [usize::MAX, (1 << (usize::BITS - 1)) + 1] {
        let err = T::try_channel::<u64>(cap).err();
        assert!(
            matches!(err, Some(CapacityError::TooLarge { requested, .. }) if requested == cap),
            "{}: capacity {cap}: {err:?}",
            T::NAME
        );
    }
}

/// `max` is the exact boundary: one more is too large, `max` itself is only
/// more than this machine's memory.
fn a_ring_of_more_bytes_than_isize_is_refused<T: Transport>() {
    let Some(CapacityError::TooLarge { max, .. }) = T::try_channel::<u64>(1 << 62).err() else {
        panic!("{}: capacity 2^62 of u64 accepted", T::NAME);
    };
    assert!(max.is_power_of_two() && max < 1 << 62, "max {max}");
    assert_eq!(
        T::try_channel::<u64>(max + 1).err(),
        Some(CapacityError::TooLarge {
            requested: max + 1,
            max
        })
    );
    assert!(matches!(
        T::try_channel::<u64>(max).err(),
        Some(CapacityError::OutOfMemory { requested, .. }) if requested == max
    ));
}

/// 2^55 slots of at least 8 bytes is 2^58 bytes or more: beyond any
/// address space a process gets (at most 2^57 bytes with 5-level paging).
fn memory_the_allocator_refuses_is_an_error<T: Transport>() {
    let err = T::try_channel::<u64>(1 << 55).err();
    assert!(
        matches!(err, Some(CapacityError::OutOfMemory { requested, bytes })
            if requested == 1 << 55 && bytes >= 1 << 58),
        "{}: {err:?}",
        T::NAME
    );
}

fn a_possible_capacity_is_still_rounded_up<T: Transport>() {
    let Ok((tx, _rx)) = T::try_channel::<u64>(5) else {
        panic!("{}: capacity 5 refused", T::NAME);
    };
    assert_eq!(tx.capacity(), 8);
}

fn channel_panics_naming_transport_capacity_and_reason<T: Transport>() {
    let msg = panic_message(|| {
        T::channel::<u64>(usize::MAX);
    });
    let expected = format!(
        "{}::channel({}): capacity {} is above the largest possible",
        T::NAME,
        usize::MAX,
        usize::MAX
    );
    assert!(msg.starts_with(&expected), "{msg:?}");
}

fn flux_and_rpc_refuse_impossible_sizes<T: Transport>() {
    let huge_queue = FluxConfig {
        capacity: usize::MAX,
        max_in_flight: 4,
    };
    assert!(matches!(
        flux::try_mesh::<T, u64, u64, ()>(2, huge_queue).err(),
        Some(CapacityError::TooLarge {
            requested: usize::MAX,
            ..
        })
    ));
    let too_many_calls = FluxConfig {
        capacity: 4,
        max_in_flight: MAX_IN_FLIGHT + 1,
    };
    assert_eq!(
        flux::try_mesh::<T, u64, u64, ()>(2, too_many_calls).err(),
        Some(CapacityError::TooManyInFlight {
            requested: MAX_IN_FLIGHT + 1,
            max: MAX_IN_FLIGHT
        })
    );
    assert!(rpc::try_pair::<T, u64, u64, ()>(4, usize::MAX).is_err());
    assert!(rpc::try_pair::<T, u64, u64, ()>(usize::MAX, 4).is_err());
    assert!(flux::try_mesh::<T, u64, u64, ()>(3, FluxConfig::default()).is_ok());

    let msg = panic_message(|| {
        flux::mesh::<T, u64, u64, ()>(2, huge_queue);
    });
    assert!(
        msg.starts_with(&format!(
            "flux::mesh(2, capacity {}, max_in_flight 4) over {}: capacity",
            usize::MAX,
            T::NAME
        )),
        "{msg:?}"
    );
    let msg = panic_message(|| {
        rpc::pair::<T, u64, u64, ()>(4, usize::MAX);
    });
    assert!(
        msg.starts_with(&format!("rpc::pair(4, {}) over {}:", usize::MAX, T::NAME))
            && msg.contains("calls in flight is above the limit"),
        "{msg:?}"
    );
}

/// 2^40 nodes would keep 2^80 peer-table entries: refused for its node
/// count before anything is allocated, whatever the queues ask for (it
/// once aborted the process, failing to allocate the nodes).
fn an_absurd_node_count_is_refused_before_allocating<T: Transport>() {
    let n = 1usize << 40;
    let huge_queue = FluxConfig {
        capacity: usize::MAX,
        max_in_flight: 4,
    };
    for cfg in [FluxConfig::default(), huge_queue] {
        let err = flux::try_mesh::<T, u64, u64, ()>(n, cfg).err();
        let Some(CapacityError::TooManyNodes { requested, max }) = err else {
            panic!("{}: {n} nodes: {err:?}", T::NAME);
        };
        assert_eq!(requested, n);
        // Far beyond any thread count, far below 2^40.
        assert!((1 << 20..n).contains(&max), "max {max}");
        assert_eq!(
            err.unwrap().to_string(),
            format!(
                "a Flux mesh of {n} nodes is above the largest possible for these types ({max})"
            )
        );
    }
    let msg = panic_message(|| {
        flux::mesh::<T, u64, u64, ()>(n, FluxConfig::default());
    });
    assert!(
        msg.starts_with(&format!(
            "flux::mesh({n}, capacity 256, max_in_flight 64) over {}: a Flux mesh of {n} nodes is above the largest possible",
            T::NAME
        )),
        "{msg:?}"
    );
}

/// A mesh whose queue pairs need more memory than the machine has is
/// refused before anything is allocated, naming the bytes (a 3000-node
/// mesh of the default configuration was killed by the kernel on a 24 GiB
/// machine, having allocated its pairs one by one; `TooManyNodes` only
/// looks at the address space).
#[cfg(target_os = "linux")]
fn a_mesh_larger_than_memory_is_refused<T: Transport>() {
    // 2^40 queue pairs: more bytes than any machine has.
    let n = 1 << 20;
    let err = flux::try_mesh::<T, u64, u64, ()>(n, FluxConfig::default()).err();
    let Some(CapacityError::MeshTooLarge {
        nodes,
        bytes,
        memory,
    }) = err
    else {
        panic!("{}: {n} nodes: {err:?}", T::NAME);
    };
    assert_eq!(nodes, n);
    assert!(bytes as u64 > memory, "{bytes} {memory}");
    assert!(
        err.unwrap()
            .to_string()
            .contains("more than this machine's"),
        "{}",
        err.unwrap()
    );
    // A small mesh is still made.
    assert_eq!(
        flux::try_mesh::<T, u64, u64, ()>(8, FluxConfig::default())
            .unwrap()
            .len(),
        8
    );
}

/// `max` is the exact boundary, checked before the first allocation.
fn one_node_more_than_max_is_refused<T: Transport>() {
    let Some(CapacityError::TooManyNodes { max, .. }) =
        flux::try_mesh::<T, u64, u64, ()>(usize::MAX, FluxConfig::default()).err()
    else {
        panic!("{}: usize::MAX nodes accepted", T::NAME);
    };
    assert_eq!(
        flux::try_mesh::<T, u64, u64, ()>(max + 1, FluxConfig::default()).err(),
        Some(CapacityError::TooManyNodes {
            requested: max + 1,
            max
        })
    );
}

macro_rules! capacity_tests {
    ($($m:ident: $t:ty),*) => {$(
        mod $m {
            use super::*;
            #[test] fn a_capacity_no_power_of_two_can_hold_is_refused() { super::a_capacity_no_power_of_two_can_hold_is_refused::<$t>() }
            #[test] fn a_ring_of_more_bytes_than_isize_is_refused() { super::a_ring_of_more_bytes_than_isize_is_refused::<$t>() }
            #[test] fn memory_the_allocator_refuses_is_an_error() { super::memory_the_allocator_refuses_is_an_error::<$t>() }
            #[test] fn a_possible_capacity_is_still_rounded_up() { super::a_possible_capacity_is_still_rounded_up::<$t>() }
            #[test] fn channel_panics_naming_transport_capacity_and_reason() { super::channel_panics_naming_transport_capacity_and_reason::<$t>() }
            #[test] fn flux_and_rpc_refuse_impossible_sizes() { super::flux_and_rpc_refuse_impossible_sizes::<$t>() }
            #[test] fn an_absurd_node_count_is_refused_before_allocating() { super::an_absurd_node_count_is_refused_before_allocating::<$t>() }
            #[test] fn one_node_more_than_max_is_refused() { super::one_node_more_than_max_is_refused::<$t>() }
            #[cfg(target_os = "linux")]
            #[test] fn a_mesh_larger_than_memory_is_refused() { super::a_mesh_larger_than_memory_is_refused::<$t>() }
        }
    )*};
}

capacity_tests!(fastforward: FastForward, lamport: Lamport, onesided: Onesided);
