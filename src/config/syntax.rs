//! The TOML reader's errors in the config's own words: where (the table
//! and key the error is in, found from its position, as
//! `routes[0].action.forward`), what was expected in plain terms ("a list",
//! not "a sequence"), and, for a misspelt key, the key that was meant.

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
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            if line_start <= offset {
                let name = name.trim().to_owned();
                let n = counts.entry(name.clone()).or_insert(0);
                table = format!("{name}[{n}]");
                *n += 1;
            }
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
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
