//! `GET /v1/openapi.json`: the API's OpenAPI 3.1 document. It is written by
//! hand as `docs/openapi.yaml` (the one copy, read by people and by the
//! route table's tests) and served as JSON, converted once on first use.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::error::ApiError;

const SOURCE: &str = include_str!("../../../docs/openapi.yaml");

/// The document as a JSON value.
pub fn document_value() -> Result<serde_json::Value, String> {
    yaml_serde::from_str(SOURCE).map_err(|e| format!("docs/openapi.yaml does not parse: {e}"))
}

/// The document as JSON bytes, converted once.
pub fn document() -> Result<Bytes, ApiError> {
    static JSON: OnceLock<Result<Bytes, String>> = OnceLock::new();
    JSON.get_or_init(|| {
        let value = document_value()?;
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(ApiError::Internal)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_document_is_openapi_3_1_and_converts_to_json() {
        let doc = super::document_value().unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let bytes = super::document().unwrap();
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, doc);
    }
}
