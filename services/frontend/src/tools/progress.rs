//! Tool calls while they are generated: where, in the text held so far, each call's name
//! and arguments object stand, so a stream can send a call's name as soon as it is
//! complete and its arguments fragment by fragment.
//!
//! The scan walks the JSON of every format we parse (`{"name", "arguments" | "parameters"}`
//! objects at the top level or inside a top-level list, between tags such as
//! `<tool_call>` or `[TOOL_CALLS]`), tolerating text that is still incomplete.

/// One call found so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallProgress {
    /// The name, once its string is complete.
    pub name: Option<String>,
    /// Byte offsets of the arguments object: its `{`, and one past its `}` once closed.
    /// `None` while not seen, and for arguments written before the name or not as an
    /// object (those calls are sent whole when the choice ends).
    pub args: Option<(usize, Option<usize>)>,
}

/// Tags skipped between calls (they hold brackets that are not JSON).
const SKIP: &[&str] = &["[TOOL_CALLS]", "[ARGS]"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Key,
    Colon,
    Value,
    Comma,
}

struct Frame {
    is_object: bool,
    /// The call this object is (a call-level object), if any.
    call: Option<usize>,
    /// The call whose arguments object this is.
    args_of: Option<usize>,
    expect: Expect,
    key: String,
}

/// Finds every call in `text` (see the module docs).
pub fn scan(text: &str) -> Vec<CallProgress> {
    let bytes = text.as_bytes();
    let mut calls: Vec<CallProgress> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if stack.is_empty() {
            if let Some(tag) = SKIP.iter().find(|t| text[i..].starts_with(**t)) {
                i += tag.len();
                continue;
            }
            if c != b'{' && c != b'[' {
                i += 1;
                continue;
            }
        }
        match c {
            b'"' => {
                let end = string_end(bytes, i);
                if let Some(top) = stack.last_mut() {
                    let raw = &text[i..end.unwrap_or(bytes.len())];
                    match top.expect {
                        Expect::Key if top.is_object => {
                            top.key = serde_json::from_str(raw).unwrap_or_default();
                            top.expect = Expect::Colon;
                        }
                        Expect::Value => {
                            if let (Some(call), "name", Some(_)) = (top.call, top.key.as_str(), end)
                            {
                                calls[call].name = serde_json::from_str(raw).ok();
                            }
                            top.expect = Expect::Comma;
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else { break };
                i = end;
                continue;
            }
            b'{' | b'[' => {
                let is_object = c == b'{';
                let parent = stack.last();
                let call_level = is_object
                    && (stack.is_empty()
                        || (stack.len() == 1 && parent.is_some_and(|p| !p.is_object)));
                let args_of = parent.and_then(|p| {
                    let key_is_args = p.key == "arguments" || p.key == "parameters";
                    (p.is_object && p.expect == Expect::Value && key_is_args && is_object)
                        .then_some(p.call)
                        .flatten()
                });
                let mut frame = Frame {
                    is_object,
                    call: None,
                    args_of: None,
                    expect: if is_object {
                        Expect::Key
                    } else {
                        Expect::Value
                    },
                    key: String::new(),
                };
                if call_level {
                    calls.push(CallProgress::default());
                    frame.call = Some(calls.len() - 1);
                }
                if let Some(call) = args_of
                    && calls[call].name.is_some()
                {
                    calls[call].args = Some((i, None));
                    frame.args_of = Some(call);
                }
                stack.push(frame);
            }
            b'}' | b']' => {
                if let Some(f) = stack.pop()
                    && let Some(call) = f.args_of
                    && let Some((start, _)) = calls[call].args
                {
                    calls[call].args = Some((start, Some(i + 1)));
                }
                if let Some(top) = stack.last_mut() {
                    top.expect = Expect::Comma;
                }
            }
            b':' => {
                if let Some(top) = stack.last_mut() {
                    top.expect = Expect::Value;
                }
            }
            b',' => {
                if let Some(top) = stack.last_mut() {
                    top.expect = if top.is_object {
                        Expect::Key
                    } else {
                        Expect::Value
                    };
                }
            }
            c if c.is_ascii_whitespace() => {}
            _ => {
                // A number, `true`, `false` or `null`.
                if let Some(top) = stack.last_mut()
                    && top.expect == Expect::Value
                {
                    top.expect = Expect::Comma;
                }
            }
        }
        i += 1;
    }
    calls
}

/// One past the closing quote of the string opening at `start`; `None` if not closed yet.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// `json` (possibly incomplete) without the whitespace outside strings. Extending the
/// input only ever extends the output, so fragments of it can be streamed.
pub fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            out.push(c);
            in_string = c == '"';
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args<'a>(text: &'a str, p: &CallProgress) -> &'a str {
        let (s, e) = p.args.unwrap();
        &text[s..e.unwrap_or(text.len())]
    }

    #[test]
    fn finds_names_and_arguments_in_every_format() {
        let hermes = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa\\\"ris\", \"n\": [1, {\"x\": 2}]}}\n</tool_call><tool_call>{\"name\": \"t\", \"arguments\": {}}</tool_call>";
        let c = scan(hermes);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name.as_deref(), Some("get_weather"));
        assert_eq!(
            args(hermes, &c[0]),
            "{\"city\": \"Pa\\\"ris\", \"n\": [1, {\"x\": 2}]}"
        );
        assert_eq!(
            (c[1].name.as_deref(), args(hermes, &c[1])),
            (Some("t"), "{}")
        );

        let mistral = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"k\": true}}, {\"name\": \"b\", \"arguments\": {\"k\": null}}]";
        let c = scan(mistral);
        assert_eq!(c.len(), 2);
        assert_eq!(args(mistral, &c[1]), "{\"k\": null}");

        let llama = "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"q\": \"{not json}\"}}; {\"name\": \"g\", \"parameters\": {}}";
        let c = scan(llama);
        assert_eq!(c.len(), 2);
        assert_eq!(args(llama, &c[0]), "{\"q\": \"{not json}\"}");
    }

    #[test]
    fn incomplete_text_gives_what_is_known_so_far() {
        let full = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>";
        let cut = full.find("Par").unwrap();
        let c = scan(&full[..cut]);
        assert_eq!(c[0].name.as_deref(), Some("get_weather"));
        assert_eq!(c[0].args.unwrap().1, None);
        let c = scan(&full[..full.find("get_w").unwrap() + 3]);
        assert_eq!(
            c[0].name, None,
            "a name is known only once its string closes"
        );
        assert_eq!(c[0].args, None);
    }

    #[test]
    fn arguments_before_the_name_or_as_a_string_are_not_streamed() {
        let c = scan("{\"arguments\": {\"a\": 1}, \"name\": \"f\"}");
        assert_eq!((c[0].name.as_deref(), c[0].args), (Some("f"), None));
        let c = scan("{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}");
        assert_eq!(c[0].args, None);
        // `[ARGS]` form: no name key inside the JSON.
        assert_eq!(scan("[TOOL_CALLS]f[ARGS]{\"a\": 1}")[0].name, None);
    }

    #[test]
    fn minify_drops_whitespace_outside_strings_and_is_prefix_stable() {
        let s = "{ \"a b\" : [1, 2],\n \"c\": \"x \\\" y\" }";
        assert_eq!(minify(s), "{\"a b\":[1,2],\"c\":\"x \\\" y\"}");
        let full = minify(s);
        for i in 0..=s.len() {
            assert!(full.starts_with(&minify(&s[..i])), "prefix {i}");
        }
    }
}
