//! Structured output: `response_format`, `guided_json`, `guided_regex`, `guided_choice`
//! mapped onto `SamplingParams.guided`, with malformed schemas and regexes rejected here
//! (the worker's structured-output processor enforces them).

use crate::error::{ApiError, ApiResult};
use ferrite_protocol::GuidedDecoding;
use ferrite_protocol::openai::CommonParams;
use serde_json::Value;

/// JSON Schema `type` names.
const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Keywords whose value is one schema.
const ONE_SCHEMA: &[&str] = &[
    "items",
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "if",
    "then",
    "else",
];
/// Keywords whose value is a list of schemas.
const SCHEMA_LISTS: &[&str] = &["anyOf", "oneOf", "allOf", "prefixItems"];
/// Keywords whose value is a map of schemas.
const SCHEMA_MAPS: &[&str] = &["properties", "$defs", "definitions", "patternProperties"];
/// Keywords whose value is a non-negative integer.
const COUNTS: &[&str] = &[
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
];
/// Keywords whose value is a number.
const NUMBERS: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];

/// Checks that `schema` is a well-formed JSON Schema; the error names `param` and the
/// place inside the schema.
pub fn check_schema(param: &str, schema: &Value) -> ApiResult<()> {
    check_at(param, "#", schema)
}

fn bad(param: &str, at: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(
        param,
        format!("`{param}` is not a valid JSON Schema: at {at}: {why}"),
    )
}

/// What is wrong with the value of keyword `k`, if its shape is wrong.
fn value_problem(k: &str, v: &Value) -> Option<String> {
    let type_ok = |t: &Value| t.as_str().is_some_and(|s| TYPES.contains(&s));
    let ok = match k {
        "type" => match v {
            Value::Array(ts) => !ts.is_empty() && ts.iter().all(type_ok),
            t => type_ok(t),
        },
        "required" => v.as_array().is_some_and(|r| r.iter().all(Value::is_string)),
        "enum" => v.as_array().is_some_and(|e| !e.is_empty()),
        "pattern" | "$ref" => v.is_string(),
        k if SCHEMA_LISTS.contains(&k) => v.as_array().is_some_and(|l| !l.is_empty()),
        k if SCHEMA_MAPS.contains(&k) => v.is_object(),
        k if COUNTS.contains(&k) => v.as_u64().is_some(),
        k if NUMBERS.contains(&k) => v.is_number(),
        _ => true,
    };
    if ok {
        return None;
    }
    Some(match k {
        "type" => format!("unknown type {v}"),
        "required" => "must be a list of property names".into(),
        "enum" => "must be a non-empty list".into(),
        "pattern" | "$ref" => "must be a string".into(),
        k if SCHEMA_LISTS.contains(&k) => "must be a non-empty list of schemas".into(),
        k if SCHEMA_MAPS.contains(&k) => "must be an object of schemas".into(),
        k if COUNTS.contains(&k) => "must be a non-negative integer".into(),
        _ => "must be a number".into(),
    })
}

fn check_at(param: &str, at: &str, schema: &Value) -> ApiResult<()> {
    let obj = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        other => {
            return Err(bad(
                param,
                at,
                format!("a schema must be an object, got {other}"),
            ));
        }
    };
    for (k, v) in obj {
        let here = format!("{at}/{k}");
        if let Some(problem) = value_problem(k, v) {
            return Err(bad(param, &here, problem));
        }
        match k.as_str() {
            "pattern" => {
                if let Some(p) = v.as_str() {
                    regex::Regex::new(p).map_err(|e| bad(param, &here, e))?;
                }
            }
            k if ONE_SCHEMA.contains(&k) => match v {
                // Draft-4 tuple form of `items`.
                Value::Array(list) if k == "items" => {
                    for (i, s) in list.iter().enumerate() {
                        check_at(param, &format!("{here}/{i}"), s)?;
                    }
                }
                s => check_at(param, &here, s)?,
            },
            k if SCHEMA_LISTS.contains(&k) => {
                for (i, s) in v.as_array().into_iter().flatten().enumerate() {
                    check_at(param, &format!("{here}/{i}"), s)?;
                }
            }
            k if SCHEMA_MAPS.contains(&k) => {
                for (name, s) in v.as_object().into_iter().flatten() {
                    check_at(param, &format!("{here}/{name}"), s)?;
                }
            }
            // Annotations and keywords with free-form values.
            _ => {}
        }
    }
    Ok(())
}

/// `guided_json` or a schema given as a JSON text or a JSON value.
fn schema_value(param: &str, v: &Value) -> ApiResult<Value> {
    match v {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::invalid(param, format!("`{param}` is not valid JSON: {e}"))),
        v => Ok(v.clone()),
    }
}

fn json_schema(param: &str, schema: &Value) -> ApiResult<GuidedDecoding> {
    let schema = schema_value(param, schema)?;
    check_schema(param, &schema)?;
    Ok(GuidedDecoding::JsonSchema(schema.to_string()))
}

/// `response_format` → an optional constraint (`text` is none).
pub fn response_format(v: &Value) -> ApiResult<Option<GuidedDecoding>> {
    let p = "response_format";
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(ApiError::invalid(p, "`response_format` must be an object")),
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["type", "json_schema"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            format!("{p}.{k}"),
            format!("unknown field `{k}` in `response_format`"),
        ));
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GuidedDecoding::JsonObject)),
        Some("json_schema") => {
            let p = "response_format.json_schema";
            let js = obj
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ApiError::invalid(p, "`type: json_schema` needs a `json_schema` object")
                })?;
            for k in js.keys() {
                if !["name", "schema", "strict", "description"].contains(&k.as_str()) {
                    return Err(ApiError::invalid(
                        format!("{p}.{k}"),
                        format!("unknown field `{k}` in `{p}`"),
                    ));
                }
            }
            let name = js.get("name").and_then(Value::as_str).unwrap_or_default();
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return Err(ApiError::invalid(
                    format!("{p}.name"),
                    "`name` must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                ));
            }
            if js
                .get("strict")
                .is_some_and(|s| !s.is_boolean() && !s.is_null())
            {
                return Err(ApiError::invalid(
                    format!("{p}.strict"),
                    "`strict` must be a boolean",
                ));
            }
            match js.get("schema") {
                None | Some(Value::Null) => Ok(Some(GuidedDecoding::JsonObject)),
                Some(s) => json_schema(&format!("{p}.schema"), s).map(Some),
            }
        }
        _ => Err(ApiError::invalid(
            format!("{p}.type"),
            "`response_format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// Every structured-output option of a request → at most one constraint, and the name of
/// the field it came from.
pub fn from_request(
    c: &CommonParams,
    format: Option<&Value>,
) -> ApiResult<Option<(GuidedDecoding, &'static str)>> {
    let mut found: Vec<(GuidedDecoding, &'static str)> = Vec::new();
    if let Some(g) = format.map(response_format).transpose()?.flatten() {
        found.push((g, "response_format"));
    }
    if let Some(s) = c.guided_json.as_ref().filter(|v| !v.is_null()) {
        found.push((json_schema("guided_json", s)?, "guided_json"));
    }
    if let Some(r) = &c.guided_regex {
        if r.is_empty() {
            return Err(ApiError::invalid("guided_regex", "`guided_regex` is empty"));
        }
        regex::Regex::new(r).map_err(|e| {
            ApiError::invalid(
                "guided_regex",
                format!("`guided_regex` is not a valid regular expression: {e}"),
            )
        })?;
        found.push((GuidedDecoding::Regex(r.clone()), "guided_regex"));
    }
    if let Some(ch) = &c.guided_choice {
        if ch.is_empty() || ch.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "guided_choice",
                "`guided_choice` must be a non-empty list of non-empty strings",
            ));
        }
        found.push((GuidedDecoding::Choice(ch.clone()), "guided_choice"));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, n)| *n).collect();
        return Err(ApiError::invalid(
            names[1],
            format!(
                "only one structured-output option may be given at a time; got {}",
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn common(v: Value) -> CommonParams {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn response_formats_map_to_constraints() {
        assert_eq!(response_format(&json!({"type": "text"})).unwrap(), None);
        assert_eq!(
            response_format(&json!({"type": "json_object"})).unwrap(),
            Some(GuidedDecoding::JsonObject)
        );
        let g = response_format(&json!({"type": "json_schema", "json_schema": {
            "name": "p", "strict": true,
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}))
        .unwrap();
        match g {
            Some(GuidedDecoding::JsonSchema(s)) => {
                let v: Value = serde_json::from_str(&s).unwrap();
                assert_eq!(v["properties"]["a"]["type"], "integer");
            }
            other => panic!("{other:?}"),
        }
        let e = response_format(&json!({"type": "xml"})).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("response_format.type"));
        let e = response_format(&json!({"type": "json_schema", "json_schema": {"schema": {}}}))
            .unwrap_err();
        assert_eq!(
            e.0.param.as_deref(),
            Some("response_format.json_schema.name")
        );
    }

    #[test]
    fn malformed_schemas_name_the_field_and_place() {
        let e = response_format(&json!({"type": "json_schema", "json_schema": {
            "name": "p", "schema": {"type": "object", "properties": {"a": {"type": "integr"}}}}}))
        .unwrap_err();
        assert_eq!(
            e.0.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
        assert!(
            e.0.message.contains("#/properties/a/type"),
            "{}",
            e.0.message
        );
        let e = from_request(&common(json!({"guided_json": "{not json"})), None).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("guided_json"));
        let e = from_request(
            &common(json!({"guided_json": {"required": "a", "type": "object"}})),
            None,
        )
        .unwrap_err();
        assert!(e.0.message.contains("#/required"), "{}", e.0.message);
        assert!(check_schema("s", &json!({"minItems": -1})).is_err());
        assert!(check_schema("s", &json!({"pattern": "(a"})).is_err());
        assert!(check_schema("s", &json!(3)).is_err());
        assert!(check_schema("s", &json!({"anyOf": [{"type": "string"}, true]})).is_ok());
    }

    #[test]
    fn extensions_and_conflicts() {
        let g = from_request(&common(json!({"guided_regex": "[0-9]+"})), None).unwrap();
        assert_eq!(
            g,
            Some((GuidedDecoding::Regex("[0-9]+".into()), "guided_regex"))
        );
        let e = from_request(&common(json!({"guided_regex": "([0-9]"})), None).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("guided_regex"));
        let g = from_request(&common(json!({"guided_choice": ["yes", "no"]})), None).unwrap();
        assert_eq!(
            g.map(|x| x.0),
            Some(GuidedDecoding::Choice(vec!["yes".into(), "no".into()]))
        );
        assert!(from_request(&common(json!({"guided_choice": []})), None).is_err());
        let e = from_request(
            &common(json!({"guided_regex": "a", "guided_choice": ["a"]})),
            Some(&json!({"type": "json_object"})),
        )
        .unwrap_err();
        assert!(
            e.0.message
                .contains("response_format, guided_regex, guided_choice"),
            "{}",
            e.0.message
        );
        assert_eq!(
            from_request(&common(json!({})), Some(&json!({"type": "text"}))).unwrap(),
            None
        );
    }
}
