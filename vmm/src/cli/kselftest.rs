//! `pinlab kselftest DIR`: writes a package that kselftest's run_kselftest.sh runs as is (the
//! library's `kselftest` owns the layout); prints what it wrote and how to run it.

use std::path::Path;
use std::process::ExitCode;

use super::usage_error;

pub fn cmd_kselftest(dir: &Path) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return usage_error(format!("kselftest: finding the running binary: {e}")),
    };
    match pinlab::kselftest::write_package(dir, &exe) {
        Ok(p) => {
            println!(
                "wrote {}: kselftest-list.txt, {c}/settings (timeout={t}s), {c}/{s}, {c}/pinlab, \
                 {c}/configs/ ({n} scenarios, {l} live)",
                p.root.display(),
                c = pinlab::kselftest::COLLECTION,
                s = pinlab::kselftest::SCRIPT,
                t = p.timeout_secs,
                n = p.configs,
                l = p.live,
            );
            println!(
                "run it with a kernel's run_kselftest.sh and kselftest/ copied beside it, or merge \
                 it into an installed kselftest tree (docs/ci.md)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(format!("kselftest: {e}")),
    }
}
