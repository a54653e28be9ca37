//! Compiles the entity crates in `entities/` to `wasm32-wasip2` components with a nested
//! cargo (its own target directory, so it never waits on the outer build's lock) and
//! writes `components.rs`, which embeds the built-in ones.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target entity components are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Entity crates shipped inside `casty-host`: (entity type, package).
const BUILTINS: &[(&str, &str)] = &[
    ("counter", "casty-entity-counter"),
    ("map", "casty-entity-map"),
    // A set is a map whose values are all null: one component serves both types.
    ("set", "casty-entity-map"),
    ("register", "casty-entity-register"),
    // A lock is a semaphore with one permit: one component serves both types.
    ("lock", "casty-entity-semaphore"),
    ("semaphore", "casty-entity-semaphore"),
    ("queue", "casty-entity-queue"),
    ("barrier", "casty-entity-barrier"),
];
/// Entity crates built for tests (and the examples users deploy); their paths are
/// exported, their bytes are not.
const TEST_COMPONENTS: &[(&str, &str)] = &[
    ("faulty", "casty-entity-faulty"),
    ("uses-network", "casty-test-uses-network"),
    ("bank-account", "bank-account"),
    ("session", "session"),
];
/// Test components that reuse an example's types with its export turned off. They are
/// built by a cargo run of their own: one run unifies a crate's features across every
/// package it builds, which would turn the example's export back on inside them.
const LATER_VERSIONS: &[(&str, &str)] = &[
    ("bank-account-v2", "casty-test-bank-account-v2"),
    ("bank-account-broken", "casty-test-bank-account-broken"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.ancestors().nth(2).expect("host/builtins sits two levels deep").to_owned();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    for watched in
        ["wit", "guest-sdk", "entities", "examples", "tests/components", "Cargo.toml", "Cargo.lock"]
    {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // OUT_DIR is <target>[/<triple>]/<profile>/build/<pkg>/out: share one wasm target
    // directory per outer target directory, so debug, release and clippy builds reuse it.
    let target_dir = out.ancestors().nth(4).expect("OUT_DIR is deep").join("casty-wasm");
    ensure_wasm_target();
    let mut packages: Vec<&str> =
        BUILTINS.iter().chain(TEST_COMPONENTS).map(|(_, package)| *package).collect();
    packages.sort_unstable();
    packages.dedup();
    // Each run's artifacts are copied out before the next run, which may overwrite the
    // example's own `.wasm` with its export turned off.
    let components = out.join("components");
    std::fs::create_dir_all(&components).expect("OUT_DIR is writable");
    let mut built = std::collections::HashMap::new();
    for group in [packages, LATER_VERSIONS.iter().map(|(_, package)| *package).collect()] {
        build_components(&root, &target_dir, group.iter().copied());
        for package in group {
            let file = format!("{}.wasm", package.replace('-', "_"));
            let artifact = target_dir.join(WASM_TARGET).join("wasm").join(&file);
            assert!(artifact.exists(), "the nested build did not produce {}", artifact.display());
            std::fs::copy(&artifact, components.join(&file)).expect("OUT_DIR is writable");
            built.insert(package, components.join(&file));
        }
    }
    let artifact = |package: &str| &built[package];
    let mut code = String::from("/// Built-in entity types: (type name, component bytes).\n");
    code.push_str("pub const BUILTINS: &[(&str, &[u8])] = &[\n");
    for (name, package) in BUILTINS {
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", artifact(package)));
    }
    code.push_str(
        "];\n\n/// Components built for tests and the examples: (type name, path of the `.wasm` file).\n",
    );
    code.push_str("pub const TEST_COMPONENTS: &[(&str, &str)] = &[\n");
    for (name, package) in TEST_COMPONENTS.iter().chain(LATER_VERSIONS) {
        code.push_str(&format!("    ({name:?}, {:?}),\n", artifact(package)));
    }
    code.push_str("];\n");
    std::fs::write(out.join("components.rs"), code).expect("OUT_DIR is writable");
}

/// Installs the `wasm32-wasip2` standard library when the toolchain lacks it. The
/// toolchain file asks for it, but rustup installs nothing by itself where automatic
/// installs are turned off (`RUSTUP_AUTO_INSTALL=0`), so a fresh machine needs this.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output().expect("rustc runs");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).exists() {
        return;
    }
    let status = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` failed; install it by hand"
    );
}

fn build_components<'a>(root: &Path, target_dir: &Path, packages: impl Iterator<Item = &'a str>) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--target", WASM_TARGET, "--profile", "wasm", "--target-dir"])
        .arg(target_dir);
    for package in packages {
        cmd.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy's among them) are for the host target.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cargo runs");
    assert!(
        status.success(),
        "building the entity components failed; is the wasm32-wasip2 target installed? \
         (rust-toolchain.toml lists it; `rustup target add wasm32-wasip2` adds it by hand)"
    );
}
