//! The README followed to the letter against a real node: its CLI tour, every command
//! printing what its comment says; and its "Write your own entity" section step by step:
//! a new crate, the README's `Cargo.toml` lines and `src/lib.rs`, its build command, then
//! its `casty` commands.
//!
//! A command's comment is what it prints: exactly, or `START...` for output that starts
//! so, or `...PART...` for output that holds PART, or `error: START...` for a command
//! that fails saying so; prose in parentheses after it is for the reader.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{Host, stdout_ok};

/// The code blocks of a section of the README: (language, text).
fn section_blocks(title: &str) -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let section = readme.split(&format!("## {title}\n")).nth(1).expect("the README has the section");
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

/// Checks a command's output against what its comment says it prints.
fn check(command: &[String], output: &Output, prints: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout).trim_end().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim_end().to_owned();
    let prints = match prints.split_once(" (") {
        Some((prints, prose)) if prose.ends_with(')') => prints.trim_end(),
        _ => prints,
    };
    let (shown, said) = match prints.strip_prefix("error: ") {
        Some(error) => {
            assert!(!output.status.success(), "{command:?} should fail; it printed {stdout}");
            (stderr.strip_prefix("error: ").unwrap_or(&stderr).to_owned(), error)
        }
        None => {
            assert!(output.status.success(), "{command:?} failed: {stderr}");
            (stdout, prints)
        }
    };
    if let Some(part) = said.strip_prefix("...").and_then(|p| p.strip_suffix("...")) {
        assert!(shown.contains(part), "{command:?} printed {shown}, which lacks {part}");
    } else if let Some(start) = said.strip_suffix("...}").or_else(|| said.strip_suffix("...")) {
        assert!(shown.starts_with(start), "{command:?} printed {shown}, not {said}");
    } else {
        assert_eq!(shown, said, "{command:?}");
    }
}

/// Runs `casty` with `args` against the node at `addr`, in `dir`, with `stdin`.
fn casty(addr: std::net::SocketAddr, dir: &Path, args: &[String], stdin: &str) -> Output {
    let mut casty = Command::new(env!("CARGO_BIN_EXE_casty"));
    casty.current_dir(dir).arg("--connect").arg(addr.to_string()).args(args);
    let mut child =
        casty.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_tour_prints_what_the_readme_says() {
    let blocks = section_blocks("A quick tour with the CLI");
    let (language, tour) = &blocks[0];
    assert_eq!(language, "sh");
    // The tour deploys the component the section on writing an entity builds.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(support::test_component("bank-account"), dir.path().join("bank_account.wasm")).unwrap();
    let host = Host::start(&[]).await;
    let mut ran = 0;
    for (words, prints) in commands(tour) {
        if words[0] == "alias" {
            continue;
        }
        // `echo TEXT | casty ...` gives the command TEXT and a newline on stdin.
        let (stdin, words) = match words.iter().position(|w| w == "|") {
            Some(pipe) => {
                assert_eq!(words[0], "echo", "the tour pipes only echo");
                (format!("{}\n", words[1..pipe].join(" ")), &words[pipe + 1..])
            }
            None => (String::new(), &words[..]),
        };
        assert_eq!(words[0], "casty", "the tour runs casty: {words:?}");
        let prints = prints.unwrap_or_else(|| panic!("{words:?} says what it prints"));
        check(words, &casty(host.addr, dir.path(), &words[1..], &stdin), &prints);
        ran += 1;
    }
    assert!(ran >= 30, "the tour has its commands: {ran}");
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
    let blocks = section_blocks("Write your own entity");
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
            "casty" => casty(host.addr, &crate_dir, &command[1..], ""),
            other => panic!("the README runs {other}"),
        };
        match prints {
            Some(prints) => check(&command, &output, &prints),
            None => drop(stdout_ok(&output)),
        }
    }
    // The README's release profile is the size-optimised one it describes.
    let built = crate_dir.join("target/wasm32-wasip2/release/tally.wasm");
    let size = std::fs::metadata(&built).expect("the README's build made tally.wasm").len();
    assert!(size < 512 << 10, "tally.wasm is {size} bytes: the README's release profile did not apply");
}
