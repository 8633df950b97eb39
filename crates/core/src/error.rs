//! Validation errors that name the field at fault.
//!
//! Every bad input Spindle rejects is reported as one or more [`FieldError`]s,
//! each pointing at the offending field with a JSON Pointer (RFC 6901), so the
//! HTTP edge can render an RFC 9457 problem document without guessing.

use serde::{Deserialize, Serialize};

/// One problem with one field of an input document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// JSON Pointer to the field, e.g. `/timeout_secs` (empty for the whole document).
    pub pointer: String,
    /// Human readable explanation of what is wrong and what is accepted.
    pub detail: String,
}

impl FieldError {
    /// A problem with the field at `pointer`.
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// Most field errors one refusal lists; a last entry counts the rest.
///
/// A megabyte body holds a quarter of a million bad `needs` entries or
/// templates; listing each (twice: in the problem's `errors` and in its
/// detail) would answer tens of megabytes and could exhaust a component's
/// memory. The first hundred say what is wrong.
pub const MAX_ERRORS: usize = 100;

/// An input document was rejected; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input: {}", summary(.errors))]
pub struct ValidationError {
    /// The problems found, in document order: at most [`MAX_ERRORS`], then
    /// one entry (pointer `""`) counting those not listed. Never empty.
    pub errors: Vec<FieldError>,
}

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.pointer.is_empty() {
                e.detail.clone()
            } else {
                format!("{}: {}", e.pointer, e.detail)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationError {
    /// A rejection with a single field error.
    pub fn single(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError::new(pointer, detail)],
        }
    }

    /// `Ok(())` when `errors` is empty, otherwise the rejection, listing at
    /// most [`MAX_ERRORS`] of them.
    pub fn check(mut errors: Vec<FieldError>) -> Result<(), Self> {
        if errors.is_empty() {
            return Ok(());
        }
        if errors.len() > MAX_ERRORS {
            let more = errors.len() - MAX_ERRORS;
            errors.truncate(MAX_ERRORS);
            errors.push(FieldError::new(
                "",
                format!("and {more} more problems, not listed"),
            ));
        }
        Err(Self { errors })
    }
}

/// Maps a `serde_json` decoding error to a field error.
///
/// serde does not report a JSON Pointer, only a line and column and usually the
/// field name in the message; we keep its message, which names the field
/// (`missing field \`image\``, `unknown variant \`sometimes\``), and point at
/// the document root.
pub fn from_json_error(err: &serde_json::Error) -> ValidationError {
    ValidationError::single("", format!("{err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_field() {
        let err = ValidationError {
            errors: vec![
                FieldError::new("/name", "too long"),
                FieldError::new("", "bad"),
            ],
        };
        assert_eq!(err.to_string(), "invalid input: /name: too long; bad");
    }

    #[test]
    fn check_passes_only_when_empty() {
        assert!(ValidationError::check(vec![]).is_ok());
        assert!(ValidationError::check(vec![FieldError::new("/a", "x")]).is_err());
    }

    #[test]
    fn check_lists_at_most_max_errors_and_counts_the_rest() {
        let errors = (0..MAX_ERRORS + 7)
            .map(|i| FieldError::new(format!("/needs/{i}"), "bad"))
            .collect();
        let err = ValidationError::check(errors).unwrap_err();
        assert_eq!(err.errors.len(), MAX_ERRORS + 1);
        assert_eq!(
            err.errors[MAX_ERRORS - 1].pointer,
            format!("/needs/{}", MAX_ERRORS - 1)
        );
        let last = &err.errors[MAX_ERRORS];
        assert_eq!(
            (last.pointer.as_str(), last.detail.as_str()),
            ("", "and 7 more problems, not listed")
        );
    }
}
