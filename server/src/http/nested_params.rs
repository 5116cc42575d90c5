//! Rails/Plug-style nested parameters (`cmd[keys][]=a`, `data[color]=blue`),
//! as the ExDaas clients send them in query strings and form bodies.
//!
//! `a[b][c]=v` sets `a.b.c` to `"v"`; `a[]=v` appends `"v"` to the list
//! `a`; `a[][k]=v` appends an object or adds `k` to the last one (Plug's
//! rule). All leaf values are strings. Conflicting shapes (`a=1&a[b]=2`) are
//! an error rather than a silent overwrite.
//!
//! Client input sets the shape of the tree, so both its depth and its size
//! are bounded: a name nests at most [`MAX_NESTING`] levels and a text holds
//! at most [`MAX_PARAMS`] parameters. Within those bounds the recursion in
//! `insert` (and in serde_json's handling of the tree it builds) is shallow.

use serde_json::{Map, Value};

/// Most bracketed levels under one parameter name (`a[b][c]` has 2).
pub const MAX_NESTING: usize = 32;
/// Most parameters in one query string or form body.
pub const MAX_PARAMS: usize = 10_000;

/// A parameter name that cannot be placed in the tree.
#[derive(Debug, PartialEq, Eq)]
pub struct ParamError(pub String);

/// Splits `a[b][]` into `["a", "b", ""]`.
fn segments(name: &str) -> Result<Vec<&str>, ParamError> {
    let bad = || {
        ParamError(format!(
            "malformed parameter name {:?}",
            crate::ijson::quote(name)
        ))
    };
    let (head, mut rest) = match name.find('[') {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, ""),
    };
    if head.is_empty() {
        return Err(bad());
    }
    let mut out = vec![head];
    while !rest.is_empty() {
        if out.len() > MAX_NESTING {
            return Err(ParamError(format!(
                "parameter {:?} nests more than {MAX_NESTING} levels",
                crate::ijson::quote(name)
            )));
        }
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let close = inner.find(']').ok_or_else(bad)?;
        out.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    Ok(out)
}

fn insert(target: &mut Value, path: &[&str], value: String, name: &str) -> Result<(), ParamError> {
    let conflict = || {
        ParamError(format!(
            "parameter {:?} conflicts with another parameter of the same name",
            crate::ijson::quote(name)
        ))
    };
    let Some((first, rest)) = path.split_first() else {
        return Err(conflict());
    };
    if first.is_empty() {
        // A list element.
        let list = target.as_array_mut().ok_or_else(conflict)?;
        if rest.is_empty() {
            list.push(Value::String(value));
            return Ok(());
        }
        // `a[][k]=v`: start a new object unless the last one lacks `k`.
        let start_new = match list.last() {
            Some(Value::Object(last)) => rest.first().is_some_and(|k| last.contains_key(*k)),
            _ => true,
        };
        if start_new {
            list.push(Value::Object(Map::new()));
        }
        let last = list.last_mut().ok_or_else(conflict)?;
        return insert(last, rest, value, name);
    }
    let map = target.as_object_mut().ok_or_else(conflict)?;
    if rest.is_empty() {
        if map.contains_key(*first) {
            return Err(conflict());
        }
        map.insert((*first).to_owned(), Value::String(value));
        return Ok(());
    }
    let child = map.entry((*first).to_owned()).or_insert_with(|| {
        if rest[0].is_empty() {
            Value::Array(Vec::new())
        } else {
            Value::Object(Map::new())
        }
    });
    insert(child, rest, value, name)
}

/// Parses `application/x-www-form-urlencoded` text into a JSON object.
pub fn parse(text: &str) -> Result<Value, ParamError> {
    let mut root = Value::Object(Map::new());
    for (count, (name, value)) in form_urlencoded::parse(text.as_bytes()).enumerate() {
        if count >= MAX_PARAMS {
            return Err(ParamError(format!("more than {MAX_PARAMS} parameters")));
        }
        let path = segments(&name)?;
        insert(&mut root, &path, value.into_owned(), &name)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_names_build_trees() {
        assert_eq!(
            parse("id=&data[color]=blue&data[size][w]=3").unwrap(),
            json!({"id":"","data":{"color":"blue","size":{"w":"3"}}})
        );
        assert_eq!(
            parse("id=1&cmd[query]=ONLY&cmd[keys][]=color&cmd[keys][]=uhh%20oh").unwrap(),
            json!({"id":"1","cmd":{"query":"ONLY","keys":["color","uhh oh"]}})
        );
        assert_eq!(
            parse("cmd[keys][key]=colors&cmd[keys][by]=is_blue").unwrap(),
            json!({"cmd":{"keys":{"key":"colors","by":"is_blue"}}})
        );
        assert_eq!(
            parse("l[][a]=1&l[][b]=2&l[][a]=3").unwrap(),
            json!({"l":[{"a":"1","b":"2"},{"a":"3"}]})
        );
    }

    #[test]
    fn conflicts_and_bad_names_are_errors() {
        assert!(parse("a=1&a[b]=2").is_err());
        assert!(parse("a[b]=1&a=2").is_err());
        assert!(parse("a[]=1&a[b]=2").is_err());
        assert!(parse("[x]=1").is_err());
        assert!(parse("a[b=1").is_err());
        assert!(parse("a[b]x=1").is_err());
    }

    #[test]
    fn depth_and_count_are_bounded() {
        let deep = |n: usize| format!("a{}=1", "[a]".repeat(n));
        assert!(parse(&deep(MAX_NESTING)).is_ok());
        let err = parse(&deep(MAX_NESTING + 1)).unwrap_err();
        assert!(err.0.contains("nests more than"), "{}", err.0);
        // The reported crash: about 5,000 levels in 15 KB.
        assert!(parse(&deep(5_000)).is_err());
        let many = vec!["a[]=1"; MAX_PARAMS].join("&");
        assert!(parse(&many).is_ok());
        assert!(parse(&format!("{many}&a[]=2")).is_err());
        assert!(err.0.len() < 200);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// How deep a parsed tree nests.
        fn depth(v: &Value) -> usize {
            match v {
                Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Any text: no panic, and the tree is no deeper than the bound.
            #[test]
            fn any_text_gives_a_bounded_tree_or_an_error(
                text in "[a-c\\[\\]=&%0-9]{0,200}"
            ) {
                if let Ok(tree) = parse(&text) {
                    prop_assert!(depth(&tree) <= MAX_NESTING + 2);
                }
            }

            /// Names nested past the bound are refused, however deep.
            #[test]
            fn deep_names_are_refused(levels in (MAX_NESTING + 1)..5_000usize) {
                let text = format!("a{}=1", "[a]".repeat(levels));
                prop_assert!(parse(&text).is_err());
            }
        }
    }
}
