//! Keeps the README's configuration reference and the configuration structs in step: every key
//! the relay reads must appear in the reference block, so no setting is left undocumented.

use std::collections::BTreeSet;

/// The key paths the `Raw*` structs of `config.rs` declare, read from the source: one entry per
/// field, with nested tables as dotted paths (`smtp.limits.max_errors`) and the free-form keys of
/// a map (`delivery.domains.<domain>`) as `*`.
fn declared_keys(source: &str) -> BTreeSet<String> {
    let mut structs = std::collections::BTreeMap::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("pub(crate) struct ")
            .and_then(|rest| rest.strip_suffix(" {"))
        else {
            continue;
        };
        if !name.starts_with("Raw") {
            continue;
        }
        let mut fields = Vec::new();
        for field in lines.by_ref() {
            let field = field.trim();
            if field == "}" {
                break;
            }
            if let Some((key, ty)) = field
                .strip_prefix("pub(crate) ")
                .and_then(|f| f.strip_suffix(','))
                .and_then(|f| f.split_once(": "))
            {
                fields.push((key.to_owned(), ty.to_owned()));
            }
        }
        structs.insert(name.to_owned(), fields);
    }
    let mut keys = BTreeSet::new();
    walk(&structs, "RawConfig", "", &mut keys);
    keys
}

fn walk(
    structs: &std::collections::BTreeMap<String, Vec<(String, String)>>,
    name: &str,
    prefix: &str,
    keys: &mut BTreeSet<String>,
) {
    let fields = structs
        .get(name)
        .unwrap_or_else(|| panic!("struct {name} not found in config.rs"));
    for (key, ty) in fields {
        let path = format!("{prefix}{key}");
        let nested = ty
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .find(|word| word.starts_with("Raw") && structs.contains_key(*word));
        match nested {
            Some(inner) if ty.starts_with("std::collections::BTreeMap<String") => {
                walk(structs, inner, &format!("{path}.*."), keys);
            }
            Some(inner) => walk(structs, inner, &format!("{path}."), keys),
            None => {
                keys.insert(path);
            }
        }
    }
}

/// The key paths present in a parsed TOML document, with the same conventions.
fn documented_keys(value: &toml::Value, prefix: &str, maps: &[&str], keys: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table {
                let key = if maps.contains(&prefix.trim_end_matches('.')) {
                    "*"
                } else {
                    key.as_str()
                };
                let path = format!("{prefix}{key}");
                match inner {
                    toml::Value::Table(_) => {
                        documented_keys(inner, &format!("{path}."), maps, keys);
                    }
                    toml::Value::Array(items)
                        if items.first().is_some_and(toml::Value::is_table) =>
                    {
                        for item in items {
                            documented_keys(item, &format!("{path}."), maps, keys);
                        }
                    }
                    _ => {
                        keys.insert(path);
                    }
                }
            }
        }
        _ => panic!("not a table at {prefix}"),
    }
}

#[test]
fn every_configuration_key_is_in_the_readme_reference() {
    let declared = declared_keys(include_str!("../config.rs"));
    assert!(
        declared.contains("smtp.limits.max_errors") && declared.contains("delivery.domains.*.tls"),
        "the source scan found too little: {declared:?}"
    );
    let readme = include_str!("../../../../README.md");
    let start = readme
        .find("```toml\nhostname")
        .expect("the configuration reference block in the README")
        + "```toml\n".len();
    let block = &readme[start..start + readme[start..].find("```").expect("closed block")];
    let value: toml::Value = toml::from_str(block).expect("the reference block is TOML");
    let mut documented = BTreeSet::new();
    documented_keys(&value, "", &["delivery.domains"], &mut documented);
    let missing: Vec<_> = declared.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "configuration keys missing from the README's configuration reference: {missing:?}"
    );
}
