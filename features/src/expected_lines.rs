//! The log lines the seed documents tell QC to look for (`features/expected-lines.toml`), each
//! with the seed it comes from, and a matcher that finds them verbatim, placeholders aside, in
//! what the real OMA logged. The acceptance suite feeds it every OMA log line of a full run and
//! fails on a line no scenario made the OMA print; a line that cannot be verbatim says why.

use regex::{Regex, RegexSet};
use serde::Deserialize;

/// The list, as shipped beside the features.
pub const LIST: &str = include_str!("../expected-lines.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedLine {
    /// The document's words, with its placeholders.
    pub text: String,
    /// Which seed document, and where in it.
    pub seed: String,
    /// Why the OMA cannot print the line verbatim (then it is not looked for).
    #[serde(default)]
    pub not_verbatim: Option<String>,
}

#[derive(Deserialize)]
struct File {
    line: Vec<ExpectedLine>,
}

/// The lines, and which of them the logs fed so far have shown.
pub struct ExpectedLines {
    pub lines: Vec<ExpectedLine>,
    /// One pattern per line that must be verbatim (`index` into `lines`).
    set: RegexSet,
    index: Vec<usize>,
    seen: Vec<bool>,
}

impl ExpectedLines {
    pub fn parse(text: &str) -> Result<ExpectedLines, String> {
        let file: File = toml::from_str(text).map_err(|e| format!("expected-lines.toml: {e}"))?;
        let mut patterns = Vec::new();
        let mut index = Vec::new();
        for (i, line) in file.line.iter().enumerate() {
            if line.text.trim().is_empty() || line.seed.trim().is_empty() {
                return Err(format!("expected-lines.toml: line {}: text and seed must not be empty", i + 1));
            }
            if line.not_verbatim.is_none() {
                patterns.push(pattern(&line.text));
                index.push(i);
            }
        }
        let set = RegexSet::new(&patterns).map_err(|e| format!("expected-lines.toml: {e}"))?;
        let seen = vec![false; file.line.len()];
        Ok(ExpectedLines { lines: file.line, set, index, seen })
    }

    /// The shipped list.
    pub fn shipped() -> ExpectedLines {
        ExpectedLines::parse(LIST).expect("features/expected-lines.toml is valid (unit-tested)")
    }

    /// Note which expected lines `log_line` shows.
    pub fn feed(&mut self, log_line: &str) {
        for m in self.set.matches(log_line).iter() {
            self.seen[self.index[m]] = true;
        }
    }

    /// Lines that must be verbatim and were not seen.
    pub fn missing(&self) -> Vec<&ExpectedLine> {
        self.index.iter().filter(|&&i| !self.seen[i]).map(|&i| &self.lines[i]).collect()
    }

    /// Every line with its state: `Some(true)` seen, `Some(false)` not seen, `None` not verbatim.
    pub fn states(&self) -> Vec<(&ExpectedLine, Option<bool>)> {
        self.lines
            .iter()
            .enumerate()
            .map(|(i, l)| (l, if l.not_verbatim.is_some() { None } else { Some(self.seen[i]) }))
            .collect()
    }
}

/// The document's line as a pattern: literal text, `{NAME}` any text, `X.X`/`XX.X` a decimal, a
/// lone `N` a whole number; a figure at either end may not run on into more digits.
pub fn pattern(text: &str) -> String {
    let token = Regex::new(r"\{[A-Z_]+\}|\bX+\.X\b|\bN\b").expect("valid");
    let mut out = String::new();
    let mut last = 0;
    for m in token.find_iter(text) {
        out.push_str(&regex::escape(&text[last..m.start()]));
        out.push_str(match m.as_str() {
            "N" => r"\d+",
            t if t.starts_with('{') => ".+?",
            _ => r"\d+\.\d",
        });
        last = m.end();
    }
    out.push_str(&regex::escape(&text[last..]));
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, r"(?:^|\D)");
    }
    if text.ends_with(|c: char| c.is_ascii_digit()) {
        out.push_str(r"(?:\D|$)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_list_parses_and_every_seed_is_named() {
        let list = ExpectedLines::shipped();
        assert!(list.lines.len() >= 30);
        assert!(list.lines.iter().all(|l| ["000", "001", "002", "004"].iter().any(|s| l.seed.starts_with(s))));
    }

    #[test]
    fn placeholders_match_and_text_is_verbatim() {
        let mut list = ExpectedLines::parse(
            r#"
            [[line]]
            text = "Job {JOB_ID} still running on VMA (XX.X%) - restarting polling"
            seed = "000"
            [[line]]
            text = "Total processed: 1"
            seed = "000"
            [[line]]
            text = "Found N NBD export names for job {JOB_ID}, trying progress API"
            seed = "000"
            [[line]]
            text = "Starting scheduler service"
            seed = "000"
            not_verbatim = "none here"
            "#,
        )
        .unwrap();
        list.feed("INFO ✅ Job job-1 still running on VMA (20%) - restarting polling");
        list.feed("\tTotal processed: 10");
        list.feed("INFO 🔗 Found 2 NBD export names for job j, trying the progress API");
        assert_eq!(list.missing().len(), 3, "near misses are misses");
        list.feed("INFO ✅ Job job-1 still running on VMA (20.0%) - restarting polling");
        list.feed("\tTotal processed: 1");
        list.feed("INFO 🔗 Found 2 NBD export names for job j, trying progress API");
        assert!(list.missing().is_empty());
        assert_eq!(list.states()[3].1, None);
    }

    #[test]
    fn a_bad_list_is_an_error_naming_the_file() {
        let e = ExpectedLines::parse("[[line]]\ntext = \"\"\nseed = \"000\"").err().unwrap();
        assert!(e.contains("expected-lines.toml") && e.contains("line 1"), "{e}");
    }
}
