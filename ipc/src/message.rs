//! What may travel through a segment, and the layout both ends compare.
//!
//! A [`Message`] carries a [`TypeLayout`]: its size and alignment and, for a
//! struct, every field's offset and layout, down to primitive numbers. The
//! server sends the canonical form of its request and response layouts at
//! connect ([`TypeLayout::canonical`]); a client whose types differ in any
//! offset, width, kind (signed, unsigned, float) or byte order is refused
//! with both type names and both layouts in [`Error::Mismatch`]. Names of
//! types and fields are not compared: an identical struct declared in
//! another module, or another crate, is the same message.
//!
//! [`Error::Mismatch`]: crate::Error::Mismatch

use std::fmt::Write as _;
use std::mem::{align_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A request or response type: plain data that is valid for every bit
/// pattern ([`FromBytes`]) and has no padding ([`IntoBytes`]), so a peer can
/// neither hand us an invalid value nor read our uninitialized bytes, plus
/// the layout that connect compares.
///
/// Implemented for the primitive numbers, `zerocopy`'s byte-order types and
/// arrays of messages. For your own `#[repr(C)]` structs, derive it along
/// with the `zerocopy` traits, through this crate's re-export (no direct
/// `zerocopy` dependency needed):
///
/// ```
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// #[derive(ipc::zerocopy::FromBytes, ipc::zerocopy::IntoBytes, ipc::zerocopy::Immutable)]
/// #[derive(ipc::Message)]
/// #[zerocopy(crate = "ipc::zerocopy")]
/// #[repr(C)]
/// struct Put {
///     key: u64,
///     value: [u8; 24],
/// }
///
/// use ipc::Message;
/// assert_eq!(Put::LAYOUT.canonical(), "struct(32, 8) { 0: u64, 8: [u8; 24] }");
/// ```
pub trait Message: FromBytes + IntoBytes + Immutable + Copy + Send + 'static {
    /// The layout compared with the peer's at connect.
    const LAYOUT: &'static TypeLayout;
}

/// The memory layout of a [`Message`] type, recursively.
#[derive(Debug)]
pub struct TypeLayout {
    /// A name for people (the type's identifier); never compared.
    pub name: &'static str,
    /// `size_of` the type.
    pub size: usize,
    /// `align_of` the type.
    pub align: usize,
    /// What the bytes are.
    pub shape: Shape,
}

/// What a [`TypeLayout`]'s bytes are.
#[derive(Debug)]
#[non_exhaustive]
pub enum Shape {
    /// A primitive number, named by kind, width and byte order: `u64`,
    /// `i32`, `f64`, or `u32le`, `f64be` for `zerocopy`'s byte-order types
    /// (plain numbers are in the host's order, which both ends share).
    Scalar(&'static str),
    /// `len` consecutive elements.
    Array {
        /// The element's layout.
        element: &'static TypeLayout,
        /// How many.
        len: usize,
    },
    /// Fields at offsets (their order here does not matter).
    Struct {
        /// Every field.
        fields: &'static [Field],
    },
}

/// One field of a struct [`Shape`].
#[derive(Debug)]
pub struct Field {
    /// Its name, for people; never compared.
    pub name: &'static str,
    /// Byte offset in the struct.
    pub offset: usize,
    /// Its type's layout.
    pub layout: &'static TypeLayout,
}

impl Field {
    /// A field at `offset` (use `core::mem::offset_of!`).
    pub const fn new(name: &'static str, offset: usize, layout: &'static TypeLayout) -> Self {
        Self {
            name,
            offset,
            layout,
        }
    }
}

impl TypeLayout {
    /// A primitive number of type `T`, named `kind` (see [`Shape::Scalar`]).
    pub const fn scalar<T>(kind: &'static str) -> Self {
        Self {
            name: kind,
            size: size_of::<T>(),
            align: align_of::<T>(),
            shape: Shape::Scalar(kind),
        }
    }

    /// A struct `T` with `fields`; what `#[derive(ipc::Message)]` emits.
    pub const fn structure<T>(name: &'static str, fields: &'static [Field]) -> Self {
        Self {
            name,
            size: size_of::<T>(),
            align: align_of::<T>(),
            shape: Shape::Struct { fields },
        }
    }

    /// The canonical description compared at connect: sizes, alignments,
    /// offsets and primitive kinds, no names. Struct fields are listed by
    /// offset: `struct(16, 8) { 0: u64, 8: [u32; 2] }`.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        self.write_canonical(&mut s);
        s
    }

    fn write_canonical(&self, s: &mut String) {
        match &self.shape {
            Shape::Scalar(kind) => s.push_str(kind),
            Shape::Array { element, len } => {
                s.push('[');
                element.write_canonical(s);
                let _ = write!(s, "; {len}]");
            }
            Shape::Struct { fields } => {
                let _ = write!(s, "struct({}, {}) {{", self.size, self.align);
                let mut sorted: Vec<&Field> = fields.iter().collect();
                sorted.sort_by_key(|f| f.offset);
                for (i, f) in sorted.iter().enumerate() {
                    let _ = write!(s, "{} {}: ", if i == 0 { "" } else { "," }, f.offset);
                    f.layout.write_canonical(s);
                }
                s.push_str(" }");
            }
        }
    }
}

macro_rules! scalars {
    ($($t:ty => $kind:literal),* $(,)?) => {$(
        impl Message for $t {
            const LAYOUT: &'static TypeLayout = &TypeLayout::scalar::<$t>($kind);
        }
    )*};
}

scalars! {
    u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", u128 => "u128",
    i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64", i128 => "i128",
    f32 => "f32", f64 => "f64",
}

#[cfg(target_pointer_width = "64")]
scalars! { usize => "u64", isize => "i64" }
#[cfg(target_pointer_width = "32")]
scalars! { usize => "u32", isize => "i32" }

macro_rules! byte_order_scalars {
    ($($t:ident => $le:literal, $be:literal);* $(;)?) => {$(
        impl Message for zerocopy::byteorder::$t<zerocopy::byteorder::LittleEndian> {
            const LAYOUT: &'static TypeLayout = &TypeLayout::scalar::<Self>($le);
        }
        impl Message for zerocopy::byteorder::$t<zerocopy::byteorder::BigEndian> {
            const LAYOUT: &'static TypeLayout = &TypeLayout::scalar::<Self>($be);
        }
    )*};
}

byte_order_scalars! {
    U16 => "u16le", "u16be"; U32 => "u32le", "u32be"; U64 => "u64le", "u64be";
    U128 => "u128le", "u128be"; I16 => "i16le", "i16be"; I32 => "i32le", "i32be";
    I64 => "i64le", "i64be"; I128 => "i128le", "i128be"; F32 => "f32le", "f32be";
    F64 => "f64le", "f64be";
}

impl<T: Message, const N: usize> Message for [T; N] {
    const LAYOUT: &'static TypeLayout = &TypeLayout {
        name: "array",
        size: size_of::<[T; N]>(),
        align: align_of::<[T; N]>(),
        shape: Shape::Array {
            element: T::LAYOUT,
            len: N,
        },
    };
}

/// `type_name` and canonical layout of `T`, as shown in a mismatch.
pub(crate) fn describe<T: Message>() -> (String, String) {
    (std::any::type_name::<T>().to_owned(), T::LAYOUT.canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate as ipc;

    mod server_side {
        #[derive(
            Clone, Copy, ipc::Message, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
        )]
        #[repr(C)]
        pub struct Pair {
            pub a: u64,
            pub b: u32,
            pub c: u32,
        }
    }

    mod client_side {
        /// Same fields as `server_side::Pair`, `a` moved last.
        #[derive(
            Clone, Copy, ipc::Message, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
        )]
        #[repr(C)]
        pub struct Pair {
            pub b: u32,
            pub c: u32,
            pub a: u64,
        }

        /// Field for field the same as `server_side::Pair`.
        #[derive(
            Clone, Copy, ipc::Message, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
        )]
        #[repr(C)]
        pub struct Same {
            pub x: u64,
            pub y: u32,
            pub z: u32,
        }

        /// Same offsets and widths, but `c` is a float.
        #[derive(
            Clone, Copy, ipc::Message, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
        )]
        #[repr(C)]
        pub struct Floaty {
            pub a: u64,
            pub b: u32,
            pub c: f32,
        }
    }

    #[test]
    fn reordered_fields_have_another_layout() {
        assert_ne!(
            server_side::Pair::LAYOUT.canonical(),
            client_side::Pair::LAYOUT.canonical()
        );
    }

    #[test]
    fn an_identical_struct_in_another_module_has_the_same_layout() {
        assert_eq!(
            server_side::Pair::LAYOUT.canonical(),
            client_side::Same::LAYOUT.canonical()
        );
        assert_eq!(
            server_side::Pair::LAYOUT.canonical(),
            "struct(16, 8) { 0: u64, 8: u32, 12: u32 }"
        );
    }

    #[test]
    fn primitive_kinds_are_compared_not_only_widths() {
        assert_ne!(
            server_side::Pair::LAYOUT.canonical(),
            client_side::Floaty::LAYOUT.canonical()
        );
        assert_ne!(u64::LAYOUT.canonical(), i64::LAYOUT.canonical());
        assert_ne!(<[u32; 2]>::LAYOUT.canonical(), u64::LAYOUT.canonical());
        let le = <zerocopy::little_endian::U64 as Message>::LAYOUT.canonical();
        let be = <zerocopy::big_endian::U64 as Message>::LAYOUT.canonical();
        assert_ne!(le, be);
    }

    #[test]
    fn nested_structs_and_arrays_are_described_recursively() {
        #[derive(
            Clone, Copy, ipc::Message, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
        )]
        #[repr(C)]
        struct Outer {
            head: [server_side::Pair; 2],
            tail: u64,
        }
        assert_eq!(
            Outer::LAYOUT.canonical(),
            "struct(40, 8) { 0: [struct(16, 8) { 0: u64, 8: u32, 12: u32 }; 2], 32: u64 }"
        );
    }

    #[test]
    fn tuple_and_generic_structs_derive_too() {
        #[derive(
            Clone, Copy, ipc::Message, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
        )]
        #[repr(C)]
        struct Tuple(u64, [u16; 4]);
        assert_eq!(
            Tuple::LAYOUT.canonical(),
            "struct(16, 8) { 0: u64, 8: [u16; 4] }"
        );
        // zerocopy proves a generic struct padding-free only for unaligned
        // fields.
        #[derive(
            Clone,
            Copy,
            ipc::Message,
            zerocopy::FromBytes,
            zerocopy::IntoBytes,
            zerocopy::Immutable,
            zerocopy::Unaligned,
        )]
        #[repr(C)]
        struct Tagged<T>([u8; 3], T);
        assert_eq!(
            Tagged::<zerocopy::little_endian::U32>::LAYOUT.canonical(),
            "struct(7, 1) { 0: [u8; 3], 3: u32le }"
        );
    }
}
