//! A message's text as a reader sees it: plain text, web links and mentions. The browser renders these segments (and
//! never any HTML from a message: a link is made only of an `http://` or `https://` URL, so `javascript:` and the like
//! stay text); the server counts mentions with the same rule, so a badge and the page never disagree.

/// One piece of a message's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Shown as is.
    Text(String),
    /// An `http(s)://` URL, shown as a link to itself.
    Link(String),
    /// `@nick` naming the reader.
    Mention(String),
}

/// Characters that end a URL when they are its last ones: sentence punctuation around a link is not part of it.
const TRAILING: &[char] = &['.', ',', ';', ':', '!', '?', ')', ']', '}', '\'', '"', '>'];

/// Splits `text` into plain text, links and mentions of `me`.
pub fn segments(text: &str, me: Option<&str>) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut plain = String::new();
    let mut rest = text;
    // The character before `rest`: links and mentions start a word (a link may also follow an opening bracket).
    let mut prev: Option<char> = None;
    while !rest.is_empty() {
        let word_start = prev.is_none_or(char::is_whitespace);
        let found = if word_start || prev.is_some_and(|c| matches!(c, '(' | '<' | '[')) {
            url_len(rest).map(|len| (len, true))
        } else {
            None
        };
        let found = found.or_else(|| {
            me.filter(|_| word_start)
                .and_then(|me| mention_len(rest, me))
                .map(|len| (len, false))
        });
        if let Some((len, link)) = found {
            flush(&mut plain, &mut out);
            let piece = rest[..len].to_owned();
            prev = piece.chars().last();
            out.push(if link {
                Segment::Link(piece)
            } else {
                Segment::Mention(piece)
            });
            rest = &rest[len..];
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        plain.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut plain, &mut out);
    out
}

/// Whether `text` mentions `me` (`@me` as a whole word, ASCII letters in any case).
pub fn mentions(text: &str, me: &str) -> bool {
    segments(text, Some(me))
        .iter()
        .any(|s| matches!(s, Segment::Mention(_)))
}

fn flush(plain: &mut String, out: &mut Vec<Segment>) {
    if !plain.is_empty() {
        out.push(Segment::Text(std::mem::take(plain)));
    }
}

/// The length of the URL `s` starts with, if it starts with one.
fn url_len(s: &str) -> Option<usize> {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    let scheme = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        return None;
    };
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    let url = s[..end].trim_end_matches(TRAILING);
    // Something must follow the scheme.
    (url.len() > scheme).then_some(url.len())
}

/// The length of `@me` at the start of `s`, if it is there as a whole word.
fn mention_len(s: &str, me: &str) -> Option<usize> {
    let after = s.strip_prefix('@')?;
    let candidate = after.get(..me.len())?;
    // ASCII letters match in any case; other scripts exactly (no Unicode case tables in the wasm for this).
    if !candidate.eq_ignore_ascii_case(me) {
        return None;
    }
    let next = after[me.len()..].chars().next();
    let whole_word = next.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
    whole_word.then_some(1 + me.len())
}

/// The most characters a search query may have.
pub const QUERY_MAX_CHARS: usize = 200;
/// The most words a search query may have.
pub const QUERY_MAX_WORDS: usize = 16;

/// One word of a search query, as it must appear in a message's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// Its characters, lower case.
    pub chars: Vec<char>,
    /// It must be a whole word (a word of one or two letters, outside the scripts written without spaces); else it
    /// may be part of one.
    pub whole: bool,
}

impl Word {
    /// The word as a string (lower case).
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }
}

/// A search query's words: whitespace separates them; case does not matter. Words of three or more characters, and
/// any word in a script written without spaces between words (Chinese, Japanese, Korean, Thai), match anywhere in the
/// text, also inside a word; shorter words match whole words only (so `go` finds "let's go", not "good"). `None` for a
/// query with no word, longer than [`QUERY_MAX_CHARS`] or with more than [`QUERY_MAX_WORDS`] words.
pub fn query_words(query: &str) -> Option<Vec<Word>> {
    if query.chars().count() > QUERY_MAX_CHARS {
        return None;
    }
    let words: Vec<Word> = query
        .split_whitespace()
        .map(|w| {
            let chars: Vec<char> = w.chars().map(lower).collect();
            let whole = chars.len() < 3 && !chars.iter().any(|c| unspaced(*c));
            Word { chars, whole }
        })
        .collect();
    (!words.is_empty() && words.len() <= QUERY_MAX_WORDS).then_some(words)
}

/// Where every word of `words` appears in `text`, as `[start, end)` character offsets in order, overlapping ones
/// merged; `None` when a word does not appear (the text does not match).
pub fn find(text: &str, words: &[Word]) -> Option<Vec<(u32, u32)>> {
    let chars: Vec<char> = text.chars().map(lower).collect();
    let mut marks: Vec<(usize, usize)> = Vec::new();
    for word in words {
        let n = word.chars.len();
        let before = marks.len();
        if n > 0 && n <= chars.len() {
            for start in 0..=chars.len() - n {
                if chars[start..start + n] != word.chars[..] {
                    continue;
                }
                let edge = |c: Option<&char>| c.is_none_or(|c| !c.is_alphanumeric());
                if word.whole
                    && !(edge(start.checked_sub(1).and_then(|i| chars.get(i)))
                        && edge(chars.get(start + n)))
                {
                    continue;
                }
                marks.push((start, start + n));
            }
        }
        if marks.len() == before {
            return None;
        }
    }
    marks.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(marks.len());
    for (start, end) in marks {
        let (start, end) = (
            u32::try_from(start).unwrap_or(u32::MAX),
            u32::try_from(end).unwrap_or(u32::MAX),
        );
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    Some(merged)
}

/// A character in lower case (one for one, so offsets stay those of the text).
fn lower(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut lowered = c.to_lowercase();
    match (lowered.next(), lowered.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// A character of a script written without spaces between words: CJK ideographs, kana, hangul, Thai, and the
/// punctuation and full-width forms that go with them.
pub fn unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0E7F // Thai
        | 0x1100..=0x11FF // Hangul Jamo
        | 0x3000..=0x30FF // CJK punctuation, Hiragana, Katakana
        | 0x3130..=0x318F // Hangul compatibility Jamo
        | 0x3400..=0x4DBF // CJK extension A
        | 0x4E00..=0x9FFF // CJK unified ideographs
        | 0xAC00..=0xD7AF // Hangul syllables
        | 0xF900..=0xFAFF // CJK compatibility ideographs
        | 0xFF00..=0xFFEF // Full-width forms
        | 0x20000..=0x2FA1F // CJK extensions B–F, compatibility supplement
    )
}

#[cfg(test)]
mod tests {
    use super::Segment::{Link, Mention, Text};
    use super::*;

    fn t(s: &str) -> Segment {
        Text(s.into())
    }

    #[test]
    fn links_are_http_and_https_only() {
        assert_eq!(
            segments("see https://example.org/x and more", None),
            [
                t("see "),
                Link("https://example.org/x".into()),
                t(" and more")
            ]
        );
        assert_eq!(
            segments("(http://a.b/c?d=1#e).", None),
            [t("("), Link("http://a.b/c?d=1#e".into()), t(").")]
        );
        assert_eq!(
            segments("javascript:alert(1)", None),
            [t("javascript:alert(1)")]
        );
        assert_eq!(
            segments("data:text/html,<b>x</b>", None),
            [t("data:text/html,<b>x</b>")]
        );
        assert_eq!(segments("https://", None), [t("https://")]);
        assert_eq!(segments("xhttps://a.b", None), [t("xhttps://a.b")]);
        assert_eq!(
            segments("HTTPS://EXAMPLE.ORG", None),
            [Link("HTTPS://EXAMPLE.ORG".into())]
        );
    }

    #[test]
    fn mentions_of_me_are_marked() {
        assert_eq!(
            segments("hi @alice, look", Some("alice")),
            [t("hi "), Mention("@alice".into()), t(", look")]
        );
        assert_eq!(
            segments("@Alice!", Some("alice")),
            [Mention("@Alice".into()), t("!")]
        );
        assert_eq!(segments("@alicex", Some("alice")), [t("@alicex")]);
        assert_eq!(segments("mail@alice", Some("alice")), [t("mail@alice")]);
        assert_eq!(segments("@bob", Some("alice")), [t("@bob")]);
        assert!(mentions("ping @alice", "alice"));
        assert!(!mentions("alice without at", "alice"));
    }

    #[test]
    fn text_survives_whole() {
        for text in [
            "",
            "plain",
            "<b>bold</b>",
            "字字 https://例え.jp/パス 字",
            "@ @@ @alice@alice",
        ] {
            let joined: String = segments(text, Some("alice"))
                .into_iter()
                .map(|s| match s {
                    Text(x) | Link(x) | Mention(x) => x,
                })
                .collect();
            assert_eq!(joined, text);
        }
    }

    fn marks(text: &str, query: &str) -> Option<Vec<(u32, u32)>> {
        find(text, &query_words(query).unwrap())
    }

    #[test]
    fn search_finds_every_word_in_any_case() {
        assert_eq!(
            marks("Deploy is DONE", "done deploy"),
            Some(vec![(0, 6), (10, 14)])
        );
        assert_eq!(
            marks("redeployed", "deploy"),
            Some(vec![(2, 8)]),
            "inside a word"
        );
        assert_eq!(
            marks("deploy is done", "deploy nope"),
            None,
            "every word must appear"
        );
        assert_eq!(marks("let's go", "go"), Some(vec![(6, 8)]));
        assert_eq!(marks("good", "go"), None, "a short word is a whole word");
        assert_eq!(marks("go-live", "go"), Some(vec![(0, 2)]));
        assert_eq!(
            marks("私は東京に住んでいます", "東京"),
            Some(vec![(2, 4)]),
            "CJK inside a sentence"
        );
        assert_eq!(marks("ÉCOLE", "école"), Some(vec![(0, 5)]));
        assert_eq!(marks("aaaa", "aaa"), Some(vec![(0, 4)]), "overlaps merge");
        assert_eq!(query_words("   "), None);
        assert_eq!(query_words(&"x".repeat(QUERY_MAX_CHARS + 1)), None);
        assert_eq!(query_words(&"x ".repeat(QUERY_MAX_WORDS + 1)), None);
        assert!(query_words(&"x ".repeat(QUERY_MAX_WORDS)).is_some());
    }
}
