//! Hostile credentials and key requests never panic and are refused or
//! parsed consistently.

use proptest::prelude::*;
use spindle_auth::caller::{MAX_CREDENTIAL_BYTES, credential};
use spindle_auth::keys::{self, KeyRequest};

proptest! {
    #[test]
    fn any_credential_headers_parse_or_are_refused(
        auth in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
    ) {
        match credential(auth.as_deref(), key.as_deref()) {
            Ok(Some(c)) => {
                // What comes through is one visible-ASCII word.
                prop_assert!(!c.is_empty() && c.len() <= MAX_CREDENTIAL_BYTES);
                prop_assert!(c.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(auth.is_some() != key.is_some());
            }
            Ok(None) => prop_assert!(auth.is_none() && key.is_none()),
            Err(_) => {}
        }
    }

    #[test]
    fn any_string_is_a_key_or_not_without_panicking(s in ".{0,120}") {
        if let Some(id) = keys::parse(&s) {
            prop_assert!(keys::valid_id(id));
            prop_assert!(s.starts_with(keys::PREFIX));
        }
    }

    #[test]
    fn any_key_request_body_is_parsed_or_refused_with_pointers(
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        if let Err(e) = KeyRequest::parse(&body) {
            prop_assert!(!e.errors.is_empty());
        }
    }
}
