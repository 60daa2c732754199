//! `pin = "vfio"` from the outside: the real `pinlab` binary on the vfio scenario, its config
//! errors, and the host report's VFIO entries.
//!
//! On a host without VFIO (the development machine: no CONFIG_VFIO) a vfio run must be
//! `skipped` with one line naming the missing piece and its fix, and exit 0, in `run` and in
//! `matrix`. Where /dev/kvm cannot be opened the runner blames KVM first; whether that is a
//! failure (PINLAB_REQUIRE_KVM=1) is the live tests' rule, not this file's: these cases print
//! why and return. Where the host has VFIO, the skip cases do not apply and say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PINLAB: &str = env!("CARGO_BIN_EXE_pinlab");

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn pinlab(args: &[&str]) -> Output {
    Command::new(PINLAB)
        .args(args)
        .output()
        .expect("spawn pinlab")
}

fn show(args: &[&str], out: &Output) -> String {
    format!(
        "`pinlab {}` -> {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Why the skip cases do not apply here, if they do not.
fn not_applicable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!(
            "/dev/kvm: {e} (the runner reports KVM before VFIO)"
        ));
    }
    if Path::new("/dev/vfio/vfio").exists() || Path::new("/dev/iommu").exists() {
        return Some("this host has VFIO".into());
    }
    None
}

#[test]
fn vfio_scenario_is_skipped_with_the_reason_and_exits_0() {
    if let Some(why) = not_applicable() {
        println!("not applicable: {why}");
        return;
    }
    let scenario = configs().join("live-vfio-dontneed.toml");
    let scenario = scenario.to_str().unwrap();
    let cases: [&[&str]; 3] = [
        &["run", scenario, "--json"],
        &[
            "run",
            "--pin",
            "vfio",
            "--vfio-device",
            "/dev/vfio/3",
            "--json",
        ],
        &[
            "run",
            "--pin",
            "vfio",
            "--vfio-device",
            "/dev/vfio/devices/vfio0",
            "--json",
        ],
    ];
    for args in cases {
        let out = pinlab(args);
        assert_eq!(out.status.code(), Some(0), "{}", show(args, &out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}\n{}", show(args, &out)));
        assert_eq!(v["verdict"], "skipped", "{}", show(args, &out));
        assert_eq!(v["pin"], "vfio", "{}", show(args, &out));
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("VFIO unavailable: ") && !reason.contains('\n'),
            "{}",
            show(args, &out)
        );
        assert!(
            reason.contains("CONFIG_VFIO") || reason.contains("CONFIG_IOMMUFD"),
            "the fix is missing: {}",
            show(args, &out)
        );
        // A skipped run never built a VM: no DMA, no pins.
        assert_eq!(v["dma"]["descriptors"], 0, "{}", show(args, &out));
    }
}

#[test]
fn matrix_row_of_the_vfio_scenario_is_a_skip_that_passes() {
    if let Some(why) = not_applicable() {
        println!("not applicable: {why}");
        return;
    }
    // A directory holding only the vfio scenario: the row is skipped (a pass: it says why), and
    // since nothing could run the matrix exits 4, kselftest's KSFT_SKIP.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        configs().join("live-vfio-dontneed.toml"),
        dir.path().join("live-vfio-dontneed.toml"),
    )
    .unwrap();
    let args = ["matrix", dir.path().to_str().unwrap(), "--json"];
    let out = pinlab(&args);
    assert_eq!(out.status.code(), Some(4), "{}", show(&args, &out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}\n{}", show(&args, &out)));
    let rows = m["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{}", show(&args, &out));
    assert_eq!(rows[0]["verdict"], "skipped", "{}", show(&args, &out));
    assert_eq!(rows[0]["pass"], true, "{}", show(&args, &out));
}

/// Each row: a scenario file's `[device]` table and the key its exit-2 error must blame. A bug
/// would run a vfio scenario without a device, accept a malformed address, or silently ignore a
/// device named under another pin.
#[test]
fn config_errors_name_the_key_and_exit_2() {
    let rows = [
        ("pin = \"vfio\"", "device.vfio"),
        ("pin = \"vfio\"\nvfio = \"0000:01:00\"", "device.vfio"),
        ("pin = \"vfio\"\nvfio = \"0000:01:20.0\"", "device.vfio"),
        ("pin = \"vfio\"\nvfio = \"/dev/vfio/vfio\"", "device.vfio"),
        ("pin = \"io-uring\"\nvfio = \"0000:01:00.0\"", "device.vfio"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (device, key)) in rows.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, format!("[device]\n{device}\n")).unwrap();
        let args = ["run", path.to_str().unwrap()];
        let out = pinlab(&args);
        assert_eq!(out.status.code(), Some(2), "{}", show(&args, &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{device:?}: {}", show(&args, &out));
        assert_eq!(err.trim().lines().count(), 1, "{}", show(&args, &out));
    }
    // The flag alone names a device for the default pin (io-uring): refused the same way.
    let args = ["run", "--vfio-device", "0000:01:00.0"];
    let out = pinlab(&args);
    assert_eq!(out.status.code(), Some(2), "{}", show(&args, &out));
}

#[test]
fn host_json_lists_the_vfio_entries() {
    let out = pinlab(&["host", "--json"]);
    assert!(out.status.success(), "{}", show(&["host", "--json"], &out));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for name in ["vfio", "iommu", "vfio_groups", "iommufd"] {
        let e = entries
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` entry"));
        // A missing piece always carries its fix.
        assert_eq!(e["available"] == false, e["fix"].is_string(), "{e}");
    }
    if !Path::new("/dev/vfio/vfio").exists() {
        let vfio = entries.iter().find(|e| e["name"] == "vfio").unwrap();
        assert_eq!(vfio["available"], false);
        assert!(vfio["detail"].as_str().unwrap().contains("/dev/vfio/vfio"));
    }
}
