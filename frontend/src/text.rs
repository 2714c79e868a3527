//! A message's text as what the page shows — its segments (links, mentions) come from `shared::text`, which the
//! server counts mentions with too — and the composer's helpers: Tab completion of nicks, the typing line.

pub use shared::text::{Segment, mentions, segments};

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

/// A search result's text cut at its marks (`[start, end)` character offsets, as the server sends them): the pieces
/// in order, each with whether it matched. Marks out of order, overlapping or past the end are clamped, never
/// trusted to index the text.
pub fn marked(text: &str, marks: &[(u32, u32)]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    let mut at = 0;
    for &(start, end) in marks {
        let (start, end) = (start as usize, end as usize);
        if end <= start.max(at) {
            continue;
        }
        let plain: String = chars.by_ref().take(start.saturating_sub(at)).collect();
        let hit: String = chars.by_ref().take(end - start.max(at)).collect();
        at = end;
        if !plain.is_empty() {
            out.push((plain, false));
        }
        if !hit.is_empty() {
            out.push((hit, true));
        }
    }
    let rest: String = chars.collect();
    if !rest.is_empty() {
        out.push((rest, false));
    }
    out
}

/// "Seen by alice, bob", "Seen by alice, bob, carol and 4 others": names the first [`crate::chat::SEEN_NAMED`].
pub fn seen_by(who: &[&shared::Nick]) -> String {
    let named = crate::chat::SEEN_NAMED;
    let names: Vec<&str> = who.iter().take(named).map(|n| n.as_str()).collect();
    match who.len().saturating_sub(named) {
        0 => format!("Seen by {}", names.join(", ")),
        1 => format!("Seen by {} and 1 other", names.join(", ")),
        more => format!("Seen by {} and {more} others", names.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_become_marked_pieces_by_character() {
        let text = "私は東京に住んでいます";
        assert_eq!(
            marked(text, &[(2, 4)]),
            [
                ("私は".to_owned(), false),
                ("東京".to_owned(), true),
                ("に住んでいます".to_owned(), false)
            ]
        );
        assert_eq!(
            marked("deploy is done, redeployed", &[(0, 6), (18, 24)]),
            [
                ("deploy".to_owned(), true),
                (" is done, re".to_owned(), false),
                ("deploy".to_owned(), true),
                ("ed".to_owned(), false)
            ]
        );
        // Overlapping, backwards and past the end: clamped, the text kept whole.
        assert_eq!(
            marked("abcdef", &[(1, 3), (2, 4), (1, 2), (5, 99)]),
            [
                ("a".to_owned(), false),
                ("bc".to_owned(), true),
                ("d".to_owned(), true),
                ("e".to_owned(), false),
                ("f".to_owned(), true)
            ]
        );
        assert_eq!(marked("abc", &[]), [("abc".to_owned(), false)]);
    }

    #[test]
    fn seen_by_names_three_and_counts_the_rest() {
        let n = |s: &str| shared::Nick::parse(s).unwrap();
        let all: Vec<shared::Nick> = ["alice", "bob", "carol", "dan", "eve", "fay", "gus"]
            .map(n)
            .to_vec();
        let refs: Vec<&shared::Nick> = all.iter().collect();
        assert_eq!(seen_by(&refs[..2]), "Seen by alice, bob");
        assert_eq!(seen_by(&refs[..3]), "Seen by alice, bob, carol");
        assert_eq!(seen_by(&refs[..4]), "Seen by alice, bob, carol and 1 other");
        assert_eq!(seen_by(&refs), "Seen by alice, bob, carol and 4 others");
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
}
