//! Placeholder CLI: only `pinlab replay [SCENARIO...] [--era E]... [--json]` (the lead rewrites
//! this file with clap).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("replay") {
        eprintln!("usage: pinlab replay [SCENARIO...] [--era E]... [--json]");
        std::process::exit(2);
    }
    let (mut paths, mut eras, mut json) = (Vec::new(), Vec::new(), false);
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--era" => match it.next() {
                Some(e) => eras.push(e.clone()),
                None => {
                    eprintln!("pinlab replay: --era needs a value");
                    std::process::exit(2);
                }
            },
            p => paths.push(std::path::PathBuf::from(p)),
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    match pinlab::model::replay_command(&paths, &eras, json, &dir) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pinlab replay: {e:#}");
            std::process::exit(1);
        }
    }
}
