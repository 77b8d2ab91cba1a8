//! Placeholders in spec strings: `{service}`, `{replica}`, `{port}`, `{pid}`,
//! `{token}`.
//! `{{` and `}}` stand for literal braces. Validation (`check`) rejects
//! unknown or misplaced placeholders, so expansion here cannot fail.

/// The values a template may refer to.
pub struct Vars<'a> {
    pub service: &'a str,
    pub replica: u32,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    /// The fencing token of a cluster-scope promotion.
    pub token: Option<u64>,
}

/// A piece of a template.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'t> {
    Text(&'t str),
    Placeholder(&'t str),
}

/// Splits a template into text and placeholders. `Err(offset)` points at an
/// unbalanced brace (byte offset into the template).
pub fn pieces(template: &str) -> Result<Vec<Piece<'_>>, usize> {
    let mut out = Vec::new();
    let bytes = template.as_bytes();
    let (mut i, mut text_start) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => {
                out.push(Piece::Text(&template[text_start..=i]));
                i += 2;
                text_start = i;
            }
            b'{' => {
                let close = template[i..].find('}').ok_or(i)? + i;
                if text_start < i {
                    out.push(Piece::Text(&template[text_start..i]));
                }
                out.push(Piece::Placeholder(&template[i + 1..close]));
                i = close + 1;
                text_start = i;
            }
            b'}' => return Err(i),
            _ => i += 1,
        }
    }
    if text_start < bytes.len() {
        out.push(Piece::Text(&template[text_start..]));
    }
    Ok(out)
}

/// Expands a validated template. Unknown placeholders (which validation
/// rejects) are kept as written.
pub fn expand(template: &str, vars: &Vars) -> String {
    expand_with(template, |name| match name {
        "service" => Some(vars.service.to_string()),
        "replica" => Some(vars.replica.to_string()),
        "port" => vars.port.map(|p| p.to_string()),
        "pid" => vars.pid.map(|p| p.to_string()),
        "token" => vars.token.map(|t| t.to_string()),
        _ => None,
    })
}

/// Expands a template with `value(name)` for each placeholder; one it has
/// no value for is kept as written.
pub fn expand_with(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let Ok(pieces) = pieces(template) else {
        return template.to_string();
    };
    let mut out = String::with_capacity(template.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(name) => match value(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            service: "api",
            replica: 2,
            port: Some(8002),
            pid: None,
            token: None,
        }
    }

    #[test]
    fn expands_every_placeholder() {
        assert_eq!(expand("{service}-{replica}:{port}", &vars()), "api-2:8002");
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(expand("{{x}} {replica}", &vars()), "{x} 2");
    }

    #[test]
    fn unbalanced_braces_are_reported_with_offset() {
        assert_eq!(pieces("ab{port"), Err(2));
        assert_eq!(pieces("a}b"), Err(1));
    }
}
