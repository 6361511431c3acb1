//! The small part of YAML that Ultralytics `data.yaml` files use: top-level
//! `key: value` pairs whose values are scalars, block or inline lists, and block or
//! inline maps of scalars. Comments and quotes are understood; anchors, multi-line
//! strings and nesting beyond one level are not (they are reported, not guessed).

/// A value of the subset.
#[derive(Clone, Debug, PartialEq)]
pub enum YamlValue {
    Scalar(String),
    List(Vec<String>),
    Map(Vec<(String, String)>),
}

/// Parses the document into its top-level keys, in file order.
/// The error is `(line, reason)` with a 1-based line.
pub fn parse(text: &str) -> Result<Vec<(String, YamlValue)>, (usize, String)> {
    let mut entries: Vec<(String, YamlValue)> = Vec::new();
    let mut open_block: Option<(String, YamlValue)> = None;
    for (line_idx, raw_line) in text.lines().enumerate() {
        let line_number = line_idx + 1;
        let line = strip_comment(raw_line);
        if line.trim().is_empty() || line.trim() == "---" {
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        let content = line.trim();
        if indented || (content.starts_with("- ") && open_block.is_some()) {
            let Some((_, block)) = open_block.as_mut() else {
                return Err((line_number, "indented line outside a block".to_string()));
            };
            if let Some(item) =
                content
                    .strip_prefix("- ")
                    .or(if content == "-" { Some("") } else { None })
            {
                match block {
                    YamlValue::List(items) => items.push(unquote(item.trim())),
                    YamlValue::Scalar(empty) if empty.is_empty() => {
                        *block = YamlValue::List(vec![unquote(item.trim())])
                    }
                    _ => return Err((line_number, "a list item inside a map".to_string())),
                }
            } else if let Some((key, value)) = split_key_value(content) {
                match block {
                    YamlValue::Map(pairs) => pairs.push((key, unquote(value))),
                    YamlValue::Scalar(empty) if empty.is_empty() => {
                        *block = YamlValue::Map(vec![(key, unquote(value))])
                    }
                    _ => return Err((line_number, "a map entry inside a list".to_string())),
                }
            } else {
                return Err((line_number, format!("cannot read {content:?}")));
            }
            continue;
        }
        if let Some(finished) = open_block.take() {
            entries.push(finished);
        }
        let Some((key, value)) = split_key_value(content) else {
            return Err((
                line_number,
                format!("expected `key: value`, got {content:?}"),
            ));
        };
        if value.is_empty() {
            open_block = Some((key, YamlValue::Scalar(String::new())));
        } else if let Some(inner) = value
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            let items = split_inline(inner)
                .into_iter()
                .map(|item| unquote(&item))
                .collect();
            entries.push((key, YamlValue::List(items)));
        } else if let Some(inner) = value
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
        {
            let mut pairs = Vec::new();
            for item in split_inline(inner) {
                let Some((map_key, map_value)) = split_key_value(&item) else {
                    return Err((line_number, format!("expected `key: value` in {item:?}")));
                };
                pairs.push((map_key, unquote(map_value)));
            }
            entries.push((key, YamlValue::Map(pairs)));
        } else if value.starts_with('[')
            || value.starts_with('{')
            || value.starts_with('|')
            || value.starts_with('>')
        {
            return Err((
                line_number,
                format!("multi-line values are not supported ({key})"),
            ));
        } else {
            entries.push((key, YamlValue::Scalar(unquote(value))));
        }
    }
    if let Some(finished) = open_block.take() {
        entries.push(finished);
    }
    Ok(entries)
}

/// Text with `'` or `"` quoting a scalar that would otherwise be read differently.
pub fn quote_if_needed(value: &str) -> String {
    let needs_quotes = value.is_empty()
        || value.contains([':', '#', '\'', '"', '[', ']', '{', '}', ','])
        || value.starts_with([' ', '-', '&', '*', '!', '|', '>', '%', '@'])
        || value.ends_with(' ');
    if needs_quotes {
        format!("'{}'", value.replace('\'', "''"))
    } else {
        value.to_string()
    }
}

fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (index, character) in line.char_indices() {
        match quote {
            Some(open) if character == open => quote = None,
            Some(_) => {}
            None if character == '\'' || character == '"' => quote = Some(character),
            None if character == '#' && previous.is_whitespace() => return &line[..index],
            None => {}
        }
        previous = character;
    }
    line
}

fn split_key_value(content: &str) -> Option<(String, &str)> {
    let mut quote: Option<char> = None;
    for (index, character) in content.char_indices() {
        match quote {
            Some(open) if character == open => quote = None,
            Some(_) => {}
            None if character == '\'' || character == '"' => quote = Some(character),
            None if character == ':'
                && content[index + 1..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace) =>
            {
                let key = unquote(content[..index].trim());
                return Some((key, content[index + 1..].trim()));
            }
            None => {}
        }
    }
    None
}

fn split_inline(inner: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for character in inner.chars() {
        match quote {
            Some(open) if character == open => {
                quote = None;
                current.push(character);
            }
            Some(_) => current.push(character),
            None if character == '\'' || character == '"' => {
                quote = Some(character);
                current.push(character);
            }
            None if character == ',' => items.push(std::mem::take(&mut current).trim().to_string()),
            None => current.push(character),
        }
    }
    if !current.trim().is_empty() {
        items.push(current.trim().to_string());
    }
    items
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        value[1..value.len() - 1].replace("''", "'")
    } else if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        value[1..value.len() - 1].replace("\\\"", "\"")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Vec<(&str, YamlValue)>, usize>) {
        let actual = parse(text).map_err(|(line, _)| line);
        let expected = expected.map(|entries| {
            entries
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect::<Vec<_>>()
        });
        assert_eq!(actual, expected, "{text}");
    }

    fn scalar(value: &str) -> YamlValue {
        YamlValue::Scalar(value.to_string())
    }

    #[test]
    fn reads_the_forms_ultralytics_files_use() {
        check(
            "# COCO8\npath: ../datasets/coco8 # root\ntrain: images/train\nval: 'images/val'\nnames:\n  0: person\n  1: 'traffic light'\n",
            Ok(vec![
                ("path", scalar("../datasets/coco8")),
                ("train", scalar("images/train")),
                ("val", scalar("images/val")),
                (
                    "names",
                    YamlValue::Map(vec![
                        ("0".into(), "person".into()),
                        ("1".into(), "traffic light".into()),
                    ]),
                ),
            ]),
        );
        check(
            "names: [car, 'bus', \"a, b\"]\nnc: 3\n",
            Ok(vec![
                (
                    "names",
                    YamlValue::List(vec!["car".into(), "bus".into(), "a, b".into()]),
                ),
                ("nc", scalar("3")),
            ]),
        );
        check(
            "names:\n- car\n- truck\nval: v\n",
            Ok(vec![
                ("names", YamlValue::List(vec!["car".into(), "truck".into()])),
                ("val", scalar("v")),
            ]),
        );
        check(
            "names: {0: car, 1: bus}",
            Ok(vec![(
                "names",
                YamlValue::Map(vec![("0".into(), "car".into()), ("1".into(), "bus".into())]),
            )]),
        );
        check("train images/train\n", Err(1));
        check("path: x\n  - a\n", Err(2));
    }
}
