//! The README's "Write your own entity" section, followed step by step: a new crate, the
//! README's `Cargo.toml` lines and `src/lib.rs`, its build command, then its `casty`
//! commands against a real node, each printing what the README says it prints.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Host, stdout_ok};

/// The code blocks of the README's section on writing an entity: (language, text).
fn section_blocks() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let section = readme.split("## Write your own entity").nth(1).expect("the README has the section");
    let section = section.split("\n## ").next().expect("the section ends");
    let mut blocks = Vec::new();
    let mut parts = section.split("```");
    parts.next();
    while let (Some(block), Some(_prose)) = (parts.next(), parts.next()) {
        let (language, text) = block.split_once('\n').expect("a fenced block has a language line");
        blocks.push((language.trim().to_owned(), text.to_owned()));
    }
    blocks
}

/// The commands of a shell block, each with what its comment says it prints.
fn commands(block: &str) -> Vec<(Vec<String>, Option<String>)> {
    block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (command, comment) = match line.split_once(" # ") {
                Some((command, comment)) => (command, Some(comment.trim().to_owned())),
                None => (line, None),
            };
            (shell_words(command), comment)
        })
        .collect()
}

/// Splits a command line as `sh` would for the README's commands: words, with
/// single-quoted words kept whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (word, tail) = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.split_once('\'').expect("a closed quote"),
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        words.push(word.to_owned());
        rest = tail.trim_start();
    }
    words
}

/// A cargo command for the new crate, with none of the outer build's settings.
fn cargo(dir: &Path, args: &[String], target_dir: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(dir).args(args).env("CARGO_TARGET_DIR", target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_takes_a_reader_from_cargo_new_to_a_called_entity() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let blocks = section_blocks();
    let languages: Vec<&str> = blocks.iter().map(|(language, _)| language.as_str()).collect();
    assert_eq!(&languages[..5], ["sh", "toml", "rust", "sh", "rust"], "the section's blocks");
    let work = tempfile::tempdir().unwrap();
    // Builds share a directory under the workspace's target, so a second run is quick.
    let target_dir = repo.join("target").join("readme-entity");

    // `cargo new --lib tally && cd tally`
    let [(new, None)] = &commands(&blocks[0].1)[..] else { panic!("one command: {}", blocks[0].1) };
    let (new, cd) = new.split_at(new.iter().position(|w| w == "&&").expect("then cd"));
    let status = cargo(work.path(), &new[1..], &target_dir).status().unwrap();
    assert!(status.success(), "{new:?}");
    let crate_dir = work.path().join(&cd[2]);

    let manifest = crate_dir.join("Cargo.toml");
    let lines = blocks[1].1.replace("../casty/guest-sdk", &repo.join("guest-sdk").display().to_string());
    let mut toml = std::fs::read_to_string(&manifest).unwrap();
    toml = toml.replace("[dependencies]\n", "");
    toml.push('\n');
    toml.push_str(&lines);
    std::fs::write(&manifest, toml).unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), &blocks[2].1).unwrap();
    // The versions this workspace already resolved and downloaded.
    std::fs::copy(repo.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    std::os::unix::fs::symlink(&target_dir, crate_dir.join("target")).unwrap();

    let host = Host::start(&[]).await;
    for (command, prints) in commands(&blocks[3].1) {
        let output = match command[0].as_str() {
            "cargo" => cargo(&crate_dir, &command[1..], &target_dir).output().unwrap(),
            "casty" => {
                let mut casty = Command::new(env!("CARGO_BIN_EXE_casty"));
                casty.current_dir(&crate_dir).arg("--connect").arg(host.addr.to_string());
                casty.args(&command[1..]).output().unwrap()
            }
            other => panic!("the README runs {other}"),
        };
        let stdout = stdout_ok(&output);
        let Some(prints) = prints else { continue };
        // A comment is either the output, or its start followed by "...", or prose
        // naming what the output shows.
        match prints.strip_suffix("...}") {
            Some(start) => assert!(stdout.starts_with(start), "{command:?} printed {stdout}"),
            None if prints.starts_with(|c: char| c.is_ascii_digit()) => assert_eq!(stdout, prints),
            None => {
                let named = prints.split(',').next().unwrap();
                assert!(stdout.contains(named), "{command:?} printed {stdout}");
            }
        }
    }
}
