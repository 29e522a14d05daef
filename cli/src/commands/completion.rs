//! Shell completion scripts and man pages, generated from the command-line definition itself
//! (`clap_complete`, `clap_mangen`), so they never drift from the real flags. Neither needs a
//! configuration.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// `bulkhead completion` options.
#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

/// `bulkhead man` options.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// The directory to write `bulkhead.1` and `bulkhead-<command>.1` into (created if
    /// missing).
    pub dir: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completion(args: &CompletionArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "bulkhead", &mut std::io::stdout());
    Ok(())
}

/// Writes one man page for `bulkhead` and one per visible command (and subcommand).
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let written = write_pages(&args.dir, Cli::command().name("bulkhead"), "bulkhead")?;
    eprintln!("wrote {written} man pages to {}", args.dir.display());
    Ok(())
}

/// Writes `<name>.1` for `cmd`, then the pages of its visible subcommands as
/// `<name>-<sub>.1`. Returns how many pages it wrote.
fn write_pages(dir: &Path, cmd: clap::Command, name: &str) -> anyhow::Result<usize> {
    let cmd = cmd.name(name.to_owned());
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        written += write_pages(dir, sub.clone(), &sub_name)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_the_commands_and_their_flags() {
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), "bulkhead", &mut out);
        let script = String::from_utf8(out).unwrap();
        for word in [
            "compare",
            "--isolation",
            "--env-file",
            "--platform",
            "inspect",
        ] {
            assert!(script.contains(word), "no {word} in the bash completion");
        }
    }

    #[test]
    fn man_pages_cover_every_visible_command_and_no_hidden_one() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_pages(dir.path(), Cli::command(), "bulkhead").unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), n);
        for page in ["bulkhead.1", "bulkhead-run.1", "bulkhead-image-import.1"] {
            assert!(names.iter().any(|p| p == page), "no {page} in {names:?}");
        }
        assert!(!names.iter().any(|p| p.contains("supervise")), "{names:?}");
        let run = std::fs::read_to_string(dir.path().join("bulkhead-run.1")).unwrap();
        assert!(
            run.contains("bulkhead\\-run") && run.contains("isolation"),
            "{run}"
        );
    }
}
