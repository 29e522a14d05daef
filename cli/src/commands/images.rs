//! `bulkhead images`: list stored image references, as a table or `--format`ted.

use bulkhead_images::Store;

use super::format::{Format, Row};
use super::UsageError;

/// The fields of a row for `--format`.
const FIELDS: &[&str] = &["Repository", "Tag", "Digest", "ID", "Layers", "Size"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print full digests.
    #[arg(long)]
    pub no_trunc: bool,
    /// json (one object per line), a template like '{{.Repository}}:{{.Tag}}', or 'table '
    /// and a template.
    #[arg(long)]
    pub format: Option<String>,
}

/// `registry/repo:tag` → (`registry/repo`, `tag`), Docker Hub names shown as Docker shows
/// them (`docker.io/library/alpine` → `alpine`); a digest reference has tag `<none>`.
fn repository_and_tag(name: &str) -> (String, String) {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    if let Some((repo, _digest)) = name.split_once('@') {
        return (repo.to_owned(), "<none>".to_owned());
    }
    // A colon after the last slash separates the tag (one before it is a registry port).
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (
            name[..slash + i].to_owned(),
            name[slash + i + 1..].to_owned(),
        ),
        None => (name.to_owned(), "latest".to_owned()),
    }
}

fn short(digest: &str, no_trunc: bool) -> String {
    if no_trunc {
        digest.to_owned()
    } else {
        digest.get(..19).unwrap_or(digest).to_owned()
    }
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse(f, FIELDS))
        .transpose()
        .map_err(UsageError)?;
    let images = store.list_images()?;
    if let Some(format) = format {
        let rows: Vec<Row> = images
            .iter()
            .map(|rec| {
                let (repository, tag) = repository_and_tag(&rec.name);
                let digest = rec.manifest_digest.to_string();
                Row::from([
                    ("Repository", repository),
                    ("Tag", tag),
                    ("ID", short(&digest, args.no_trunc)),
                    ("Digest", digest),
                    ("Layers", rec.layers.len().to_string()),
                    ("Size", super::human(rec.size())),
                ])
            })
            .collect();
        print!("{}", format.render(&rows));
        return Ok(());
    }
    println!(
        "{:<60} {:<20} {:>7} {:>10}",
        "REFERENCE", "DIGEST", "LAYERS", "SIZE"
    );
    for rec in images {
        let d = short(&rec.manifest_digest.to_string(), args.no_trunc);
        println!(
            "{:<60} {:<20} {:>7} {:>10}",
            rec.name,
            d,
            rec.layers.len(),
            super::human(rec.size())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        let split = |n: &str| repository_and_tag(n);
        assert_eq!(split("alpine:3.20"), ("alpine".into(), "3.20".into()));
        assert_eq!(
            split("docker.io/library/alpine:3.20"),
            ("alpine".into(), "3.20".into())
        );
        assert_eq!(
            split("docker.io/bulkhead/demo:latest"),
            ("bulkhead/demo".into(), "latest".into())
        );
        assert_eq!(
            split("127.0.0.1:5000/test/tiny:1"),
            ("127.0.0.1:5000/test/tiny".into(), "1".into())
        );
        assert_eq!(
            split("127.0.0.1:5000/test/tiny"),
            ("127.0.0.1:5000/test/tiny".into(), "latest".into())
        );
        assert_eq!(
            split("busybox@sha256:abc"),
            ("busybox".into(), "<none>".into())
        );
    }
}
