//! The TOML reader's errors in the config's own words: where (the table
//! and key the error is in, found from its position, as
//! `routes[0].action.forward`), what was expected in plain terms ("a list",
//! not "a sequence"), and, for a misspelt key, the key that was meant.
//! `read_all` finds every such error in one run, not only the first.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};

use super::raw::RawConfig;

/// One error of the reader, before it is given its file and line.
pub struct ReadError {
    pub span: Range<usize>,
    pub field: String,
    pub message: String,
}

/// What `read_all` found: the raw config, when validation can go on
/// without inventing follow-on errors, and every error met on the way.
pub struct Read {
    pub raw: Option<RawConfig>,
    pub errors: Vec<ReadError>,
}

/// The most errors one run reports from the reader.
const MAX_ERRORS: usize = 50;

/// Reads `text` into the raw config, collecting every error rather than
/// the first. The text is parsed once into TOML's own tree (every syntax
/// error found there is reported, and then reading stops: what follows a
/// syntax error has no reliable structure). After each error in mapping
/// that tree onto the config, the key it is in is taken out and the tree
/// is read again. An error in a key's name or value costs that key only,
/// and validation then runs on the rest (its errors join these). A table
/// missing a required key is taken out whole; then validation does not run,
/// since a reference to that table would be reported as a second, false
/// error.
pub fn read_all(text: &str) -> Read {
    let (mut tree, syntax) = DeTable::parse_recoverable(text);
    let error = |span: Range<usize>, message: String| ReadError {
        field: field_at(text, span.start),
        message,
        span,
    };
    if !syntax.is_empty() {
        let errors = syntax
            .iter()
            .map(|e| error(e.span().unwrap_or(0..0), e.message().trim().to_owned()))
            .collect();
        return Read { raw: None, errors };
    }
    let mut errors = Vec::new();
    let mut taken: Vec<Range<usize>> = Vec::new();
    let mut table_taken = false;
    loop {
        let e = match RawConfig::deserialize(Deserializer::from(tree.clone())) {
            Ok(raw) => {
                let raw = (!table_taken).then_some(raw);
                return Read { raw, errors };
            }
            Err(e) => e,
        };
        let raw_message = e.message().trim();
        let span = e.span().unwrap_or(0..0);
        let missing = raw_message.starts_with("missing field");
        // A table missing a key that was taken out for an earlier error
        // says nothing new.
        let follow_on = missing
            && taken
                .iter()
                .any(|t| span.start <= t.start && t.end <= span.end);
        if !follow_on {
            errors.push(error(span.clone(), message(raw_message)));
        }
        let Some(removed) = take_out(tree.get_mut(), &span) else {
            return Read { raw: None, errors };
        };
        if errors.len() >= MAX_ERRORS {
            return Read { raw: None, errors };
        }
        table_taken |= missing;
        taken.push(removed);
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// Takes the innermost key or array element whose name or value holds
/// `span` out of `table`; returns the span taken. (A table's own span is
/// its header, not its body, so every branch is searched.)
fn take_out(table: &mut DeTable<'_>, span: &Range<usize>) -> Option<Range<usize>> {
    let mut hit = None;
    for (k, v) in table.iter_mut() {
        if let Some(inner) = take_out_value(v.get_mut(), span) {
            return Some(inner);
        }
        if contains(&k.span(), span) || contains(&v.span(), span) {
            let (k_span, v_span) = (k.span(), v.span());
            hit = Some((
                k.clone(),
                k_span.start.min(v_span.start)..k_span.end.max(v_span.end),
            ));
            break;
        }
    }
    let (key, taken) = hit?;
    table.remove(&key);
    Some(taken)
}

fn take_out_value(value: &mut DeValue<'_>, span: &Range<usize>) -> Option<Range<usize>> {
    match value {
        DeValue::Table(t) => take_out(t, span),
        DeValue::Array(items) => {
            let mut hit = None;
            for v in items.iter_mut() {
                if let Some(inner) = take_out_value(v.get_mut(), span) {
                    return Some(inner);
                }
                if contains(&v.span(), span) {
                    hit = Some(v.span());
                    break;
                }
            }
            let taken = hit?;
            let old: Vec<_> = items.iter().cloned().collect();
            let mut rest = DeArray::new();
            for v in old.into_iter().filter(|v| v.span() != taken) {
                rest.push(v);
            }
            *items = rest;
            Some(taken)
        }
        _ => None,
    }
}

/// The field path at byte `offset` of `text`: the table whose header comes
/// last before it (with its index, for arrays of tables), and the key on
/// the error's line, if the line assigns one.
pub fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut line_start = 0;
    let mut key = None;
    for line in text.split_inclusive('\n') {
        let end = line_start + line.len();
        let t = line.trim();
        if let Some((name, _)) = t.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            if line_start <= offset {
                let name = name.trim().to_owned();
                let n = counts.entry(name.clone()).or_insert(0);
                table = format!("{name}[{n}]");
                *n += 1;
            }
        } else if let Some((name, _)) = t.strip_prefix('[').and_then(|r| r.split_once(']')) {
            if line_start <= offset {
                table = name.trim().to_owned();
            }
        } else if (line_start..end).contains(&offset) || (offset == end && offset == text.len()) {
            key = t
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_owned())
                .filter(|k| !k.is_empty() && !k.starts_with('#'));
        }
        if line_start > offset {
            break;
        }
        line_start = end;
    }
    match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (true, None) => String::new(),
        (false, Some(k)) => format!("{table}.{k}"),
        (false, None) => table,
    }
}

/// The reader's message, reworded.
pub fn message(raw: &str) -> String {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once("`, expected ") {
            let known: Vec<&str> = expected
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, k)| k)
                .collect();
            let best = known
                .iter()
                .map(|k| (strsim::jaro_winkler(name, k), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let list = known.join(", ");
            return match best {
                Some((_, k)) => {
                    format!("unknown key `{name}`: did you mean `{k}`? (known here: {list})")
                }
                None => format!("unknown key `{name}` (known here: {list})"),
            };
        }
    }
    if raw == "data did not match any variant of untagged enum Scalar" {
        return "expected a number or a string".to_owned();
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        return format!("`{name}` is required here");
    }
    if let Some(rest) = raw.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let words = |s: &str| {
                let s = s.trim();
                if s.contains("sequence") {
                    "a list (like [\"a\", \"b\"])".to_owned()
                } else if s.starts_with("struct") || s.contains("map") {
                    "a table (like { key = \"value\" })".to_owned()
                } else if s == "a boolean" || s.starts_with("boolean") {
                    "true or false".to_owned()
                } else {
                    s.to_owned()
                }
            };
            let found = found.replace("sequence", "list").replace("map", "table");
            return format!("expected {}, found {found}", words(expected));
        }
    }
    raw.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_table_and_key() {
        let text = "[timeouts]\nconect = \"5s\"\n[[listeners]]\nname = \"a\"\n[[listeners]]\nname = \"b\"\n[[routes]]\naction.forward = \"x\"\n";
        assert_eq!(
            field_at(text, text.find("conect").unwrap()),
            "timeouts.conect"
        );
        assert_eq!(
            field_at(text, text.find("\"b\"").unwrap()),
            "listeners[1].name"
        );
        assert_eq!(
            field_at(text, text.find("\"x\"").unwrap()),
            "routes[0].action.forward"
        );
        assert_eq!(
            field_at(text, text.find("[[listeners]]").unwrap()),
            "listeners[0]"
        );
    }

    #[test]
    fn messages_in_the_configs_words() {
        assert_eq!(
            message("unknown field `conect`, expected one of `connect`, `idle`"),
            "unknown key `conect`: did you mean `connect`? (known here: connect, idle)"
        );
        assert_eq!(
            message("unknown field `zzz`, expected one of `connect`, `idle`"),
            "unknown key `zzz` (known here: connect, idle)"
        );
        assert_eq!(message("missing field `bind`"), "`bind` is required here");
        assert_eq!(
            message("invalid type: string \"127.0.0.1:9\", expected a sequence"),
            "expected a list (like [\"a\", \"b\"]), found string \"127.0.0.1:9\""
        );
    }
}
