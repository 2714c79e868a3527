//! A message's text as what the page shows: plain text, web links and mentions. Nothing from a message is ever
//! rendered as HTML; a link is made only of an `http://` or `https://` URL, so `javascript:` and the like stay text.

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

/// Tab completion in the message box: when `text` ends in a word that starts a nick of `nicks` (ASCII letters in
/// any case, an optional `@` before it), that word becomes `@nick ` with the first such nick. `nicks` come most
/// recent speaker first, so the person being answered wins.
pub fn complete_nick(text: &str, nicks: &[&str]) -> Option<String> {
    let start = text.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let word = &text[start..];
    let prefix = word.strip_prefix('@').unwrap_or(word);
    if prefix.is_empty() {
        return None;
    }
    let nick = nicks.iter().find(|n| {
        n.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })?;
    Some(format!("{}@{nick} ", &text[..start]))
}

/// The typing line: "alice is typing…", "alice and bob are typing…", "Several people are typing…", or nothing.
pub fn typing(who: &[&shared::Nick]) -> Option<String> {
    match who {
        [] => None,
        [one] => Some(format!("{one} is typing…")),
        [one, two] => Some(format!("{one} and {two} are typing…")),
        _ => Some("Several people are typing…".to_owned()),
    }
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
    fn tab_completes_the_last_word_as_a_mention() {
        let nicks = ["bob", "alice", "alfred"];
        assert_eq!(complete_nick("hi al", &nicks).unwrap(), "hi @alice ");
        assert_eq!(complete_nick("@Bo", &nicks).unwrap(), "@bob ");
        assert_eq!(
            complete_nick("thanks @alf", &nicks).unwrap(),
            "thanks @alfred "
        );
        assert_eq!(complete_nick("hi zed", &nicks), None);
        assert_eq!(
            complete_nick("hi ", &nicks),
            None,
            "nothing to complete: Tab moves focus"
        );
        assert_eq!(complete_nick("", &nicks), None);
        assert_eq!(complete_nick("@", &nicks), None);
    }

    #[test]
    fn the_typing_line_names_up_to_two() {
        let n = |s: &str| shared::Nick::parse(s).unwrap();
        let (a, b, c) = (n("alice"), n("bob"), n("carol"));
        assert_eq!(typing(&[]), None);
        assert_eq!(typing(&[&a]).unwrap(), "alice is typing…");
        assert_eq!(typing(&[&a, &b]).unwrap(), "alice and bob are typing…");
        assert_eq!(typing(&[&a, &b, &c]).unwrap(), "Several people are typing…");
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
}
