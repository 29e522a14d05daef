//! `--format` for listing commands, the way Docker's hands type it: `json` (one JSON object
//! per line), a template such as `'{{.ID}}\t{{.Names}}'`, or `table` followed by a template
//! (a header row of the field names, then the rows). Templates know only `{{.Field}}` (and
//! `{{json .Field}}` for the JSON form of one field): the common fields of each command, not
//! Go's whole template language. An unknown field is an error that lists the known ones.

use std::collections::BTreeMap;

/// One row: field name to value, in a stable order.
pub type Row = BTreeMap<&'static str, String>;

/// A parsed `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per row.
    Json,
    /// The template per row, after a header row when `table` is set.
    Template { parts: Vec<Part>, table: bool },
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Field(String),
    /// `{{json .Field}}`: the field as a JSON string.
    JsonField(String),
}

impl Format {
    /// Parses `spec`; `fields` are the names this command's rows have.
    pub fn parse(spec: &str, fields: &[&str]) -> Result<Format, String> {
        if spec.trim() == "json" {
            return Ok(Format::Json);
        }
        let (template, table) = match spec.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (rest.trim_start(), true)
            }
            _ => (spec, false),
        };
        let parts = parse_template(&unescape(template), fields)?;
        Ok(Format::Template { parts, table })
    }

    /// Renders `rows`, one line each (plus the header of a table).
    pub fn render(&self, rows: &[Row]) -> String {
        let mut out = String::new();
        match self {
            Format::Json => {
                for row in rows {
                    out.push_str(&serde_json::to_string(row).unwrap_or_default());
                    out.push('\n');
                }
            }
            Format::Template { parts, table } => {
                if *table {
                    for part in parts {
                        match part {
                            Part::Text(t) => out.push_str(t),
                            Part::Field(f) | Part::JsonField(f) => {
                                out.push_str(&header_name(f));
                            }
                        }
                    }
                    out.push('\n');
                }
                for row in rows {
                    for part in parts {
                        match part {
                            Part::Text(t) => out.push_str(t),
                            Part::Field(f) => {
                                out.push_str(row.get(f.as_str()).map_or("", |v| v.as_str()));
                            }
                            Part::JsonField(f) => out.push_str(
                                &serde_json::to_string(row.get(f.as_str()).map_or("", |v| v))
                                    .unwrap_or_default(),
                            ),
                        }
                    }
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// `\t` and `\n` typed in a shell argument mean a tab and a newline, as in Docker.
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t").replace("\\n", "\n")
}

/// `CreatedAt` → `CREATED AT`, `ID` → `ID`, `Names` → `NAMES`.
fn header_name(field: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = field.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let prev_lower = i > 0 && chars[i - 1].is_lowercase();
        if i > 0 && c.is_uppercase() && (prev_lower || next_lower) {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

fn parse_template(template: &str, fields: &[&str]) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("--format: unclosed {{{{ in {template:?}"))?;
        let action = after[..close].trim();
        let (json, name) = match action.strip_prefix("json") {
            Some(arg) if arg.starts_with(char::is_whitespace) => (true, arg.trim()),
            _ => (false, action),
        };
        let field = name
            .strip_prefix('.')
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                format!("--format: {{{{{action}}}}} is not a field (write {{{{.Field}}}})")
            })?;
        if !fields.contains(&field) {
            return Err(format!(
                "--format: no field {field:?}; the fields are {}",
                fields.join(", ")
            ));
        }
        parts.push(if json {
            Part::JsonField(field.to_owned())
        } else {
            Part::Field(field.to_owned())
        });
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &["ID", "Names", "CreatedAt"];

    fn row(id: &str, name: &str) -> Row {
        Row::from([
            ("ID", id.to_owned()),
            ("Names", name.to_owned()),
            ("CreatedAt", "2026-12-02 10:00:00 +0000 UTC".to_owned()),
        ])
    }

    #[test]
    fn templates_tables_and_json_render_like_docker() {
        let rows = [row("abc", "web"), row("def", "db \"x\"")];
        let f = Format::parse("{{.ID}}\\t{{.Names}}", FIELDS).unwrap();
        assert_eq!(f.render(&rows), "abc\tweb\ndef\tdb \"x\"\n");
        let f = Format::parse("table {{.ID}}  {{.CreatedAt}}", FIELDS).unwrap();
        assert_eq!(
            f.render(&rows[..1]),
            "ID  CREATED AT\nabc  2026-12-02 10:00:00 +0000 UTC\n"
        );
        let f = Format::parse("json", FIELDS).unwrap();
        let line = f.render(&rows[1..]);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["Names"], "db \"x\"");
        let f = Format::parse("{{json .Names}}", FIELDS).unwrap();
        assert_eq!(f.render(&rows[1..]), "\"db \\\"x\\\"\"\n");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert_eq!(
            Format::parse("{{.Nope}}", FIELDS).unwrap_err(),
            "--format: no field \"Nope\"; the fields are ID, Names, CreatedAt"
        );
        assert!(Format::parse("{{.ID", FIELDS)
            .unwrap_err()
            .contains("unclosed"));
        assert!(Format::parse("{{ID}}", FIELDS)
            .unwrap_err()
            .contains("not a field"));
        // "tablet" is a template, not "table" + "t".
        assert_eq!(
            Format::parse("tablet", FIELDS).unwrap(),
            Format::Template {
                parts: vec![Part::Text("tablet".into())],
                table: false
            }
        );
    }
}
