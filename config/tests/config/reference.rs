//! `docs/configuration.md` documents every key each component accepts, and
//! nothing else; and every default it states is the one the code applies.
//!
//! The accepted keys come from [`teegate_config::component_keys`], which walks
//! the config types, so a new field fails this test until it is documented.
//!
//! The reference's format: a `## ` heading whose first word is a component
//! (`## Gateway …`, `## Sidecar …`, `## KMS …`, `## DNS …`) starts that
//! component's part; any other `## ` heading ends it. In it, every table row
//! whose first cell is one backticked dotted key (`` `tls.acme.directory_url` ``)
//! documents that key; a segment the user names is written `<name>`
//! (`` `policy.apps.<app-id>.compose_hashes` ``). A row under a `### ` heading
//! that names a table (`` ### `[tls.acme]` ``) must lie in that table. The
//! third cell is the default: when it is exactly one backticked TOML value
//! (`` `443` ``, `` `"acme"` ``, `` `[]` ``), setting the key to it must
//! change nothing compared to leaving the key out (checked on the
//! component's example file); prose defaults are not checked.
//!
//! To print the rows for keys not yet documented, in the table's format:
//! `cargo test -p teegate-config --test config reference -- --nocapture`
//! (they are also in the failure message). To print every row:
//! `cargo test -p teegate-config --test config print_reference_rows -- --ignored --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use teegate_config::{
    component_keys, from_toml_str_with_env, ConfigKey, DnsConfig, GatewayConfig, KmsConfig,
    SidecarConfig, COMPONENTS,
};
use toml::{Table, Value};

const DOC: &str = "docs/configuration.md";

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DOC)
}

/// One documented key.
#[derive(Debug)]
struct Row {
    component: &'static str,
    /// As written, e.g. `policy.apps.<app-id>.compose_hashes`.
    written: String,
    /// With `<name>` segments as `*`, as [`component_keys`] lists them.
    key: String,
    /// The `[table]` of the `###` heading above, if any.
    section: Option<String>,
    default: String,
    line: usize,
}

/// Splits a table row into trimmed cells (`\|` does not split).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// The text of a cell that is exactly one backticked span.
fn code(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && !inner.contains('`')).then_some(inner)
}

fn normalise(written: &str) -> String {
    written
        .split('.')
        .map(|seg| {
            if seg.starts_with('<') && seg.ends_with('>') {
                "*"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn parse_doc(text: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut component = None;
    let mut section = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(heading) = line.strip_prefix("## ") {
            let first = heading
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            component = COMPONENTS.into_iter().find(|c| *c == first);
            section = None;
        } else if let Some(heading) = line.strip_prefix("### ") {
            section = heading
                .split('`')
                .skip(1)
                .step_by(2)
                .find_map(|s| s.strip_prefix('[')?.strip_suffix(']'))
                .map(normalise);
        } else if line.trim_start().starts_with('|') {
            let Some(component) = component else { continue };
            let cells = cells(line);
            let Some(written) = cells.first().and_then(|c| code(c)) else {
                continue;
            };
            rows.push(Row {
                component,
                written: written.to_owned(),
                key: normalise(written),
                section: section.clone(),
                default: cells.get(2).cloned().unwrap_or_default(),
                line: i + 1,
            });
        }
    }
    rows
}

fn read_doc() -> Vec<Row> {
    let text = std::fs::read_to_string(doc_path())
        .unwrap_or_else(|e| panic!("cannot read {DOC} ({}): {e}", doc_path().display()));
    parse_doc(&text)
}

/// A row to paste for a key that is not documented yet.
fn template(key: &ConfigKey) -> String {
    let written = key.key.replace('*', "<name>");
    let kind = key.kind.replace('|', "\\|");
    format!("| `{written}` | {kind} | TODO default | TODO what it does |")
}

#[test]
fn reference_documents_exactly_the_accepted_keys() {
    let rows = read_doc();
    let mut problems = Vec::new();
    for component in COMPONENTS {
        let accepted = component_keys(component).expect("a known component");
        let accepted_set: BTreeSet<&str> = accepted.iter().map(|k| k.key.as_str()).collect();
        let mut documented: BTreeMap<&str, &Row> = BTreeMap::new();
        for row in rows.iter().filter(|r| r.component == component) {
            if let Some(first) = documented.insert(&row.key, row) {
                problems.push(format!(
                    "{DOC}:{}: `{}` ({component}) is documented twice (also line {})",
                    row.line, row.written, first.line
                ));
            }
            if let Some(section) = &row.section {
                if !row.key.starts_with(&format!("{section}.")) {
                    problems.push(format!(
                        "{DOC}:{}: `{}` ({component}) is listed under `[{section}]`, not its own table",
                        row.line, row.written
                    ));
                }
            }
        }
        let missing: Vec<&ConfigKey> = accepted
            .iter()
            .filter(|k| !documented.contains_key(k.key.as_str()))
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|k| k.key.as_str()).collect();
            let templates: Vec<String> = missing.iter().map(|k| template(k)).collect();
            println!(
                "rows to add to the {component} part of {DOC}:\n{}",
                templates.join("\n")
            );
            problems.push(format!(
                "{DOC}: {component} accepts keys the reference does not document: {}\n  rows to add (fill in the type, default and meaning):\n  {}",
                names.join(", "),
                templates.join("\n  ")
            ));
        }
        for row in documented.values() {
            if !accepted_set.contains(row.key.as_str()) {
                problems.push(format!(
                    "{DOC}:{}: `{}` is documented for {component}, which does not accept it",
                    row.line, row.written
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{DOC} is out of date with the config types:\n{}",
        problems.join("\n")
    );
}

/// The overrides the example file needs to load: the etcd password, when
/// the table still has `[store.etcd]` with a user name; the DNS API token,
/// which the example leaves to the environment.
fn example_env(component: &str, table: &Table) -> Vec<(String, String)> {
    if component == "dns" {
        return vec![(
            "TEEGATE_DNS__API__TOKEN".to_owned(),
            "dns-api-token-0123456789".to_owned(),
        )];
    }
    let etcd_user = table
        .get("store")
        .and_then(|s| s.get("etcd"))
        .and_then(|e| e.get("username"))
        .is_some();
    if component == "gateway" && etcd_user {
        vec![(
            "TEEGATE_GATEWAY__STORE__ETCD__PASSWORD".to_owned(),
            "etcd-password".to_owned(),
        )]
    } else {
        Vec::new()
    }
}

/// The config loaded from `table`, in `Debug` form (secrets print `***`).
fn load_debug(component: &str, table: &Table) -> Result<String, String> {
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    let env = example_env(component, table);
    let debug = match component {
        "gateway" => from_toml_str_with_env::<GatewayConfig>(&text, env).map(|c| format!("{c:?}")),
        "sidecar" => from_toml_str_with_env::<SidecarConfig>(&text, env).map(|c| format!("{c:?}")),
        "kms" => from_toml_str_with_env::<KmsConfig>(&text, env).map(|c| format!("{c:?}")),
        "dns" => from_toml_str_with_env::<DnsConfig>(&text, env).map(|c| format!("{c:?}")),
        other => panic!("unknown component {other}"),
    };
    debug.map_err(|e| e.to_string())
}

/// The table at `parents` in `root`, made (replacing a non-table) if
/// absent, and whether anything had to be made. A `*` segment takes the
/// table's first existing key.
fn table_at<'t>(root: &'t mut Table, parents: &[&str]) -> Option<(&'t mut Table, bool)> {
    let mut table = root;
    let mut made = false;
    for seg in parents {
        let name = if *seg == "*" {
            table.keys().next()?.clone()
        } else {
            (*seg).to_owned()
        };
        let slot = table.entry(name).or_insert_with(|| {
            made = true;
            Value::Table(Table::new())
        });
        if !slot.is_table() {
            *slot = Value::Table(Table::new());
        }
        table = slot.as_table_mut().expect("just made a table");
    }
    Some((table, made))
}

#[test]
fn documented_defaults_are_the_real_ones() {
    let rows = read_doc();
    let mut problems = Vec::new();
    let mut checked = 0;
    for row in &rows {
        let Some(literal) = code(&row.default) else {
            continue;
        };
        let Ok(value) = format!("v = {literal}")
            .parse::<Table>()
            .map(|mut t| t.remove("v").expect("one key"))
        else {
            continue;
        };
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(format!("{}.toml", row.component));
        let mut base: Table = std::fs::read_to_string(&example)
            .expect("example readable")
            .parse()
            .expect("example parses");
        let segs: Vec<&str> = row.key.split('.').collect();
        let (last, parents) = segs.split_last().expect("a key has a segment");
        let Some((parent, made)) = table_at(&mut base, parents) else {
            println!(
                "{DOC}:{}: default of `{}` not checked: the example has no entry in that table",
                row.line, row.written
            );
            continue;
        };
        parent.remove(*last);
        let without = load_debug(row.component, &base);
        if made && without.is_err() {
            // An optional table the example leaves out, which needs other keys.
            println!(
                "{DOC}:{}: default of {}.{} not checked: config/examples/{}.toml has no such table",
                row.line, row.component, row.written, row.component
            );
            continue;
        }
        let mut with = base.clone();
        table_at(&mut with, parents)
            .expect("exists in the copy")
            .0
            .insert((*last).to_owned(), value);
        let with = load_debug(row.component, &with);
        checked += 1;
        match (without, with) {
            (Ok(a), Ok(b)) if a == b => {}
            (Ok(_), Ok(_)) => problems.push(format!(
                "{DOC}:{}: {}.{} = {literal} is not the default (setting it changes the loaded config)",
                row.line, row.component, row.written
            )),
            (Err(e), _) => problems.push(format!(
                "{DOC}:{}: {}.{} has a documented default, but leaving it out fails: {e}",
                row.line, row.component, row.written
            )),
            (_, Err(e)) => problems.push(format!(
                "{DOC}:{}: {}.{} = {literal} (the documented default) is refused: {e}",
                row.line, row.component, row.written
            )),
        }
    }
    assert!(
        checked > 50,
        "only {checked} defaults checked: is {DOC} parsed?"
    );
    assert!(
        problems.is_empty(),
        "{DOC} states wrong defaults:\n{}",
        problems.join("\n")
    );
}

#[test]
fn doc_parser_reads_keys_sections_and_defaults() {
    let rows = parse_doc(
        "## Gateway\n### `[tls.acme]`\n| key | type | default | what |\n|---|---|---|---|\n\
         | `tls.acme.contact` | a \\| b | `[]` | x |\n## Notes\n| `ignored` | | | |\n\
         ## KMS\n| `policy.apps.<app-id>.allow_simulated` | bool | `false` | y |\n",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].component, "gateway");
    assert_eq!(rows[0].section.as_deref(), Some("tls.acme"));
    assert_eq!(rows[0].default, "`[]`");
    assert_eq!(rows[1].component, "kms");
    assert_eq!(rows[1].key, "policy.apps.*.allow_simulated");
}

/// Prints every component's rows in the reference's format (a starting
/// point when restructuring the reference).
#[test]
#[ignore = "prints the reference's rows; run with --ignored --nocapture"]
fn print_reference_rows() {
    for component in COMPONENTS {
        println!("## {component}\n| key | type | default | what it does |\n|---|---|---|---|");
        for key in component_keys(component).expect("a known component") {
            println!("{}", template(&key));
        }
        println!();
    }
}
