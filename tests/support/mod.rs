//! What the integration tests share: whether this host can run a VM.
//!
//! A host whose /dev/kvm does not open skips the live cases and says why, except under
//! `PINLAB_REQUIRE_KVM=1` (set by `.ci/run`), where it fails them: a CI machine that lost KVM
//! must not pass by skipping.

/// Why a VM cannot run here (`/dev/kvm: ...`), or `None` when /dev/kvm opens read-write.
/// Panics instead of returning a reason under `PINLAB_REQUIRE_KVM=1`.
#[allow(dead_code)]
pub fn kvm_missing() -> Option<String> {
    let err = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .err()?;
    if std::env::var("PINLAB_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("PINLAB_REQUIRE_KVM=1 but /dev/kvm cannot be opened: {err}");
    }
    Some(format!("/dev/kvm: {err}"))
}

/// True, after printing `skipped: <why>`, when a VM cannot run here (see [`kvm_missing`]).
#[allow(dead_code)]
pub fn skip_without_kvm() -> bool {
    match kvm_missing() {
        Some(why) => {
            println!("skipped: {why}");
            true
        }
        None => false,
    }
}
