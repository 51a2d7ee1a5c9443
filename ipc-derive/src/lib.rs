//! `#[derive(ipc::Message)]`: implements `ipc::Message` for a struct by
//! listing every field's offset and layout, so two processes compare their
//! message types field by field at connect (see `ipc::TypeLayout`).
//!
//! Use it through the `ipc` crate, next to the `zerocopy` derives that the
//! `Message` trait requires:
//!
//! ```
//! #[derive(Clone, Copy)]
//! #[derive(ipc::zerocopy::FromBytes, ipc::zerocopy::IntoBytes, ipc::zerocopy::Immutable)]
//! #[derive(ipc::Message)]
//! #[zerocopy(crate = "ipc::zerocopy")]
//! #[repr(C)]
//! struct Get { key: u64 }
//!
//! use ipc::Message;
//! assert_eq!(Get::LAYOUT.canonical(), "struct(8, 8) { 0: u64 }");
//! ```
//!
//! Structs only (named or tuple fields); every field's type must itself be
//! an `ipc::Message`, and every type parameter gets that bound.

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, Index, parse_macro_input, parse_quote};

/// Implements `ipc::Message` for a struct whose fields are all messages.
#[proc_macro_derive(Message)]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let mut ast = parse_macro_input!(input as DeriveInput);
    let fields = match &ast.data {
        Data::Struct(s) => &s.fields,
        _ => {
            return syn::Error::new_spanned(
                &ast.ident,
                "#[derive(ipc::Message)] supports structs only",
            )
            .to_compile_error()
            .into();
        }
    };
    let entries: Vec<_> = match fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| {
                let ident = f.ident.as_ref().expect("named field");
                let ty = &f.ty;
                let name = ident.to_string();
                quote! {
                    ::ipc::Field::new(
                        #name,
                        ::core::mem::offset_of!(Self, #ident),
                        <#ty as ::ipc::Message>::LAYOUT,
                    )
                }
            })
            .collect(),
        Fields::Unnamed(unnamed) => unnamed
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let index = Index::from(i);
                let ty = &f.ty;
                let name = i.to_string();
                quote! {
                    ::ipc::Field::new(
                        #name,
                        ::core::mem::offset_of!(Self, #index),
                        <#ty as ::ipc::Message>::LAYOUT,
                    )
                }
            })
            .collect(),
        Fields::Unit => Vec::new(),
    };
    let generic = ast.generics.type_params().next().is_some();
    for p in ast.generics.type_params_mut() {
        p.bounds.push(parse_quote!(::ipc::Message));
    }
    if generic {
        // zerocopy's derives put their own bounds on the parameters (such
        // as `Unaligned`); require what they require by naming the traits.
        ast.generics
            .make_where_clause()
            .predicates
            .push(parse_quote!(
                Self: ::ipc::zerocopy::FromBytes
                    + ::ipc::zerocopy::IntoBytes
                    + ::ipc::zerocopy::Immutable
            ));
    }
    let ident = &ast.ident;
    let name = ident.to_string();
    let (impl_generics, ty_generics, where_clause) = ast.generics.split_for_impl();
    quote! {
        impl #impl_generics ::ipc::Message for #ident #ty_generics #where_clause {
            const LAYOUT: &'static ::ipc::TypeLayout =
                &::ipc::TypeLayout::structure::<Self>(#name, &[#(#entries),*]);
        }
    }
    .into()
}
