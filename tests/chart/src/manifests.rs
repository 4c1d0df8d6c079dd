//! Rendered manifests: multi-document YAML parsed into JSON values, and lookups by kind/name.

use serde_json::Value;

/// A manifest could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("failed to parse YAML document {index}: {source}")]
pub struct ParseError {
    index: usize,
    #[source]
    source: serde_yaml_ng::Error,
}

/// Every non-empty document of a multi-document YAML stream, as JSON values.
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, ParseError> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|source| ParseError { index, source })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The `kind` of an object.
pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

/// The `metadata.name` of an object.
pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// All objects of `kind`.
pub fn all_of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == wanted).collect()
}

/// The single object of `kind`; panics (with the kinds present) when there is not exactly one.
pub fn one_of_kind<'a>(objects: &'a [Value], wanted: &str) -> &'a Value {
    let found = all_of_kind(objects, wanted);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {wanted}, rendered kinds: {:?}",
        objects.iter().map(kind).collect::<Vec<_>>()
    );
    found[0]
}
