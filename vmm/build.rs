//! Builds the guest image (`guest-image/guest`, a no_std program for the host target) and puts
//! its ELF in OUT_DIR, so `cargo run` needs nothing else.
//!
//! The nested cargo gets its own target dir (or it would wait forever on the outer build's lock)
//! and a clean environment: the outer build's RUSTFLAGS must not leak into the guest.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guest_dir = manifest_dir.join("../guest-image/guest");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());

    for p in [
        "src",
        "Cargo.toml",
        "build.rs",
        "link.ld",
        "../abi/src",
        "../abi/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(p).display());
    }

    // The commit results name (`identity::GIT_COMMIT`); "unknown" outside a git checkout.
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&manifest_dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PINLAB_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs.
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&manifest_dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let (Some(dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) {
        let mut watch = vec![dir.join("HEAD"), common.join("packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(common.join(r));
        }
        for p in watch.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }

    embed_configs(&manifest_dir.join("../configs"), &out_dir);

    let status = Command::new(cargo)
        .args(["build", "--release", "--manifest-path"])
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("run cargo for the guest image");
    assert!(status.success(), "building the guest image failed");
    std::fs::copy(
        target_dir.join("release/pinlab-guest"),
        out_dir.join("guest.elf"),
    )
    .expect("copy the guest ELF");
}

/// Writes `configs.rs` into OUT_DIR: every `configs/*.toml`, embedded, so an installed binary
/// runs `matrix` and `replay` outside the checkout.
fn embed_configs(dir: &std::path::Path, out_dir: &std::path::Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list configs/")
        .map(|e| e.expect("read configs/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut src = String::from(
        "/// Every scenario of configs/, embedded at build time: (file name, text).\n",
    );
    src.push_str("pub const EMBEDDED: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().expect("file name").to_string_lossy();
        let abs = f.canonicalize().expect("canonical path of a config");
        src.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    src.push_str("];\n");
    std::fs::write(out_dir.join("configs.rs"), src).expect("write configs.rs");
}
