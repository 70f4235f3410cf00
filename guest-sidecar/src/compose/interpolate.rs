//! Compose variable interpolation in string values: `$$` (a literal `$`), `$NAME`,
//! `${NAME}`, `${NAME:-default}` / `${NAME-default}` (default when unset-or-empty / unset),
//! `${NAME:?message}` / `${NAME?message}` (error when unset-or-empty / unset). An unset
//! name without a default becomes the empty string, as in docker compose. Defaults are
//! taken literally (no nested substitution).

use std::collections::BTreeMap;

/// Substitutes variables in `s` from `env`. The error is a message for the caller to put
/// after the field path.
pub fn interpolate(s: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    interpolate_with(s, env, true)
}

/// As [`interpolate`]; with `strict = false`, `${NAME:?…}` / `${NAME?…}` of an unset name
/// give the empty string instead of an error (for checking a compose before its env is known).
pub fn interpolate_with(
    s: &str,
    env: &BTreeMap<String, String>,
    strict: bool,
) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {s:?}"))?;
            out.push_str(&expand_braced(&body[..end], env, strict)?);
            rest = &body[end + 1..];
        } else {
            let len = after
                .char_indices()
                .find(|&(j, c)| {
                    !(c == '_' || c.is_ascii_alphanumeric()) || (j == 0 && c.is_ascii_digit())
                })
                .map(|(j, _)| j)
                .unwrap_or(after.len());
            if len == 0 {
                return Err(format!(
                    "\"$\" not followed by a name in {s:?} (write $$ for a literal $)"
                ));
            }
            out.push_str(env.get(&after[..len]).map(String::as_str).unwrap_or(""));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand_braced(
    body: &str,
    env: &BTreeMap<String, String>,
    strict: bool,
) -> Result<String, String> {
    let name_len = body
        .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if !super::is_env_name(name) {
        return Err(format!("bad variable name in \"${{{body}}}\""));
    }
    let value = env.get(name);
    let op = &body[name_len..];
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let (ok, arg, is_error) = match op {
        "" => return Ok(value.cloned().unwrap_or_default()),
        _ if op.starts_with(":-") => (set_nonempty, &op[2..], false),
        _ if op.starts_with('-') => (value.is_some(), &op[1..], false),
        _ if op.starts_with(":?") => (set_nonempty, &op[2..], true),
        _ if op.starts_with('?') => (value.is_some(), &op[1..], true),
        _ => return Err(format!("unsupported substitution \"${{{body}}}\"")),
    };
    match (ok, is_error) {
        (true, _) => Ok(value.cloned().unwrap_or_default()),
        (false, false) => Ok(arg.to_string()),
        (false, true) if strict => Err(format!("required variable {name} is missing: {arg}")),
        (false, true) => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_forms() {
        let env: BTreeMap<String, String> = [("A".into(), "1".into()), ("E".into(), "".into())]
            .into_iter()
            .collect();
        assert_eq!(interpolate("x$A-${A}$$", &env).unwrap(), "x1-1$");
        assert_eq!(
            interpolate("${B:-d}|${E:-d}|${E-d}|$B", &env).unwrap(),
            "d|d||"
        );
        assert!(interpolate("${B:?need B}", &env)
            .unwrap_err()
            .contains("need B"));
        assert!(interpolate("${A", &env).is_err());
        assert!(interpolate("cost $5", &env).is_err());
    }
}
