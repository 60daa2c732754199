//! The colours of every page and chart: the Okabe–Ito palette (made to be told apart by
//! colour-blind readers), each colour paired with the second cue that carries the same meaning
//! without it (a word, a symbol, a stripe pattern or a position). Owns no markup.

use plotters::style::RGBColor;

use crate::model::ModelVerdict;
use crate::scenario::Verdict;

/// One palette entry: the chart colour and its CSS spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Colour {
    pub rgb: (u8, u8, u8),
}

impl Colour {
    pub const fn new(r: u8, g: u8, b: u8) -> Self {
        Colour { rgb: (r, g, b) }
    }

    pub fn plotters(self) -> RGBColor {
        RGBColor(self.rgb.0, self.rgb.1, self.rgb.2)
    }

    pub fn css(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.rgb.0, self.rgb.1, self.rgb.2)
    }
}

// Okabe & Ito, "Color Universal Design" (2008).
pub const ORANGE: Colour = Colour::new(0xE6, 0x9F, 0x00);
pub const SKY_BLUE: Colour = Colour::new(0x56, 0xB4, 0xE9);
pub const BLUISH_GREEN: Colour = Colour::new(0x00, 0x9E, 0x73);
pub const YELLOW: Colour = Colour::new(0xF0, 0xE4, 0x42);
pub const BLUE: Colour = Colour::new(0x00, 0x72, 0xB2);
pub const VERMILLION: Colour = Colour::new(0xD5, 0x5E, 0x00);
pub const REDDISH_PURPLE: Colour = Colour::new(0xCC, 0x79, 0xA7);
pub const BLACK: Colour = Colour::new(0x00, 0x00, 0x00);
/// Neutral greys for axes, empty cells and "unknown".
pub const GREY: Colour = Colour::new(0x99, 0x99, 0x99);
pub const LIGHT_GREY: Colour = Colour::new(0xE4, 0xE4, 0xE4);
pub const WHITE: Colour = Colour::new(0xFF, 0xFF, 0xFF);

/// The CSS class and the symbol (the second cue) of a live verdict.
pub fn verdict_class(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Coherent => ("v-coherent", "✓"),
        Verdict::Diverged => ("v-diverged", "✗"),
        Verdict::Skipped => ("v-skipped", "–"),
        Verdict::Error => ("v-error", "!"),
    }
}

/// The CSS class and symbol of a model verdict.
pub fn model_class(v: &ModelVerdict) -> (&'static str, &'static str) {
    match v {
        ModelVerdict::Coherent => ("v-coherent", "✓"),
        ModelVerdict::Diverged => ("v-diverged", "✗"),
        ModelVerdict::InvariantBroken(_) => ("v-broken", "⚠"),
        ModelVerdict::NotApplicable => ("v-na", "·"),
    }
}

/// The stylesheet's verdict rules: solid tints for the quiet verdicts, stripes for the loud
/// ones (so a grey print still tells diverged from coherent), and the symbol in the text.
pub fn verdict_css() -> String {
    let stripes = |a: Colour, b: &str| {
        format!(
            "background: repeating-linear-gradient(135deg, {} 0 6px, {b} 6px 12px); color: #fff; font-weight: 600;",
            a.css()
        )
    };
    format!(
        ".v-coherent {{ background: #d5efe5; color: #00553e; }}\n\
         .v-diverged {{ {} }}\n\
         .v-broken {{ {} }}\n\
         .v-error {{ background: {}; color: #fff; font-weight: 600; }}\n\
         .v-skipped {{ background: {}; color: #333; }}\n\
         .v-na {{ background: #f7f7f7; color: #777; }}\n",
        stripes(VERMILLION, "#a84a00"),
        stripes(ORANGE, "#b07a00").replace("color: #fff", "color: #000"),
        REDDISH_PURPLE.css(),
        LIGHT_GREY.css(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative luminance (sRGB, WCAG): what a grey print keeps of a colour.
    fn luminance(c: Colour) -> f64 {
        let lin = |v: u8| {
            let v = f64::from(v) / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(c.rgb.0) + 0.7152 * lin(c.rgb.1) + 0.0722 * lin(c.rgb.2)
    }

    #[test]
    fn the_three_page_states_differ_in_grey() {
        // The strip's bands: write lost, read stale, PFN moved. A grey print must still tell
        // them apart by brightness (their position in the cell is the other cue).
        let l = [
            luminance(VERMILLION),
            luminance(SKY_BLUE),
            luminance(YELLOW),
        ];
        for i in 0..l.len() {
            for j in i + 1..l.len() {
                assert!((l[i] - l[j]).abs() > 0.1, "{l:?}");
            }
        }
    }

    #[test]
    fn every_verdict_has_a_class_and_a_distinct_symbol() {
        let all = [
            Verdict::Coherent,
            Verdict::Diverged,
            Verdict::Skipped,
            Verdict::Error,
        ];
        let syms: std::collections::BTreeSet<_> = all.iter().map(|&v| verdict_class(v).1).collect();
        assert_eq!(syms.len(), all.len());
        let css = verdict_css();
        for v in all {
            assert!(css.contains(&format!(".{} ", verdict_class(v).0)), "{v}");
        }
        assert_eq!(ORANGE.css(), "#e69f00");
    }
}
