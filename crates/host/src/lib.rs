pub mod bindings;
pub mod kv;
