//! The document shell every report shares: doctype, a Content-Security-Policy that forbids any
//! fetch or script, the inline stylesheet, a header line saying what produced the page, and
//! small shared pieces (verdict badges, key/value tables). Knows nothing of runs or models.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::identity::Identity;
use crate::scenario::Verdict;

use super::palette;

/// No network, no script: only the inline style and inline (data:) images are allowed.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

fn stylesheet() -> String {
    let mut css = String::from(
        r#"
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; padding: 12px 20px 40px; max-width: 1360px; color: #111; background: #fff;
       font-size: 14px; line-height: 1.4; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 26px 0 6px; border-bottom: 1px solid #ccc; padding-bottom: 2px; }
h3 { font-size: 15px; margin: 16px 0 4px; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 8px; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.produced { color: #555; font-size: 12px; }
.banner { display: flex; gap: 18px; align-items: stretch; flex-wrap: wrap; margin: 10px 0 4px; }
.banner .verdict { font-size: 26px; padding: 10px 18px; border-radius: 6px; min-width: 200px; }
.banner .verdict small { display: block; font-size: 13px; font-weight: normal; }
.banner dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 0; }
.banner dt { color: #555; } .banner dd { margin: 0; }
.reason { margin: 6px 0; padding: 6px 10px; border-left: 4px solid #999; background: #fafafa; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 4px; white-space: nowrap; }
.met { font-weight: 600; } .unmet { font-weight: 700; text-decoration: underline; }
.chart { position: relative; margin: 4px 0; }
.chart svg { display: block; }
.chart svg.hover { position: absolute; left: 0; top: 0; }
.chart svg.hover rect { fill: transparent; stroke: none; }
.chart svg.hover rect:hover { stroke: #000; stroke-width: 1.5px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 4px 0 8px; font-size: 12.5px; }
.legend .key { display: inline-block; width: 22px; height: 12px; vertical-align: -1px;
               border: 1px solid #555; margin-right: 4px; }
.note { color: #444; font-size: 12.5px; }
details > summary { cursor: pointer; }
details.trace { margin: 2px 0; }
details.trace ol { margin: 4px 0 4px 18px; padding: 0; }
.grid td { text-align: center; }
#replay { font-size: 12.5px; } #replay td, #replay th { padding: 2px 4px; }
.grid td.name, .grid th.name { text-align: left; white-space: nowrap; }
.grid td details[open] { text-align: left; min-width: 360px; }
nav.toc a { margin-right: 10px; }
section.run { border-top: 2px solid #333; margin-top: 28px; }
#scenarios td.name { white-space: nowrap; }
#cells td.name, #cells td.live, #failures td { white-space: nowrap; }
#cells { width: 100%; } #cells td.evidence { overflow-wrap: anywhere; }
table.pinxaction td { min-width: 110px; }
a.badge { text-decoration: none; }
"#,
    );
    css.push_str(&palette::verdict_css());
    css
}

/// A whole page: `title` in the head and as the first heading, `body` after it.
pub fn document(title: &str, produced: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(stylesheet())) }
            }
            body {
                h1 { (title) }
                p.produced { (produced) }
                (body)
            }
        }
    }
}

/// "pinlab 0.1.0 (commit) on Linux 6.18 x86_64, at <unix time>": what measured the page.
pub fn produced_by(id: &Identity, what: &str) -> String {
    format!(
        "{what} · pinlab {} ({}) · kernel {} {} · taken at unix time {}",
        id.pinlab_version,
        id.pinlab_commit,
        id.kernel_release.as_deref().unwrap_or("unknown"),
        id.machine.as_deref().unwrap_or(""),
        id.unix_time
    )
}

/// A verdict as a coloured badge with its symbol and word.
pub fn verdict_badge(v: Verdict) -> Markup {
    let (class, sym) = palette::verdict_class(v);
    html! { span class={"badge " (class)} data-verdict=(v.to_string()) { (sym) " " (v.to_string()) } }
}

/// A two-column key/value table.
pub fn kv_table(class: &str, rows: &[(String, String)]) -> Markup {
    html! {
        table class=(class) {
            @for (k, v) in rows {
                tr { th { (k) } td.mono { (v) } }
            }
        }
    }
}

/// A legend entry: a swatch (solid or striped) and its words.
pub fn legend_key(fill_css: &str, words: &str) -> Markup {
    html! {
        span { span.key style={"background: " (fill_css)} {} (words) }
    }
}

/// A byte count as the units config files use.
pub fn bytes(n: u64) -> String {
    crate::units::ByteSize(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_forbids_scripts_and_fetches_and_escapes_titles() {
        let p = document("a <b>", "x", html! { p { "body" } }).into_string();
        assert!(p.starts_with("<!DOCTYPE html>"));
        assert!(p.contains("default-src 'none'"));
        assert!(!p.contains("<script"));
        assert!(p.contains("<title>a &lt;b&gt;</title>"));
        assert!(!p.contains("http://") && !p.contains("https://"));
    }
}
