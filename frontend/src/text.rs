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

#[cfg(test)]
mod tests {
    use super::*;

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
