//! HF chat templates rendered with minijinja, with the helpers HF templates use:
//! `raise_exception`, `strftime_now`, a Python-style `tojson`, pycompat string
//! methods (`.strip()`, `.startswith()`, ...), loop controls, trim/lstrip blocks.

use std::path::Path;

use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Serialize;
use serde_json::Value as Json;

use crate::error::{ModelError, Result};

const NAME: &str = "chat";

/// Used when a model ships no template: one `role: content` line per message,
/// then `assistant:` when a generation prompt is asked for.
pub const FALLBACK_TEMPLATE: &str = "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("is_fallback", &self.is_fallback)
            .field("len", &self.source.len())
            .finish()
    }
}

fn tmpl_err(e: JinjaError) -> ModelError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    ModelError::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is returned, never a panic.
    pub fn new(source: impl Into<String>, bos_token: &str, eos_token: &str) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(tmpl_err)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.clone())
            .map_err(tmpl_err)?;
        Ok(Self {
            env,
            source,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            is_fallback: false,
        })
    }

    /// The documented plain template ([`FALLBACK_TEMPLATE`]).
    pub fn fallback(bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut t = Self::new(FALLBACK_TEMPLATE, bos_token, eos_token)?;
        t.is_fallback = true;
        Ok(t)
    }

    /// Reads `chat_template` (a string, or the list-of-named-templates form, where
    /// `default` wins) and the bos/eos strings from a tokenizer_config.json; a
    /// `chat_template.jinja` beside it takes precedence. `Ok(None)` when neither has one.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let json = read_json(path)?;
        let (bos, eos) = special_strings(&json);
        let jinja = path.with_file_name("chat_template.jinja");
        let source = if jinja.is_file() {
            Some(
                std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io {
                    path: jinja.clone(),
                    source,
                })?,
            )
        } else {
            template_source(json.get("chat_template"))
        };
        source
            .map(|s| {
                Self::new(s, &bos, &eos)
                    .map_err(|e| ModelError::Template(format!("{}: {e}", path.display())))
            })
            .transpose()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages` (anything serialising to `{role, content, ...}` maps).
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with(messages, add_generation_prompt, Json::Null)
    }

    /// As [`Self::render`], with extra top-level variables (`tools`, `documents`,
    /// `enable_thinking`, ...) taken from the JSON object `extra`.
    ///
    /// Map key order is kept as serialised (so `tojson` matches Python's output
    /// when the caller's types keep order; `serde_json::Map` sorts keys).
    pub fn render_with<M: Serialize, E: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
        extra: E,
    ) -> Result<String> {
        let mut ctx: std::collections::BTreeMap<String, Value> = Default::default();
        let extra = Value::from(Serde(extra));
        if extra.kind() == ValueKind::Map {
            for k in extra.try_iter().map_err(tmpl_err)? {
                let v = extra.get_item(&k).map_err(tmpl_err)?;
                ctx.insert(k.to_string(), v);
            }
        }
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Value::from(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.clone()));
        let ctx = Value::from(ctx);
        let tmpl = self.env.get_template(NAME).map_err(tmpl_err)?;
        tmpl.render(ctx).map_err(tmpl_err)
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// `bos_token`/`eos_token` of a tokenizer_config.json (string or `{content}`), "" if absent.
pub(crate) fn special_strings(json: &Json) -> (String, String) {
    let get = |k: &str| match json.get(k) {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Object(o)) => o
            .get("content")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    };
    (get("bos_token"), get("eos_token"))
}

fn template_source(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some(n))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&fmt, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// A small UTC `strftime`: %Y %y %m %d %-d %B %b %A %a %H %M %S %j %%.
pub(crate) fn strftime(fmt: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let tod = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let is_leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(is_leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let day = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('-') => match it.next() {
                Some('d') => out.push_str(&d.to_string()),
                Some('m') => out.push_str(&m.to_string()),
                Some(o) => {
                    out.push_str("%-");
                    out.push(o);
                }
                None => out.push_str("%-"),
            },
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Python `json.dumps(x, ensure_ascii=False, indent=indent)` as HF templates see it:
/// `", "`/`": "` separators without indent, insertion order kept, no HTML escaping.
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let kw_indent: Option<Value> = kwargs.get("indent")?;
    let _sort: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = indent
        .or(kw_indent)
        .filter(|v| !v.is_none() && !v.is_undefined())
        .map(|v| {
            v.as_usize()
                .map(|n| " ".repeat(n))
                .or_else(|| v.as_str().map(str::to_string))
                .ok_or_else(|| JinjaError::new(ErrorKind::InvalidOperation, "tojson: bad indent"))
        })
        .transpose()?;
    let mut out = String::new();
    write_json(&mut out, value, indent.as_deref(), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<&str>,
    depth: usize,
) -> std::result::Result<(), JinjaError> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or("")).unwrap_or_default())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let ks = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&ks).unwrap_or_default());
                out.push_str(key_sep);
                write_json(out, &v.get_item(k)?, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap_or_default()),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
