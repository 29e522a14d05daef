//! `bulkhead ps`: list containers (running ones, or all with `-a`), filtered (`--filter`) and
//! formatted (`--format`) the way `docker ps` does.

use std::time::{Duration, UNIX_EPOCH};

use super::format::{Format, Row};
use super::{Ctx, UsageError};
use crate::state::State;

/// The fields of a row for `--format`.
const FIELDS: &[&str] = &[
    "ID",
    "Image",
    "Command",
    "CreatedAt",
    "RunningFor",
    "Ports",
    "State",
    "Status",
    "Names",
    "Isolation",
];
/// What `--filter` takes.
const FILTER_KEYS: &[&str] = &["id", "name", "status", "ancestor", "isolation"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only print ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Do not truncate ids and commands.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only containers matching KEY=VALUE: id (a prefix), name (a substring), status
    /// (created, running, exited, dead; looks at all containers), ancestor (the image),
    /// isolation (vm, container). The same key twice matches either; different keys both.
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// json (one object per line), a template like '{{.ID}}\t{{.Names}}', or 'table ' and a
    /// template (with a header row).
    #[arg(long)]
    pub format: Option<String>,
}

/// Parsed `--filter`s: (key, value) pairs.
#[derive(Debug, Default, PartialEq, Eq)]
struct Filters(Vec<(String, String)>);

impl Filters {
    fn parse(specs: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for spec in specs {
            let (key, value) = spec
                .split_once('=')
                .ok_or_else(|| format!("--filter {spec:?}: expected KEY=VALUE"))?;
            if !FILTER_KEYS.contains(&key) {
                return Err(format!(
                    "--filter {spec:?}: no filter {key:?}; the filters are {}",
                    FILTER_KEYS.join(", ")
                ));
            }
            out.push((key.to_owned(), value.to_owned()));
        }
        Ok(Filters(out))
    }

    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Every key given matches (one of its values).
    fn matches(&self, s: &State) -> bool {
        FILTER_KEYS.iter().filter(|k| self.has(k)).all(|key| {
            self.0
                .iter()
                .filter(|(k, _)| k == key)
                .any(|(_, v)| match *key {
                    "id" => s.id.starts_with(v.as_str()),
                    "name" => s.name.contains(v.as_str()),
                    "status" => state_word(s) == v,
                    "ancestor" => s.config.image == *v,
                    "isolation" => s.isolation.to_string() == *v,
                    _ => false,
                })
        })
    }
}

/// Docker's one-word state: created, running, exited or dead.
fn state_word(s: &State) -> &'static str {
    let status = s.display_status();
    match status.split_whitespace().next() {
        Some("running") => "running",
        Some("created") => "created",
        Some("dead") => "dead",
        _ => "exited",
    }
}

fn row(s: &State, no_trunc: bool) -> Row {
    let ports = if s.is_running() {
        crate::network::ports_column(&s.config.publish)
    } else {
        String::new()
    };
    Row::from([
        ("ID", short_id(s, no_trunc)),
        ("Image", s.config.image.clone()),
        ("Command", format!("\"{}\"", s.command.join(" "))),
        (
            "CreatedAt",
            bulkhead_log::rfc3339(UNIX_EPOCH + Duration::from_secs(s.created_at)),
        ),
        ("RunningFor", super::ago(s.created_at)),
        ("Ports", ports),
        ("State", state_word(s).to_owned()),
        ("Status", s.display_status()),
        ("Names", s.name.clone()),
        ("Isolation", s.isolation.to_string()),
    ])
}

fn short_id(s: &State, no_trunc: bool) -> String {
    if no_trunc {
        s.id.clone()
    } else {
        s.id.get(..12).unwrap_or(&s.id).to_owned()
    }
}

fn trunc(s: &str, n: usize, no_trunc: bool) -> String {
    if no_trunc || s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let filters = Filters::parse(&args.filter).map_err(UsageError)?;
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse(f, FIELDS))
        .transpose()
        .map_err(UsageError)?;
    // As in Docker, a status filter looks at every container.
    let all = args.all || filters.has("status");
    let list: Vec<_> = ctx
        .containers()
        .list()
        .into_iter()
        .filter(|s| all || s.is_running())
        .filter(|s| filters.matches(s))
        .collect();
    if let Some(format) = format {
        let rows: Vec<Row> = list.iter().map(|s| row(s, args.no_trunc)).collect();
        print!("{}", format.render(&rows));
        return Ok(());
    }
    if args.quiet {
        for s in list {
            println!(
                "{}",
                if args.no_trunc {
                    &s.id
                } else {
                    s.id.get(..12).unwrap_or(&s.id)
                }
            );
        }
        return Ok(());
    }
    println!(
        "{:<12}  {:<24}  {:<22}  {:<16}  {:<12}  {:<9}  {:<24}  NAME",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "ISOLATION", "PORTS"
    );
    for s in list {
        let id = if args.no_trunc {
            s.id.clone()
        } else {
            s.id.get(..12).unwrap_or(&s.id).to_owned()
        };
        let cmd = format!("\"{}\"", s.command.join(" "));
        // Published ports while they are (Docker shows none for a stopped container).
        let ports = if s.is_running() {
            crate::network::ports_column(&s.config.publish)
        } else {
            String::new()
        };
        println!(
            "{:<12}  {:<24}  {:<22}  {:<16}  {:<12}  {:<9}  {:<24}  {}",
            id,
            trunc(&s.config.image, 24, args.no_trunc),
            trunc(&cmd, 22, args.no_trunc),
            super::ago(s.created_at),
            s.display_status(),
            s.isolation.to_string(),
            ports,
            s.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{test_state, Isolation};

    fn filters(specs: &[&str]) -> Filters {
        Filters::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn filters_combine_like_dockers() {
        let mut web = test_state("abc123", "web-1");
        web.config.image = "nginx:1".into();
        let mut db = test_state("def456", "db");
        db.isolation = Isolation::Vm;
        assert!(filters(&[]).matches(&web));
        assert!(filters(&["name=web"]).matches(&web));
        assert!(!filters(&["name=web"]).matches(&db));
        // The same key twice: either; two keys: both.
        assert!(filters(&["name=web", "name=db"]).matches(&db));
        assert!(!filters(&["name=web", "isolation=vm"]).matches(&web));
        assert!(filters(&["id=def", "isolation=vm"]).matches(&db));
        assert!(filters(&["ancestor=nginx:1", "status=exited"]).matches(&web));
        assert!(!filters(&["status=running"]).matches(&web));
    }

    #[test]
    fn bad_filters_are_usage_errors_that_list_the_keys() {
        let e = Filters::parse(&["colour=red".into()]).unwrap_err();
        assert_eq!(
            e,
            "--filter \"colour=red\": no filter \"colour\"; the filters are id, name, status, \
             ancestor, isolation"
        );
        assert!(Filters::parse(&["name".into()])
            .unwrap_err()
            .contains("expected KEY=VALUE"));
    }

    #[test]
    fn rows_have_every_format_field() {
        let r = row(&test_state("0123456789abcdef", "x"), false);
        assert_eq!(r.keys().copied().collect::<Vec<_>>().len(), FIELDS.len());
        for f in FIELDS {
            assert!(r.contains_key(f), "{f}");
        }
        assert_eq!(r["ID"], "0123456789ab");
        assert_eq!(r["State"], "exited");
        assert_eq!(r["CreatedAt"], "1970-01-01T00:00:01.000000Z");
    }
}
