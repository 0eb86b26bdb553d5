//! Link flags of the `strait` binary that depend on the machine it is built for.
//!
//! **Packed relative relocations** (`-z pack-relative-relocs`, DT_RELR). A position-independent
//! executable carries one relocation per pointer in its read-only data; the dynamic loader reads
//! all of them at every start, and those pages then stay in the process: 1.3 MB of `.rela.dyn`
//! for `strait`, counted in the resident memory of every sidecar for its whole life
//! (docs/benchmarks.md, "Sidecar"). Packed, the same relocations take 16 KB. Only glibc 2.36 and
//! later load such a binary (the linker records that as a version requirement, so an older glibc
//! refuses it at start with a clear message), so the flag is set only for release builds of a
//! binary for this machine when it runs glibc 2.36 or later (Debian 12, Ubuntu 22.10, Fedora 37
//! and later; the container image is built and run on Debian 13). `STRAIT_NO_RELR=1` leaves it
//! out, for a binary meant to run on an older glibc than the one it is built on.

use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=STRAIT_NO_RELR");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let native = var("TARGET") == var("HOST");
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let opted_out = !var("STRAIT_NO_RELR").is_empty();
    if release && native && linux_gnu && !opted_out && glibc_version().is_some_and(|v| v >= (2, 36))
    {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The glibc of this machine: `getconf GNU_LIBC_VERSION` prints e.g. `glibc 2.36`.
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, rest) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = rest.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
