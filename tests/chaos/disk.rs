//! The disk fault: `fail_fsync.c`, built here into a shared library that `casty-host`
//! loads with `LD_PRELOAD`, makes the node's fsync and fdatasync fail while a flag file
//! exists (see `nemesis::disk_flag`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The shim, built on first use with the machine's C compiler.
pub fn shim() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chaos/fail_fsync.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libcasty_fail_fsync.so");
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&source)
            .arg("-ldl")
            .output()
            .unwrap_or_else(|e| {
                panic!("the disk fault test builds an LD_PRELOAD shim and needs a C compiler (cc; apt-get install -y gcc): {e}")
            });
        assert!(
            built.status.success(),
            "cc could not build the fsync shim {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}
