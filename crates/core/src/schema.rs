//! JSON Schema checks for agent inputs and outputs.
//!
//! Schemas come from users, so they are compiled with no remote or file
//! reference resolution (the `jsonschema` crate is built without those
//! features): a schema can never make Spindle fetch a URL or read a file.

use serde_json::Value;

/// Most schema violations reported for one document.
const MAX_REPORTED: usize = 5;

/// Whether `schema` compiles; the compiler's message if not.
pub fn compile_error(schema: &Value) -> Option<String> {
    jsonschema::validator_for(schema)
        .err()
        .map(|e| e.to_string())
}

/// Checks `instance` against `schema`, describing up to five violations, each
/// with the JSON Pointer of the value at fault.
pub fn check(schema: &Value, instance: &Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| format!("schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .take(MAX_REPORTED)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_violations_with_their_pointer() {
        let schema = json!({"type": "object", "required": ["findings"],
            "properties": {"findings": {"type": "array"}}});
        assert!(check(&schema, &json!({"findings": []})).is_ok());
        let err = check(&schema, &json!({"findings": 3})).unwrap_err();
        assert!(err.starts_with("/findings:"), "{err}");
        assert!(check(&schema, &json!({})).unwrap_err().contains("findings"));
    }

    #[test]
    fn bad_schemas_are_named_and_remote_refs_are_not_fetched() {
        assert!(compile_error(&json!({"type": "no-such-type"})).is_some());
        assert!(compile_error(&json!({"type": "object"})).is_none());
        assert!(compile_error(&json!({"$ref": "http://127.0.0.1:9/schema.json"})).is_some());
    }
}
