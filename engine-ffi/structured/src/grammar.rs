//! `GuidedDecoding` → llguidance grammar, and the vocabulary-free validation the frontend
//! calls.

use crate::error::{Result, StructuredError};
use ferrite_protocol::GuidedDecoding;
use llguidance::api::{GrammarInit, ParserLimits, TopLevelGrammar};
use serde_json::{Value, json};
use xxhash_rust::xxh3::Xxh3;

/// JSON layout options we give llguidance unless the schema carries its own `x-guidance`:
/// no free whitespace (a small model otherwise loops on newlines), separators as
/// `json.dumps` writes them.
fn layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// The llguidance grammar for `spec`.
pub fn to_grammar(spec: &GuidedDecoding) -> Result<TopLevelGrammar> {
    match spec {
        GuidedDecoding::JsonObject => Ok(json_grammar(json!({"type": "object"}))),
        GuidedDecoding::JsonSchema(text) => {
            let schema: Value = serde_json::from_str(text).map_err(|e| {
                StructuredError::InvalidSpec(format!("JSON schema is not JSON: {e}"))
            })?;
            if !schema.is_object() && !schema.is_boolean() {
                return Err(StructuredError::InvalidSpec(
                    "a JSON schema must be an object or a boolean".into(),
                ));
            }
            Ok(json_grammar(schema))
        }
        GuidedDecoding::Regex(rx) => {
            regex_syntax::Parser::new()
                .parse(rx)
                .map_err(|e| StructuredError::InvalidSpec(format!("regex: {e}")))?;
            Ok(TopLevelGrammar::from_regex(rx))
        }
        GuidedDecoding::Choice(choices) => {
            if choices.is_empty() {
                return Err(StructuredError::InvalidSpec("choice list is empty".into()));
            }
            let alts: Vec<String> = choices.iter().map(|c| regex_syntax::escape(c)).collect();
            Ok(TopLevelGrammar::from_regex(&format!(
                "(?:{})",
                alts.join("|")
            )))
        }
    }
}

fn json_grammar(mut schema: Value) -> TopLevelGrammar {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(layout);
    }
    TopLevelGrammar::from_json_schema(schema)
}

/// Checks that `spec` compiles (JSON parses, schema keywords supported, regex valid, choice
/// non-empty) without a vocabulary: cheap enough for the frontend to call per request and
/// answer 400 with the message.
pub fn validate(spec: &GuidedDecoding) -> std::result::Result<(), String> {
    let grammar = to_grammar(spec).map_err(|e| e.to_string())?;
    match GrammarInit::Serialized(grammar)
        .validate(None, ParserLimits::default())
        .into_error()
    {
        None => Ok(()),
        Some(e) => Err(format!("invalid constraint: {e}")),
    }
}

/// A 64-bit key of `spec` (cache keys; equality is checked where a collision would matter).
pub fn spec_key(spec: &GuidedDecoding) -> u64 {
    let mut h = Xxh3::new();
    let mut put = |tag: u8, s: &str| {
        h.update(&[tag]);
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    match spec {
        GuidedDecoding::JsonObject => put(0, ""),
        GuidedDecoding::JsonSchema(s) => put(1, s),
        GuidedDecoding::Regex(s) => put(2, s),
        GuidedDecoding::Choice(v) => {
            put(3, "");
            for c in v {
                put(4, c);
            }
        }
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_good_specs() {
        let schema = r#"{"type":"object","properties":{"name":{"type":"string"},
            "age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"},
            "maxItems":3}},"required":["name","age","tags"]}"#;
        assert_eq!(validate(&GuidedDecoding::JsonSchema(schema.into())), Ok(()));
        assert_eq!(validate(&GuidedDecoding::JsonObject), Ok(()));
        assert_eq!(
            validate(&GuidedDecoding::Regex(r"\d{3}-\d{4}".into())),
            Ok(())
        );
        assert_eq!(
            validate(&GuidedDecoding::Choice(vec!["a.b".into(), "(x)".into()])),
            Ok(())
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let bad_json = validate(&GuidedDecoding::JsonSchema("{not json".into()));
        assert!(bad_json.is_err_and(|e| e.contains("not JSON")));
        let bad_type = validate(&GuidedDecoding::JsonSchema(r#"{"type":"strin"}"#.into()));
        assert!(bad_type.is_err(), "{bad_type:?}");
        let dangling = validate(&GuidedDecoding::JsonSchema(
            r##"{"type":"object","properties":{"a":{"$ref":"#/$defs/missing"}}}"##.into(),
        ));
        assert!(dangling.is_err(), "{dangling:?}");
        let impossible = validate(&GuidedDecoding::JsonSchema(
            r#"{"type":"integer","minimum":5,"maximum":1}"#.into(),
        ));
        assert!(impossible.is_err(), "{impossible:?}");
        assert!(validate(&GuidedDecoding::JsonSchema("[1,2]".into())).is_err());
        let bad_rx = validate(&GuidedDecoding::Regex("(ab".into()));
        assert!(bad_rx.is_err_and(|e| e.contains("regex")));
        assert!(validate(&GuidedDecoding::Choice(vec![])).is_err());
    }

    #[test]
    fn spec_keys_differ() {
        let a = spec_key(&GuidedDecoding::Regex("ab".into()));
        let b = spec_key(&GuidedDecoding::Choice(vec!["ab".into()]));
        let c = spec_key(&GuidedDecoding::Choice(vec!["a".into(), "b".into()]));
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(a, spec_key(&GuidedDecoding::Regex("ab".into())));
    }
}
