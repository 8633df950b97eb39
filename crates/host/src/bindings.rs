//! Host-side bindings for the interfaces Spindle's host provides beyond WASI
//! and `wasi:http`, generated from the project's own `wit/` (world
//! `spindle:platform/host`).
#![allow(missing_docs)]

mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spindle:platform/host",
        imports: { default: async | trappable },
        trappable_error_type: {
            "spin:key-value/key-value.error" => crate::bindings::spin::key_value::key_value::Error,
            "spin:variables/variables.error" => crate::bindings::spin::variables::variables::Error,
            "wasi:config/store.error" => crate::bindings::wasi::config::store::Error,
            "wasi:keyvalue/store.error" => crate::bindings::wasi::keyvalue::store::Error,
            "wasi:keyvalue/atomics.cas-error" => crate::bindings::wasi::keyvalue::atomics::CasError,
        },
        with: {
            "spin:key-value/key-value.store": crate::kv::StoreHandle,
            "wasi:keyvalue/store.bucket": crate::kv::StoreHandle,
            "wasi:keyvalue/atomics.cas": crate::kv::CasHandle,
        },
    });
}

pub use generated::*;
